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
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from stickerclip.augment import random_resized_crops
from stickerclip.data import build_text
from stickerclip.loss import clip_loss
from stickerclip.metrics import retrieval_metrics
from stickerclip.factory import load_model
from train.common import jsonl_logger, llm_states, param_groups, read_split


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


@dataclass
class Run:
    """What the stages of a run share; `model` is what accelerate prepared (DDP-wrapped when distributed),
    `raw` the StickerCLIP inside it."""
    args: argparse.Namespace
    acc: Any  # accelerate.Accelerator
    out: Path
    log: Callable  # log(msg, **fields): OUT/log.jsonl and the console, on the main process
    model: Any
    raw: Any
    resuming: bool  # the model came from OUT/checkpoint, whose trainer state `resume` loads
    train: list = field(default_factory=list)  # training records
    pixels: list = field(default_factory=list)  # per training record, its frames: uint8 (F, 3, S, S)
    val: list = field(default_factory=list)  # validation records
    variants: list = field(default_factory=list)  # per training record, texts (an LLM tower draws one)
    states: dict | None = None  # pooled frozen-LLM state per text (LLM text tower)
    rng: random.Random | None = None  # batches, crops and text shuffles; saved in checkpoints
    opt: Any = None
    sched: Any = None
    total: int = 0  # optimiser steps of the whole run
    step: int = 0  # optimiser steps done

    @property
    def llm_tower(self) -> bool:
        return self.raw.config.text_kind == "llm"


def find_checkpoint(out: Path) -> bool:
    """Whether OUT/checkpoint holds a checkpoint, once a kill between save_checkpoint's two renames (the
    last checkpoint left as checkpoint.old) is undone."""
    resume_dir, old_dir = out / "checkpoint", out / "checkpoint.old"
    if not (resume_dir / "trainer_state.pt").is_file() and (old_dir / "trainer_state.pt").is_file():
        os.replace(old_dir, resume_dir)
    return (resume_dir / "trainer_state.pt").is_file()


def setup(args) -> Run:
    """Accelerator, OUT and its log, seeds, and the model (from OUT/checkpoint when resuming), its frozen
    parts frozen: the image tower with --mode freeze-vision, an LLM text tower always."""
    from accelerate import Accelerator
    from tqdm import tqdm

    acc = Accelerator(mixed_precision="bf16" if args.bf16 else "no", gradient_accumulation_steps=args.grad_accum)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = jsonl_logger(out / "log.jsonl", echo=None if args.quiet else tqdm.write, enabled=acc.is_main_process)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    resuming = args.resume and find_checkpoint(out)
    model = load_model(str(out / "checkpoint") if resuming else args.init, arch=args.arch, llm=args.llm)
    if args.mode == "freeze-vision":
        model.vision.requires_grad_(False)
        model.visual_projection.requires_grad_(False)
    if model.config.text_kind == "llm":
        if model.text.pool is not None:
            raise SystemExit(f"--init {args.init}: its text tower's pooling is trained (attention); this script "
                             "trains over pooled frozen-LLM states: use train.train_stickerclip_views")
        model.text.requires_grad_(False)
    return Run(args, acc, out, log, model=model, raw=model, resuming=resuming)


def load_data(run: Run) -> None:
    """Training and validation stickers as uint8 pixels (unreadable ones left out), each training
    sticker's texts (the fixed order and shuffles) and, for an LLM text tower, their frozen-LLM states."""
    args, log = run.args, run.log
    train = read_split(args.data, "train", log)
    val = read_split(args.val or args.data, "valid", log) if (args.val or Path(args.data).is_dir()) else []
    if args.limit:
        train = train[: args.limit]
    run.train, run.pixels = load_pixels(run.raw, train, log)
    run.val = load_pixels(run.raw, val, log)[0]  # drops unreadable stickers from validation too
    if not run.train:
        raise SystemExit(f"{args.data}: no usable training records")
    log(f"training on {len(run.train)} stickers, validating on {len(run.val)}", mode=args.mode)
    run.rng = rng = random.Random(args.seed)
    shuffles = max(0, args.text_variants - 1)
    run.variants = [[build_text(r)] + [build_text(r, shuffle=True, rng=rng) for _ in range(shuffles)] for r in run.train]
    if run.llm_tower:
        run.states = llm_states(run.raw, [t for v in run.variants for t in v], args.text_cache, log)


def make_optimizer(run: Run) -> None:
    """AdamW (no decay on biases, norms, embeddings, temperature) with warmup and a cosine schedule over
    --max-steps, or --epochs of steps of --batch-size x processes x --grad-accum stickers; accelerate
    prepares model, optimiser and schedule."""
    from transformers import get_cosine_schedule_with_warmup

    args, acc = run.args, run.acc
    steps_per_epoch = max(1, len(run.train) // (args.batch_size * acc.num_processes * args.grad_accum))
    run.total = args.max_steps or max(1, int(math.ceil(args.epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(param_groups(run.raw, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = get_cosine_schedule_with_warmup(opt, int(args.warmup * run.total), run.total)
    run.model, run.opt, run.sched = acc.prepare(run.raw, opt, sched)
    run.raw = acc.unwrap_model(run.model)


def resume(run: Run) -> None:
    """Optimiser, schedule, step and random states from OUT/checkpoint (`setup` loaded its model)."""
    st = torch.load(run.out / "checkpoint" / "trainer_state.pt", map_location="cpu", weights_only=False)
    run.opt.load_state_dict(st["optimizer"])
    run.sched.load_state_dict(st["scheduler"])
    run.step, run.rng = st["step"], st["rng"]
    torch.set_rng_state(st["torch_rng"])
    run.log(f"resumed at step {run.step}")


def save_checkpoint(run: Run) -> None:
    """OUT/checkpoint (model + trainer state), swapped in whole: written to checkpoint.tmp, the old one
    moved to checkpoint.old, the new one renamed, the old one deleted."""
    import shutil

    run.acc.wait_for_everyone()
    if not run.acc.is_main_process:
        return
    resume_dir, old_dir, tmp = run.out / "checkpoint", run.out / "checkpoint.old", run.out / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a kill's leftovers (here and in .old) never mix in
    run.raw.save(tmp)
    torch.save({"optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), "step": run.step,
                "rng": run.rng, "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
    if resume_dir.exists():
        shutil.rmtree(old_dir, ignore_errors=True)
        os.replace(resume_dir, old_dir)
    os.replace(tmp, resume_dir)
    shutil.rmtree(old_dir, ignore_errors=True)


def next_indices(run: Run, order: list[int]) -> list[int]:
    """This process's share of the next --batch-size training stickers, drawn from `order` (the rest of
    the current shuffled pass, consumed in place; a new pass is appended when it runs short)."""
    micro = run.args.batch_size
    if len(order) < micro:
        perm = list(range(len(run.train)))
        run.rng.shuffle(perm)
        order += perm
    idx = order[:micro]
    del order[:micro]
    return idx[run.acc.process_index::run.acc.num_processes] if run.acc.num_processes > 1 else idx


def micro_step(run: Run, idx: list[int]) -> torch.Tensor:
    """Forward and backward of the training stickers `idx` and their texts (the optimiser steps once per
    --grad-accum of these) -> the contrastive loss."""
    acc, raw = run.acc, run.raw
    frames = torch.cat([run.pixels[i] for i in idx])  # (sum of F, 3, S, S) uint8: every frame of each sticker
    batch = raw.normalise(frames)  # the preprocessing of inference (StickerCLIP.preprocess)
    if not run.args.no_augment:
        batch = random_resized_crops(batch, run.rng)
    counts = [len(run.pixels[i]) for i in idx]  # frames per sticker
    if run.llm_tower:
        h = torch.from_numpy(np.stack([run.states[run.rng.choice(run.variants[i])] for i in idx])).to(acc.device)
        text_in = {"text_states": h}  # (B, H)
    else:
        enc = raw.tokenize([build_text(run.train[i], shuffle=True, rng=run.rng) for i in idx])
        text_in = {k: v.to(acc.device) for k, v in enc.items()}  # (B, L) token ids and mask
    with acc.accumulate(run.model), acc.autocast():
        img, txt, scale = run.model(batch.to(acc.device), counts, **text_in)  # through DDP when distributed
        loss = clip_loss(gather(img.float(), acc), gather(txt.float(), acc), scale)  # (B, D) each: global batch
        acc.backward(loss)
        run.opt.step()
        run.sched.step()
        run.opt.zero_grad()
    return loss


def train_loop(run: Run) -> torch.Tensor:
    """Optimiser steps from run.step to run.total, logged every 10 steps; validation every --eval-every and
    a checkpoint every --save-every steps (the last step's are `finish`'s) -> the last loss."""
    from tqdm import tqdm

    args, acc = run.args, run.acc
    order: list[int] = []
    bar = tqdm(total=run.total, initial=run.step, disable=args.quiet or not acc.is_main_process, desc="train")
    run.model.train()
    while run.step < run.total:
        for _ in range(args.grad_accum):
            loss = micro_step(run, next_indices(run, order))
        run.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{run.sched.get_last_lr()[0]:.2e}")
        if run.step % 10 == 0 or run.step == run.total:
            run.log("step", step=run.step, loss=round(loss.item(), 4), lr=run.sched.get_last_lr()[0],
                    temperature=round(1 / run.raw.logit_scale.exp().item(), 4))
        before_last = run.step < run.total
        if run.val and args.eval_every and run.step % args.eval_every == 0 and before_last and acc.is_main_process:
            metrics = evaluate(run.raw, run.val, run.log)
            run.raw.train()
            run.log("validation", step=run.step, **metrics)
        if args.save_every and run.step % args.save_every == 0 and before_last:
            save_checkpoint(run)
    bar.close()
    return loss


def finish(run: Run, loss: torch.Tensor) -> dict:
    """Validation at the last step, the last checkpoint, and the model saved to OUT -> the result."""
    result = {"steps": run.step, "loss": round(loss.item(), 4)}
    if run.val and run.acc.is_main_process:
        result["valid"] = evaluate(run.raw, run.val, run.log)
        run.log("validation", step=run.step, **result["valid"])
    save_checkpoint(run)
    if run.acc.is_main_process:
        run.raw.save(run.out)
    run.log("done", **result)
    return result


def main(argv=None) -> dict:
    run = setup(parse_args(argv))
    load_data(run)
    make_optimizer(run)
    if run.resuming:
        resume(run)
    loss = train_loop(run)
    return finish(run, loss)


if __name__ == "__main__":
    main()
