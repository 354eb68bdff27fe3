"""Train the default StickerCLIP on 2 CPU cores: pretrained EfficientNet-Lite + frozen-LLM text tower,
many art styles, the words people type, sticker-looking augmentations.

    python -m train.train_stickerclip_views --data MULTISTYLE_DIR --out OUT [--init default]
        [--tune-from 14 | --mode freeze-vision | --mode lock-image] [--text-pool attention]
        [--views 6] [--steps 1500] [--batch-size 256]
        [--lr 1e-3] [--lr-vision 1e-4] [--cache DIR] [--eval-every 250]
        [--style-pairs --i2i-weight 0.5] [--form-weights emotion=0.3] [--t2t-weight 0.5] [--name-precedence]

Stage 1 caches, for every training sticker, `--views` pictures (the clean one and sticker-looking
augmentations, `stickerclip.augment`) through the frozen bottom of the image tower (blocks below
`--tune-from`), and the frozen LLM's pooled state of every text view (`train.query_forms`). Stage 2
trains the image tower's top blocks and head, both projections and the temperature with the
multi-positive InfoNCE (`stickerclip.loss`): a text's positives are every sticker of the batch it
fits. `--style-pairs` fills a batch with pairs of one concept drawn in two art styles, and
`--i2i-weight` adds an image-image InfoNCE between them (`stickerclip.loss.image_pair_loss`), which
trains searching by a sticker drawn in another style (bench/RESULTS.md: +3-7 MR there, text search
down; not in the default). `--t2t-weight` adds a text-text InfoNCE between two text views of each
sticker of different forms (its caption and its emotion words, its name and a keyword;
`stickerclip.loss.multi_positive_loss` over texts): what a caption says then lies near the words people
search with, which the index's OCR-text similarity reads. `--name-precedence` draws a keyword that is
another concept's name (火箭, a keyword of 宇航员) only for the concept it names
(`train.query_forms.training_forms`; the default's final run). `--mode freeze-vision` trains only the projections (Table 1's
freeze-vision row). `--mode lock-image` trains the text side only (LiT): the image tower and its
projection stay those of `--init`, so the image embeddings (and a StickerLLM adapter made for them)
stay valid; they are computed once from the cached views. `--text-pool attention` pools the LLM's
token states with a trained `stickerclip.model.AttentionPool` (its queries start at the mean); stage 1
then caches each text's token states instead of one pooled state. The best validation step (mean MR of the name, keyword and English queries
and cross-style image search on the valid split) is saved to OUT; OUT/log.jsonl is the log. Once a recipe and
its --steps are chosen that way, `--train-on-valid` trains it once more on the train and valid splits
(the held-out art style still left out) and saves the last step; the test split stays unseen. `--data` is a corpus of
`train.build_multistyle` (train/valid.jsonl, concepts.json).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stickerclip.augment import sticker_look
from stickerclip.data import read_jsonl
from stickerclip.loss import image_pair_loss, multi_positive_loss
from stickerclip.factory import load_model
from stickerclip.model import fingerprint
from stickerclip.runtime import keep_freed_memory
from train import query_forms as qf
from train.common import TokenStates, jsonl_logger, llm_states, llm_token_states, param_groups


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a train.build_multistyle corpus folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", default="default", help="named config or saved StickerCLIP (EfficientNet tower)")
    ap.add_argument("--llm", default=None, help="text LLM override (a name) for the LLM text tower")
    ap.add_argument("--mode", choices=["tune", "freeze-vision", "lock-image"], default="tune")
    ap.add_argument("--text-pool", choices=["mean", "attention"], default=None,
                    help="pool the LLM text tower's token states this way (default: --init's)")
    ap.add_argument("--pool-heads", type=int, default=8, help="heads of --text-pool attention")
    ap.add_argument("--new-text-head", action="store_true",
                    help="start the text projection afresh instead of from --init's")
    ap.add_argument("--tune-from", type=int, default=14,
                    help="first trained EfficientNet block (tune mode); lock-image caches the maps below it")
    ap.add_argument("--views", type=int, default=6, help="cached pictures per training sticker (1 clean)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3, help="projections and temperature")
    ap.add_argument("--lr-vision", type=float, default=1e-4, help="trained image blocks")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--text-dropout", type=float, default=0.0, help="dropout on the cached LLM states (training)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--cache", default=None, help="folder for the cached views and text states")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training stickers")
    ap.add_argument("--train-on-valid", action="store_true",
                    help="train on the valid split too (its held-out art style left out), for a final run once "
                         "the recipe and --steps are chosen: nothing validates, the last step is saved")
    ap.add_argument("--style-pairs", action="store_true",
                    help="batches of concept pairs, two stickers of one concept in different art styles")
    ap.add_argument("--i2i-weight", type=float, default=0.0,
                    help="weight of the image-image loss between a pair's stickers (with --style-pairs)")
    ap.add_argument("--t2t-weight", type=float, default=0.0,
                    help="weight of the text-text loss between two text views of each sticker")
    ap.add_argument("--form-weights", default="", help='change how often forms are drawn: "emotion=0.3,ocr=0.2"')
    ap.add_argument("--name-precedence", action="store_true",
                    help="draw a keyword that is another concept's name (火箭 of 宇航员) as a training text only "
                         "for the concept it names; it still fits the others, so it is never their negative")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.i2i_weight and not args.style_pairs:
        ap.error("--i2i-weight needs --style-pairs (a batch must hold stickers that share a concept)")
    if args.i2i_weight and args.mode == "lock-image":
        ap.error("--i2i-weight trains the image side, which --mode lock-image keeps as it is")
    try:
        args.form_weights = qf.parse_weights(args.form_weights)
    except ValueError as e:
        ap.error(f"--form-weights: {e}")
    return args


@torch.inference_mode()
def cache_views(model, records, views: int, stop: int | None, seed: int, log) -> tuple[np.ndarray, np.ndarray]:
    """(N·views, C, h, w) float16 maps at block `stop` (or (N·views, 1280) pooled features when `stop` is
    None) and the record index of each row. View 0 of a sticker is clean, the others augmented."""
    model.eval()
    rows, owner, batch, batch_owner = [], [], [], []

    def flush():
        x = torch.stack(batch)
        h = model.vision(x) if stop is None else model.image_trunk(x, stop)
        rows.append(h.to(torch.float16).numpy())
        owner.extend(batch_owner)
        batch.clear()
        batch_owner.clear()

    t0 = time.time()
    for i, r in enumerate(records):
        rng = random.Random(f"{seed}:{r.id}")
        frames = r.load().frames
        s = model.config.image_size
        for v in range(views):
            f = rng.choice(frames).convert("RGB").resize((s, s), 3)
            if v:
                f = sticker_look(f, rng, p=0.6, caption=not r.ocr)
            batch.append(model.preprocess(f))
            batch_owner.append(i)
        if len(batch) >= 16:
            flush()
        if i % 500 == 0:
            log(f"views: {i}/{len(records)} stickers, {time.time() - t0:.0f}s")
    if batch:
        flush()
    return np.concatenate(rows), np.asarray(owner)


def validate(model, valid, concepts, holdout, image_feats=None) -> dict:
    res = qf.evaluate_forms(model, valid, concepts, holdout, pixel_baseline=False, image_feats=image_feats)
    parts = [res["t2i"][f]["MR"] for f in ("name", "keyword", "english") if f in res["t2i"]]
    parts += [v["MR"] for v in res.get("i2i", {}).values()]
    res["score"] = round(float(np.mean(parts)), 2)
    return res


@dataclass
class Run:
    """What the stages share: the arguments, the folders, the log, the data and the model."""

    args: argparse.Namespace
    out: Path
    cache: Path
    log: Callable
    train: list
    valid: list
    concepts: dict
    holdout: str
    model: object
    freeze: bool  # --mode freeze-vision: only the projections train
    lock: bool  # --mode lock-image: only the text side trains
    start: int | None  # the first trained block of the image tower (None when frozen; lock-image: cached below it)


def setup(args) -> Run:
    """Folders, the log, seeds, the corpus (its held-out art style left out of training) and the
    initial model, checked against the recipe."""
    keep_freed_memory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    log = jsonl_logger(out / "log.jsonl", echo=None if args.quiet else lambda line: print(line, flush=True))
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    data = Path(args.data)
    corpus = json.loads((data / "corpus.json").read_text(encoding="utf-8"))
    concepts = json.loads((data / "concepts.json").read_text(encoding="utf-8"))
    holdout = corpus.get("holdout", "")
    train = [r for r in read_jsonl(data / "train.jsonl") if r.art != holdout]
    valid = list(read_jsonl(data / "valid.jsonl"))
    if args.train_on_valid:  # the recipe was chosen on valid; its concepts now train too
        train += [r for r in valid if r.art != holdout]
        valid = []
    if args.limit:
        train = train[: args.limit]
    model = load_model(args.init, llm=args.llm)
    if model.config.vision_kind != "efficientnet":
        raise SystemExit(f"--init {args.init}: this recipe trains an EfficientNet image tower "
                         f"(got {model.config.vision_kind}); use train.train_stickerclip")
    if args.text_pool and args.text_pool != model.config.text.get("pool", "mean"):
        try:
            model.set_text_pool(args.text_pool, args.pool_heads)
        except ValueError as e:
            raise SystemExit(f"--text-pool {args.text_pool}: {e}")
    if args.new_text_head:
        try:
            model.new_text_projection()
        except ValueError as e:
            raise SystemExit(f"--new-text-head: {e}")
    freeze, lock = args.mode == "freeze-vision", args.mode == "lock-image"
    start = None if freeze else args.tune_from
    n_blocks = len(model.vision._blocks)
    if start is not None and not 0 <= start <= n_blocks:
        raise SystemExit(f"--tune-from {start}: the image tower has {n_blocks} blocks")
    log(f"training on {len(train)} stickers ({len({r.concept for r in train})} concepts), validating on {len(valid)}",
        mode=args.mode, tune_from=start, holdout=holdout, text_pool=model.config.text.get("pool", "mean"),
        new_text_head=args.new_text_head, train_on_valid=args.train_on_valid,
        style_pairs=args.style_pairs, i2i_weight=args.i2i_weight, form_weights=args.form_weights,
        t2t_weight=args.t2t_weight, name_precedence=args.name_precedence)
    return Run(args, out, cache, log, train, valid, concepts, holdout, model, freeze, lock, start)


@dataclass
class Inputs:
    """Stage 1's cached inputs: image views (trunk maps) per sticker, query forms, text states."""

    maps: np.ndarray  # (rows, ...) the image tower's maps below `start`, pooled features when frozen, or
    # (rows, D) the locked image embeddings (lock-image)
    rows_of: list  # per training sticker: its rows of `maps`
    forms: list  # per training sticker: its query forms (train.query_forms)
    viewsets: list  # per training sticker: every text that may stand for it
    states: dict | TokenStates  # text -> the frozen LLM's mean state (H,); token states for a trained pooling


def cached_inputs(run: Run) -> Inputs:
    """Stage 1: image views and text states, computed once and cached under --cache."""
    args, model, train = run.args, run.model, run.train
    train_concepts = {r.concept for r in train}
    forms, viewsets = qf.training_forms(train, {k: v for k, v in run.concepts.items() if k in train_concepts},
                                        args.name_precedence)
    maps, owner = stored_views(run)
    if run.lock:
        maps = locked_embeddings(model, maps, run.start)
    rows_of = [np.flatnonzero(owner == i) for i in range(len(train))]
    texts = sorted(set().union(*viewsets))
    if getattr(model.text, "pool", None) is None:
        states = llm_states(model, texts, str(run.cache / "text-states.npz"), run.log)
    else:
        states = llm_token_states(model, texts, str(run.cache / "text-tokens.npz"), run.log)
    return Inputs(maps, rows_of, forms, viewsets, states)


def stored_views(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The training stickers' cached views, in training order: read from the --cache file of this tower,
    view count and seed, and the stickers it lacks computed and added to it (a sticker's views depend on
    its id and picture, not on the other stickers: runs on more or fewer stickers share one file). Views
    are found by sticker id, as before by the list of ids: a corpus rebuilt with other pictures under the
    same ids needs another --cache."""
    args, model, train = run.args, run.model, run.train
    key = hashlib.sha256(json.dumps([trunk_identity(model, run.start), args.views, run.start,
                                     args.seed]).encode()).hexdigest()[:16]
    vpath = run.cache / f"views-{key}.npz"
    ids, maps, owner = [], None, np.zeros(0, np.int64)
    if vpath.is_file():
        with np.load(vpath) as z:
            ids, maps, owner = z["ids"].tolist(), z["maps"], z["owner"]
        run.log(f"views from {vpath}", stickers=len(ids), rows=len(maps))
    known = set(ids)
    todo = [r for r in train if r.id not in known]
    if todo:
        new_maps, new_owner = cache_views(model, todo, args.views, run.start, args.seed, run.log)
        maps = new_maps if maps is None else np.concatenate([maps, new_maps])
        owner = np.concatenate([owner, new_owner + len(ids)])
        ids = ids + [r.id for r in todo]
        np.savez(vpath, ids=np.array(ids), maps=maps, owner=owner)
    rows_of = {i: [] for i in range(len(ids))}
    for row, i in enumerate(owner.tolist()):
        rows_of[i].append(row)
    at = {sid: i for i, sid in enumerate(ids)}
    pick = [rows_of[at[r.id]] for r in train]
    return maps[np.concatenate(pick)], np.repeat(np.arange(len(train)), [len(p) for p in pick])


def trunk_identity(model, start: int | None) -> str:
    """What cached views depend on: the preprocessing and the image tower's weights below block `start`
    (all of it when None), not the text side or the trained top (a lock-image run from a tuned model
    reuses its maps)."""
    c = model.config

    def below(k: str) -> bool:
        top = k.startswith(("_conv_head", "_bn1")) or (k.startswith("_blocks.") and int(k.split(".")[1]) >= start)
        return start is None or not top

    return fingerprint(json.dumps([c.vision, c.image_size, list(c.image_mean), list(c.image_std)]),
                       [(k, v) for k, v in sorted(model.vision.state_dict().items()) if below(k)])


@torch.inference_mode()
def locked_embeddings(model, maps: np.ndarray, start: int, chunk: int = 512) -> np.ndarray:
    """(rows, C, h, w) cached maps below block `start` -> (rows, D) float32 image embeddings of the
    locked tower (unnormalised, as the loss takes them)."""
    model.eval()
    return np.concatenate([model.image_features_from_trunk(torch.from_numpy(maps[i:i + chunk].astype(np.float32)),
                                                           start).numpy() for i in range(0, len(maps), chunk)])


def text_features(run: Run, inputs: Inputs, texts: list[str]) -> torch.Tensor:
    """(B, D) the text side's features of `texts` from their cached states, with dropout on the pooled
    state (--text-dropout)."""
    if isinstance(inputs.states, TokenStates):
        h = run.model.text.pooled(*inputs.states.batch(texts))  # (B, H)
    else:
        h = torch.from_numpy(np.stack([inputs.states[t] for t in texts]))  # (B, H)
    return run.model.text_projection(torch.nn.functional.dropout(h, run.args.text_dropout))


def make_optimizer(run: Run) -> torch.optim.Optimizer:
    """Stage 2's trainable set: the text projection (and a trained text pooling), the temperature, and
    unless the image side is locked the image projection and (unless frozen) the image tower from block
    `start` up, the tower at its own learning rate."""
    args, model = run.args, run.model
    model.requires_grad_(False)
    pool = getattr(model.text, "pool", None)  # a trained pooling of the LLM's token states
    text_side = [model.text_projection] + ([pool] if pool is not None else [])
    tower = [] if run.freeze or run.lock else [model.vision._blocks[run.start:], model.vision._conv_head,
                                               model.vision._bn1]
    trained = text_side + ([] if run.lock else [model.visual_projection]) + tower
    for m in trained:
        m.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    vision_ids = {id(p) for m in tower for p in m.parameters()}
    groups = []
    for g in param_groups(model, args.weight_decay):
        vis = [p for p in g["params"] if id(p) in vision_ids]
        rest = [p for p in g["params"] if id(p) not in vision_ids]
        groups += [{**g, "params": rest, "lr": args.lr}] + ([{**g, "params": vis, "lr": args.lr_vision}] if vis else [])
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)


def pair_sampler(train: list, batch_size: int, rng: random.Random) -> Callable[[], list[int]]:
    """Batches of batch_size // 2 distinct concepts, each with two of its stickers, in two different art
    styles where the concept has them (otherwise two stickers, or one sticker twice)."""
    by_concept: dict[str, list[int]] = {}
    for i, r in enumerate(train):
        by_concept.setdefault(r.concept, []).append(i)
    keys = sorted(by_concept)

    def batch() -> list[int]:
        out = []
        for c in rng.sample(keys, min(batch_size // 2, len(keys))):
            members = by_concept[c]
            a = rng.choice(members)
            others = [j for j in members if train[j].art != train[a].art] or [j for j in members if j != a] or [a]
            out += [a, rng.choice(others)]
        return out

    return batch


def train_loop(run: Run, inputs: Inputs, opt: torch.optim.Optimizer) -> tuple[float, dict, dict | None]:
    """Stage 2: contrastive training (warm-up, cosine decay), validated every --eval-every steps.
    Returns (the last loss, the best validation, the best weights)."""
    args, model, train = run.args, run.model, run.train
    base_lrs = [g["lr"] for g in opt.param_groups]
    warm = max(1, args.steps // 20)
    rng = random.Random(args.seed)
    pairs = pair_sampler(train, args.batch_size, rng) if args.style_pairs else None
    best, best_state = {"score": -1.0}, None
    valid_images = model.encode_images(run.valid) if run.lock and run.valid else None  # locked: the same each time
    model.train()
    t0 = time.time()
    for step in range(1, args.steps + 1):
        scale = min(1.0, step / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, step / args.steps)))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        idx = pairs() if pairs else rng.sample(range(len(train)), min(args.batch_size, len(train)))
        x = torch.from_numpy(inputs.maps[[rng.choice(inputs.rows_of[i]) for i in idx]].astype(np.float32))  # (B, ...)
        batch_texts = [qf.draw(inputs.forms[i], rng, args.form_weights) for i in idx]
        positives = torch.tensor([[t in inputs.viewsets[j] for j in idx] for t in batch_texts])  # (B texts, B images)
        if run.lock:
            img = x  # (B, D) the locked embeddings
        else:
            img = model.visual_projection(x) if run.freeze else model.image_features_from_trunk(x, run.start)  # (B, D)
        txt = text_features(run, inputs, batch_texts)  # (B, D)
        loss = multi_positive_loss(img, txt, model.logit_scale, positives)
        if args.i2i_weight:
            concept = [train[i].concept for i in idx]
            same = torch.tensor([[a == b for b in concept] for a in concept])  # (B, B)
            loss = loss + args.i2i_weight * image_pair_loss(img, model.logit_scale, same)
        if args.t2t_weight:
            seconds = [qf.draw(qf.other_forms(inputs.forms[i], t), rng, args.form_weights)
                       for i, t in zip(idx, batch_texts)]
            txt2 = text_features(run, inputs, seconds)  # (B, D)
            # text i fits text j when it fits j's sticker, or j's text fits i's sticker
            fits = positives | torch.tensor([[t in inputs.viewsets[i] for t in seconds] for i in idx])  # (B, B)
            loss = loss + args.t2t_weight * multi_positive_loss(txt2, txt, model.logit_scale, fits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == args.steps:
            run.log("step", step=step, loss=round(loss.item(), 4), lr=round(opt.param_groups[0]["lr"], 6),
                    temperature=round(1 / model.logit_scale.exp().item(), 4), seconds=round(time.time() - t0))
        if run.valid and (step % args.eval_every == 0 or step == args.steps):
            res = validate(model, run.valid, run.concepts, run.holdout, valid_images)
            model.train()
            run.log("validation", step=step, score=res["score"], t2i={k: v["MR"] for k, v in res["t2i"].items()},
                    i2i={k: v["MR"] for k, v in res.get("i2i", {}).items()})
            if res["score"] > best["score"]:
                best = {"score": res["score"], "step": step}
                best_state = copy.deepcopy(model.own_state_dict())
    return loss.item(), best, best_state


def finish(run: Run, loss: float, best: dict, best_state: dict | None) -> dict:
    """Keep the weights that validated best, save the model, log the result."""
    if run.valid:
        run.model.load_state_dict(best_state, strict=False)
    else:  # nothing validated (--train-on-valid): the last step is kept
        best = {"step": run.args.steps}
    run.model.eval().save(run.out)
    result = {"steps": run.args.steps, "loss": round(loss, 4), "best": best, "mode": run.args.mode,
              "tune_from": run.start}
    run.log("done", **result)
    return result


def main(argv=None) -> dict:
    run = setup(parse_args(argv))
    inputs = cached_inputs(run)
    opt = make_optimizer(run)
    return finish(run, *train_loop(run, inputs, opt))


if __name__ == "__main__":
    main()
