"""What the training and evaluation scripts share: reading a split's records (unreadable ones reported
and left out), keeping the usable ones, a JSON-lines run log, StickerLLM prompts for instructions and
the `<ret>` queries of its greedy replies (and their T2I recall), ridge regression, StickerCLIP image
features cached on disk, frozen-LLM text states (pooled, or per token) cached on disk, AdamW parameter groups, and the font
of contact sheets."""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stickerclip.data import read_records
from stickerclip.images import StickerImageError
from stickerclip.llm import cache_dir
from stickerclip.metrics import paired_recall


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def read_split(data, split: str | None, log=stderr, keep_usable: bool = False) -> list:
    """The records of `split` of `data` (a corpus folder, manifest or Sticker820K dir: `read_records`).
    Records that cannot be read are reported through `log` ("skipped record: ...") and left out; with
    `keep_usable`, so are those whose sticker does not load (`usable`)."""
    errors = []
    records = list(read_records(data, split=split, on_error=errors.append))
    for e in errors:
        log(f"skipped record: {e}")
    return usable(records) if keep_usable else records


def jsonl_logger(path, echo=None, enabled: bool = True):
    """log(msg, **fields): appends {"t", "msg", **fields} to the JSON-lines file `path` and passes
    "msg {fields as JSON}" to `echo` (if given); does nothing unless `enabled` (e.g. on the main process)."""
    def log(msg, **fields):
        if not enabled:
            return
        if echo is not None:
            echo(msg if not fields else f"{msg} {json.dumps(fields, ensure_ascii=False)}")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"t": round(time.time(), 1), "msg": msg, **fields}, ensure_ascii=False) + "\n")

    return log


def usable(records):
    """Records whose sticker loads; the others are reported on stderr and left out."""
    keep = []
    for r in records:
        try:
            r.load()
            keep.append(r)
        except StickerImageError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
    return keep


def encode_prompts(model, items, records_by_id):
    """(sequences, image features) for StickerLLM `model` of (instruction, image ids, pret) triples:
    one user turn each, its stickers (`records_by_id[id]`) encoded by the model's StickerCLIP."""
    encs, feats = [], []
    for text, image_ids, pret in items:
        encs.append(model.builder.encode([{"role": "user", "content": text, "images": len(image_ids)}], pret=pret))
        feats.append(model.encode_images([records_by_id[i] for i in image_ids]) if image_ids else None)
    return encs, feats


def greedy_replies(model, encs, feats, batch_size: int, **kw) -> list[dict]:
    """StickerLLM `model`'s greedy replies (`stickerllm.decoding.greedy_batch`) to the prompts `encs` with
    their image features `feats`, `batch_size` at a time, each up to the end of its turn."""
    from stickerllm.decoding import greedy_batch

    out = []
    for i in range(0, len(encs), batch_size):
        out += greedy_batch(model, encs[i:i + batch_size], feats[i:i + batch_size],
                            stop_ids=model.builder.format.stop_ids, stop_text=model.builder.format.stop_text, **kw)
    return out


def ret_queries(model, records, kind: str, seed: int = 0, batch_size: int = 16,
                with_texts: bool = False) -> tuple:
    """(N, d) `<ret>` queries for in-domain `kind` instructions with `<pret>` (greedy replies; a reply
    without `<ret>` gets one appended), and the share where the model emitted `<ret>` itself; with
    `with_texts`, the instructions' texts too."""
    from train.build_instructions import make

    rng = random.Random(seed)
    by_id = {r.id: r for r in records}
    items = []
    for r in records:
        ins = make(kind, r, records, rng, "in", pret=True)
        items.append((ins.instruction, [r.id] if kind == "i2i" else [], True))
    encs, feats = encode_prompts(model, items, by_id)
    res = greedy_replies(model, encs, feats, batch_size, max_new_tokens=16, force_ret=True)
    out = (np.stack([r["query"] for r in res]), sum(r["ret"] for r in res) / max(1, len(res)))
    return out + ([text for text, _, _ in items],) if with_texts else out


def t2i_recall(model, records, seed: int = 0) -> dict:
    """StickerLLM T2I recall over `records`: the `<ret>` queries of greedy replies against the stickers'
    StickerCLIP image features (validation during training)."""
    img = model.clip.encode_images(records)
    q, _ = ret_queries(model, records, "t2i", seed)
    return paired_recall(q, img)


def ridge_fit(X: torch.Tensor, Y: torch.Tensor, ridge: float, bias: bool = False):
    """Least squares Y ≈ X W with an L2 penalty `ridge` on W, solved in float64 -> W (d_in, d_out),
    float32. With `bias`, Y ≈ X W + b (both centred first, b not penalised) -> (W, b (d_out,))."""
    X, Y = X.double(), Y.double()
    if bias:
        mx, my = X.mean(0), Y.mean(0)
        X, Y = X - mx, Y - my
    W = torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y)
    return (W.float(), (my - mx @ W).float()) if bias else W.float()


def image_features(clip, records, log) -> np.ndarray:
    """(N, d) normalised StickerCLIP features of `records`, cached by model identity and record ids."""
    key = hashlib.sha256(("\n".join(f"{r.id}|{r.image}" for r in records)).encode()).hexdigest()[:16]
    path = cache_dir() / "stickerllm-features" / f"{clip.identity()}-{key}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.time()
    feats = clip.encode_images(records, batch_size=64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    log(f"encoded {len(records)} stickers in {time.time() - t0:.0f}s (cached at {path})")
    return feats


def _read_states(path: str | None, identity: str, fields: tuple, log) -> dict | None:
    """The arrays `fields` of an npz cache of frozen-LLM states, when it is for the text tower `identity`."""
    if not path or not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        if "identity" in z and str(z["identity"]) == identity and all(f in z for f in fields):
            return {f: z[f] for f in fields}
    log(f"{path}: states of another text tower, recomputing")
    return None


def _write_states(path: str | None, identity: str, **arrays) -> None:
    if path:
        tmp = path + ".tmp.npz"
        np.savez(tmp, identity=np.array(identity), **arrays)
        os.replace(tmp, path)


@torch.inference_mode()
def llm_states(model, texts: list[str], cache_path: str | None, log, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Mean-pooled frozen-LLM states of StickerCLIP `model`'s LLM text tower for each distinct text,
    read from / added to an npz cache (kept only for the same text tower). A tower whose pooling is
    trained (attention) trains over token states instead: `llm_token_states`."""
    if model.text.pool is not None:
        raise ValueError("this text tower's pooling is trained: cache its token states (llm_token_states)")
    identity = model.text.identity()
    z = _read_states(cache_path, identity, ("texts", "states"), log)
    cache = dict(zip(z["texts"].tolist(), z["states"])) if z else {}
    todo = sorted(set(texts) - set(cache))
    if todo:
        log(f"computing frozen-LLM states for {len(todo)} texts")
        model.eval()
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            enc = model.tokenize(chunk)
            h = model.text(enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)).float().cpu()
            cache.update(zip(chunk, h.numpy()))
        keys = list(cache)
        _write_states(cache_path, identity, texts=np.array(keys), states=np.stack([cache[k] for k in keys]))
    return cache


class TokenStates:
    """Frozen-LLM token states of many texts, packed: text i's (n_i, H) rows are
    flat[offsets[i]:offsets[i + 1]], float16 (50k short texts of Gemma 270M: about 400 MB)."""

    def __init__(self, texts: list[str], flat: np.ndarray, offsets: np.ndarray):
        self.index = {t: i for i, t in enumerate(texts)}
        self.flat, self.offsets = flat, offsets

    def __contains__(self, text: str) -> bool:
        return text in self.index

    def get(self, text: str) -> np.ndarray:
        i = self.index[text]
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (B, T, H) float32 states, zero-padded, and the (B, T) bool mask of real tokens."""
        rows = [self.get(t) for t in texts]
        x = torch.zeros(len(rows), max(1, max(len(r) for r in rows)), self.flat.shape[1])
        mask = torch.zeros(x.shape[:2], dtype=torch.bool)
        for b, r in enumerate(rows):
            x[b, :len(r)] = torch.from_numpy(r.astype(np.float32))
            mask[b, :len(r)] = True
        return x, mask


@torch.inference_mode()
def llm_token_states(model, texts: list[str], cache_path: str | None, log, batch_size: int = 128) -> TokenStates:
    """The frozen-LLM token states (`LLMTextTower.token_states`: real tokens only) of each distinct
    text, for training a text tower whose pooling is trained; read from / added to an npz cache (kept
    only for the same tower's frozen part)."""
    identity = model.text.identity() + "|tokens"
    z = _read_states(cache_path, identity, ("texts", "flat", "offsets"), log)
    have = TokenStates(z["texts"].tolist(), z["flat"], z["offsets"]) if z else TokenStates([], np.zeros((0, 0)), [0])
    todo = sorted(set(texts) - set(have.index), key=len)  # like lengths batch with little padding
    if not todo:
        return have
    log(f"computing frozen-LLM token states for {len(todo)} texts")
    model.eval()
    rows = {t: have.get(t) for t in have.index}
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        enc = model.tokenize(chunk)
        h, mask = model.text.token_states(enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device))
        for t, hb, mb in zip(chunk, h.cpu(), mask.cpu()):
            rows[t] = hb[mb].numpy().astype(np.float16)  # (n, H)
    keys = list(rows)
    offsets = np.concatenate([[0], np.cumsum([len(rows[k]) for k in keys])])
    flat = np.concatenate([rows[k] for k in keys])
    _write_states(cache_path, identity, texts=np.array(keys), flat=flat, offsets=offsets)
    return TokenStates(keys, flat, offsets)


def param_groups(model, weight_decay: float):
    """AdamW groups of `model`'s trained parameters: weight decay on matrices, none on biases, norms,
    embeddings and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cjk_font(size: int):
    """The CJK font of contact sheets (Noto Sans CJK Bold when installed, else PIL's default)."""
    from PIL import ImageFont

    try:
        import cvttf_NotoSansCJK_Bold as font_pkg

        return ImageFont.truetype(str(Path(font_pkg.__file__).parent / "NotoSansCJKtc-Bold.otf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()
