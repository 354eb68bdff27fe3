"""What the training and evaluation scripts share: reading a split's records (unreadable ones reported
and left out), keeping the usable ones, StickerLLM prompts for instructions, ridge regression, and
StickerCLIP image features cached on disk."""
from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np
import torch

from stickerclip.data import read_records
from stickerclip.images import StickerImageError
from stickerclip.llm import cache_dir


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
