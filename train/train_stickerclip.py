"""Train StickerCLIP (paper §4): contrastive image-text fine-tuning on sticker records.

    python -m train.train_stickerclip --data DIR_OR_MANIFEST --out OUT [--mode full|freeze-vision]
        [--init tiny|default|ViT-B-16|<dir>|<hub id>|<ckpt.pt> --arch ViT-B-16] [--epochs N]
        [--batch-size 128] [--lr 2e-5] [--weight-decay 1e-2] [--warmup 0.05] [--eval-every N]

Defaults are the paper's recipe: AdamW, lr 2e-5, weight decay 1e-2, cosine schedule with warmup,
context length 64, symmetric InfoNCE with a learnable temperature, text fields shuffled. Runs on the
CPU for small models and on one or many GPUs through `accelerate launch` (--bf16, negatives
gathered across processes so the contrastive batch is the global batch, --grad-accum). OUT holds
the model (load_model(OUT)), `log.jsonl`, and `checkpoint/` to resume from (--resume).
For an LLM text tower the frozen LLM's pooled states are computed once per text (--text-cache).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from stickerclip.augment import random_resized_crops
from stickerclip.data import build_text
from stickerclip.loss import clip_loss
from stickerclip.metrics import retrieval_metrics
from stickerclip.model import load_model
from train.common import read_split


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="corpus folder (train/valid.jsonl), manifest or Sticker820K dir")
    ap.add_argument("--val", default=None, help="validation records (default: the corpus's valid split)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=["full", "freeze-vision"], default="full")
    ap.add_argument("--init", default="tiny", help="named config, saved dir, transformers dir/hub id, or .pt")
    ap.add_argument("--arch", default=None, help="architecture of a cn_clip .pt --init")
    ap.add_argument("--llm", default=None, help="text LLM for an LLM text tower (default: the config's)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many optimiser steps")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--warmup", type=float, default=0.05, help="warmup fraction of all steps")
    ap.add_argument("--text-variants", type=int, default=3, help="shuffled texts per record cached (LLM tower)")
    ap.add_argument("--text-cache", default=None, help="npz cache of LLM pooled states (LLM tower)")
    ap.add_argument("--no-augment", action="store_true", help="no random resized crops")
    ap.add_argument("--eval-every", type=int, default=0, help="validation recall every N steps (0: at the end)")
    ap.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training records")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def load_pixels(model, records, log):
    """uint8 frames per record at the model's resolution (`StickerCLIP.pixels`): list of (F, 3, S, S);
    bad images dropped."""
    from stickerclip.images import StickerImageError

    keep, pixels = [], []
    for r in records:
        try:
            frames = r.load().frames
        except StickerImageError as exc:
            log(f"skipped: {exc}")
            continue
        pixels.append(torch.stack([model.pixels(f) for f in frames]))
        keep.append(r)
    return keep, pixels


@torch.inference_mode()
def llm_states(model, texts: list[str], cache_path: str | None, log, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Pooled frozen-LLM states for each distinct text, read from / added to an npz cache."""
    cache: dict[str, np.ndarray] = {}
    identity = model.text.identity()
    if cache_path and os.path.exists(cache_path):
        with np.load(cache_path, allow_pickle=False) as z:
            if "identity" in z and str(z["identity"]) == identity:
                cache = dict(zip(z["texts"].tolist(), z["states"]))
            else:
                log(f"{cache_path}: states of another text tower, recomputing")
    todo = sorted(set(texts) - set(cache))
    if todo:
        log(f"computing frozen-LLM states for {len(todo)} texts")
        model.eval()
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            enc = model.tokenize(chunk)
            h = model.text(enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)).float().cpu()
            cache.update(zip(chunk, h.numpy()))
        if cache_path:
            keys = list(cache)
            tmp = cache_path + ".tmp.npz"
            np.savez(tmp, texts=np.array(keys), states=np.stack([cache[k] for k in keys]), identity=np.array(identity))
            os.replace(tmp, cache_path)
    return cache


def gather(x: torch.Tensor, accelerator) -> torch.Tensor:
    """All processes' rows, with gradients flowing back to this process's rows."""
    if accelerator.num_processes == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def evaluate(model, records, log) -> dict:
    texts = [build_text(r) for r in records]
    img = model.encode_images(records)
    txt = model.encode_texts(texts)
    return retrieval_metrics(img, txt)


def param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv=None) -> dict:
    args = parse_args(argv)
    from accelerate import Accelerator
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    acc = Accelerator(mixed_precision="bf16" if args.bf16 else "no", gradient_accumulation_steps=args.grad_accum)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "log.jsonl"

    def log(msg, **fields):
        if acc.is_main_process:
            if not args.quiet:
                tqdm.write(msg if not fields else f"{msg} {json.dumps(fields, ensure_ascii=False)}")
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"t": round(time.time(), 1), "msg": msg, **fields}, ensure_ascii=False) + "\n")

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    resume_dir, old_dir = out / "checkpoint", out / "checkpoint.old"
    if args.resume and not (resume_dir / "trainer_state.pt").is_file() and (old_dir / "trainer_state.pt").is_file():
        os.replace(old_dir, resume_dir)  # killed between save_checkpoint's two renames: the last one is .old
    resuming = args.resume and (resume_dir / "trainer_state.pt").is_file()
    model = load_model(str(resume_dir) if resuming else args.init, arch=args.arch, llm=args.llm)
    llm_tower = model.config.text_kind == "llm"
    if args.mode == "freeze-vision":
        model.vision.requires_grad_(False)
        model.visual_projection.requires_grad_(False)
    if llm_tower:
        model.text.requires_grad_(False)

    train = read_split(args.data, "train", log)
    val = read_split(args.val or args.data, "valid", log) if (args.val or Path(args.data).is_dir()) else []
    if args.limit:
        train = train[: args.limit]
    train, pixels = load_pixels(model, train, log)
    val = load_pixels(model, val, log)[0]  # drops unreadable stickers from validation too
    if not train:
        raise SystemExit(f"{args.data}: no usable training records")
    log(f"training on {len(train)} stickers, validating on {len(val)}", mode=args.mode)

    rng = random.Random(args.seed)
    variants = [[build_text(r)] + [build_text(r, shuffle=True, rng=rng) for _ in range(max(0, args.text_variants - 1))]
                for r in train]
    states = llm_states(model, [t for v in variants for t in v], args.text_cache, log) if llm_tower else None

    steps_per_epoch = max(1, len(train) // (args.batch_size * acc.num_processes * args.grad_accum))
    total = args.max_steps or max(1, int(math.ceil(args.epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = get_cosine_schedule_with_warmup(opt, int(args.warmup * total), total)
    model, opt, sched = acc.prepare(model, opt, sched)
    raw = acc.unwrap_model(model)
    step = 0
    if resuming:
        st = torch.load(resume_dir / "trainer_state.pt", map_location="cpu", weights_only=False)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step, rng = st["step"], st["rng"]
        torch.set_rng_state(st["torch_rng"])
        log(f"resumed at step {step}")

    def save_checkpoint():
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        import shutil

        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a kill's leftovers (here and in .old) never mix in
        raw.save(tmp)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "rng": rng,
                    "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
        if resume_dir.exists():
            shutil.rmtree(old_dir, ignore_errors=True)
            os.replace(resume_dir, old_dir)
        os.replace(tmp, resume_dir)
        shutil.rmtree(old_dir, ignore_errors=True)

    micro = args.batch_size
    order: list[int] = []
    bar = tqdm(total=total, initial=step, disable=args.quiet or not acc.is_main_process, desc="train")
    model.train()
    best = None
    while step < total:
        for _ in range(args.grad_accum):
            if len(order) < micro:
                perm = list(range(len(train)))
                rng.shuffle(perm)
                order += perm
            idx, order = order[:micro], order[micro:]
            idx = idx[acc.process_index::acc.num_processes] if acc.num_processes > 1 else idx
            frames = torch.cat([pixels[i] for i in idx])
            batch = raw.normalise(frames)  # the preprocessing of inference (StickerCLIP.preprocess)
            if not args.no_augment:
                batch = random_resized_crops(batch, rng)
            counts = [len(pixels[i]) for i in idx]
            if llm_tower:
                h = torch.from_numpy(np.stack([states[rng.choice(variants[i])] for i in idx])).to(acc.device)
                text_in = {"text_states": h}
            else:
                enc = raw.tokenize([build_text(train[i], shuffle=True, rng=rng) for i in idx])
                text_in = {k: v.to(acc.device) for k, v in enc.items()}
            with acc.accumulate(model), acc.autocast():
                img, txt, scale = model(batch.to(acc.device), counts, **text_in)  # through DDP when distributed
                loss = clip_loss(gather(img.float(), acc), gather(txt.float(), acc), scale)
                acc.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if step % 10 == 0 or step == total:
            log("step", step=step, loss=round(loss.item(), 4), lr=sched.get_last_lr()[0],
                temperature=round(1 / raw.logit_scale.exp().item(), 4))
        if val and args.eval_every and step % args.eval_every == 0 and step < total and acc.is_main_process:
            metrics = evaluate(raw, val, log)
            raw.train()
            log("validation", step=step, **metrics)
        if args.save_every and step % args.save_every == 0 and step < total:
            save_checkpoint()
    bar.close()
    result = {"steps": step, "loss": round(loss.item(), 4)}
    if val and acc.is_main_process:
        result["valid"] = evaluate(raw, val, log)
        log("validation", step=step, **result["valid"])
    save_checkpoint()
    if acc.is_main_process:
        raw.save(out)
    log("done", **result)
    return result


if __name__ == "__main__":
    main()
