"""Train StickerLLM (paper §5): only the new tokens' rows, W_t and W_c learn; the LLM stays frozen.

    python -m train.train_stickerllm --data /tmp/open --out assets/stickerllm --steps 400

Each step draws a batch of instructions (train.build_instructions: 50 % text→image, 25 %
image→image, 25 % image+text→image, `<pret>` with p 0.5; a share `--general` of general
instructions answered by the frozen LLM itself, as negatives). Loss = LM loss + λ·(InfoNCE t2i +
i2t) against StickerCLIP image features, precomputed once (t2i contrasts with every training
sticker, i2t within the batch). AdamW with a cosine schedule. W_t starts at a ridge-regression fit
of `<ret>` states to the targets (`--init-wt`); `--refit-wt N` re-fits it after training on N
examples' states (the LM loss does not depend on W_t, so this minimises the same loss in W_t
alone, cheaply). Checkpoints (adapter + trainer state)
are written atomically every `--save-every` steps and at the end; `--resume` continues from them.
Runs on CPU (the default) and under `accelerate launch` on GPUs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stickerclip.llm import EMBEDDED_LLM, cache_dir
from stickerclip.model import DEFAULT_MODEL
from stickerllm.model import soft_cap
from stickerllm.tokens import RET
from train.build_instructions import draw_kind, general_instructions, make
from train.common import image_features, read_split, ridge_fit, t2i_recall, usable


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="sticker records (corpus dir or manifest)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--valid-split", default="valid")
    ap.add_argument("--out", required=True, help="adapter directory to write")
    ap.add_argument("--llm", default=EMBEDDED_LLM)
    ap.add_argument("--clip", default=str(DEFAULT_MODEL))
    ap.add_argument("--image-tokens", type=int, default=1)
    ap.add_argument("--query-layer", type=int, default=0,
                    help="the <ret> query is read after this layer (0: the last; train.refit_decision --layers chooses)")
    ap.add_argument("--prompt", default="auto", help="chat format (stickerllm.prompt.STYLES; auto: the "
                                                      "tokenizer's template, else few-shot)")
    ap.add_argument("--output-rows", action="store_true",
                    help="own output rows for the new tokens even when the LLM ties its head")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="paper: 2e-5 at batch 288 on ChatGLM-6B")
    ap.add_argument("--lr-wt", type=float, default=1e-4, help="learning rate of W_t (default 1e-4)")
    ap.add_argument("--init-wt", type=int, default=2000,
                    help="examples for the ridge-regression start of W_t (0: random start)")
    ap.add_argument("--ridge", type=float, default=10.0)
    ap.add_argument("--refit-wt", type=int, default=0,
                    help="after training, refit W_t on this many examples' <ret> states (0: no refit)")
    ap.add_argument("--refit-valid", type=int, default=300,
                    help="validation stickers (the last ones, apart from --valid-n's first) that pick the refit's epoch")
    ap.add_argument("--refit-epochs", type=int, default=200)
    ap.add_argument("--refit-out", type=int, default=0,
                    help="after training, refit <ret>'s output row on this many examples' states (needs "
                         "--output-rows for a tied LLM; 0: no refit)")
    ap.add_argument("--refit-out-steps", type=int, default=400)
    ap.add_argument("--refit-out-lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--lam", type=float, default=1.0, help="λ, the weight of the contrastive loss")
    ap.add_argument("--general", type=float, default=0.2, help="share of general (no-retrieval) examples")
    ap.add_argument("--general-tokens", type=int, default=48, help="length of the frozen LLM's answers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--valid-n", type=int, default=150, help="validation T2I queries at each save (0: none)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="end training after this step (the schedule still spans --steps)")
    ap.add_argument("--max-records", type=int, default=None)
    return ap.parse_args(argv)


def log(msg: str) -> None:
    """Progress goes to stderr; the result JSON goes to stdout."""
    print(msg, file=sys.stderr, flush=True)


def general_answers(model, rows, max_tokens: int, log) -> list[tuple[str, str]]:
    """(instruction, the frozen LLM's greedy reply) for general instructions, cached per LLM."""
    from stickerllm.chat import ChatSettings, StickerChat

    key = hashlib.sha256(json.dumps([model.config.llm, max_tokens, [r["id"] for r in rows], model.builder.format.kind,
                                     model.builder.preamble().ids]).encode()).hexdigest()[:16]
    path = cache_dir() / "stickerllm-general" / f"{key}.jsonl"
    if path.is_file():
        return [tuple(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
    t0 = time.time()
    chat = StickerChat(model)
    s = ChatSettings(temperature=0.0, max_new_tokens=max_tokens)
    out = []
    for r in rows:
        enc, _, _ = chat.encode(r["instruction"], settings=s)
        out.append((r["instruction"], base_reply(model, enc, max_tokens, chat._stop_ids)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in out), encoding="utf-8")
    os.replace(tmp, path)
    log(f"answered {len(rows)} general instructions with the frozen LLM in {time.time() - t0:.0f}s")
    return out


def base_reply(model, enc, max_tokens: int, stop_ids) -> str:
    """The frozen LLM's own greedy reply (`StickerLLM.frozen_generate`), decoded without special tokens,
    up to the end of its turn."""
    text = model.decode(model.frozen_generate([enc], max_tokens, stop_ids)[0])
    stop = model.builder.format.stop_text
    return text.split(stop)[0] if stop else text


def sample_batch(model, rng, records, index_of, feats, general, n: int, general_p: float, kinds: list | None = None):
    """A training batch: examples, per-example image features, target features and bank rows.
    `kinds`, if given, receives each example's kind (t2i, i2i, it2i or general)."""
    examples, images, targets, rows = [], [], [], []
    d = feats.shape[1]
    for _ in range(n):
        if general and rng.random() < general_p:
            instr, answer = rng.choice(general)
            examples.append(model.builder.encode_answer([{"role": "user", "content": instr}], answer))
            images.append(None)
            targets.append(np.zeros(d, np.float32))
            rows.append(-1)
            if kinds is not None:
                kinds.append("general")
            continue
        target = rng.choice(records)
        ins = make(draw_kind(rng), target, records, rng, "in")
        if kinds is not None:
            kinds.append(ins.kind)
        msg = {"role": "user", "content": ins.instruction, "images": len(ins.images)}
        examples.append(model.builder.encode_answer([msg], ins.answer, pret=ins.pret))
        images.append(torch.from_numpy(feats[[index_of[i] for i in ins.images]]) if ins.images else None)
        targets.append(feats[index_of[target.id]])
        rows.append(index_of[target.id])
    return examples, images, torch.from_numpy(np.stack(targets)), torch.tensor(rows)


@torch.no_grad()
def ret_states(model, examples_fn, n: int, batch_size: int = 32):
    """(query-layer states (n, H), bank rows (n,)) at `<ret>` for `n` teacher-forced examples from `examples_fn(k)`
    (-> examples, images, targets, rows as sample_batch returns)."""
    hs, rows_all = [], []
    for start in range(0, n, batch_size):
        examples, images, _, rows = examples_fn(min(batch_size, n - start))
        b = model.batch(examples, images)
        _, h = model.hidden_states(b, query=True)
        hs.append(h[torch.arange(len(examples)), b["ret_pos"].to(h.device)].float().cpu())
        rows_all.append(rows)
    return torch.cat(hs), torch.cat(rows_all)


@torch.no_grad()
def init_w_t(model, rng, records, index_of, feats, n: int, ridge: float, log) -> dict:
    """Start W_t at the least-squares map from the frozen LLM's `<ret>` states to the targets' image
    features (ridge regression over `n` training examples): contrastive training then refines a map
    that already retrieves, instead of searching for one from noise (measured on the open corpus:
    SGD from a random W_t reached valid T2I MR 8.9 after 50 steps; this start is near 47)."""
    t0 = time.time()
    H, rows = ret_states(model, lambda k: sample_batch(model, rng, records, index_of, feats, [], k, 0.0), n)
    Y = torch.from_numpy(feats)[rows]
    W = ridge_fit(H, Y, ridge)
    model.w_t.weight.copy_(W.T.to(model.w_t.weight.dtype))
    fit = float((torch.nn.functional.normalize(H @ W, dim=-1) * Y).sum(-1).mean())
    log(f"W_t initialised by ridge regression on {len(H)} <ret> states in {time.time() - t0:.0f}s "
        f"(mean cosine to targets {fit:.3f})")
    return {"examples": len(H), "ridge": ridge, "cosine": round(fit, 4)}


def refit_w_t_teacher_forced(model, rng, records, index_of, feats, valid, n: int, ridge: float, epochs: int,
                             log) -> dict:
    """Stage 2: with every other weight fixed, the LM loss does not depend on W_t, so the training loss
    in W_t alone is λ·(InfoNCE t2i + i2t) over `<ret>` states that can be computed once: those of
    training answers, teacher-forced (`train.refit_decision.refit_w_t_first_ret` fits instead
    the states of a `<ret>` at the first answer position, by ridge alone). Fit W_t on
    the states of `n` training examples, keeping the epoch with the best T2I MR on the validation
    stickers: a ridge start towards the target's image feature plus (for instructions with text) the
    StickerCLIP text feature of the target's text, then Adam on the contrastive loss (full bank for
    t2i). Measured on 300 validation stickers after 150 steps: ridge to image features MR 47.1, to
    image + text 49.1, then the contrastive refinement 50.8 (StickerCLIP itself 60.7)."""
    import torch.nn.functional as F

    from stickerclip.data import build_text
    from stickerclip.metrics import paired_recall

    t0 = time.time()
    kinds: list[str] = []
    H, rows = ret_states(model, lambda k: sample_batch(model, rng, records, index_of, feats, [], k, 0.0, kinds), n)
    txt = torch.from_numpy(model.clip.encode_texts([build_text(r) for r in records], batch_size=256))
    vfeats = model.clip.encode_images(valid)
    v_index = {r.id: i for i, r in enumerate(valid)}
    vrng = random.Random(12345)

    def valid_batch(k, _it=iter(range(len(valid)))):
        examples, images, rows_ = [], [], []
        for _ in range(k):
            r = valid[next(_it)]
            ins = make("t2i", r, valid, vrng, "in", pret=True)
            examples.append(model.builder.encode_answer([{"role": "user", "content": ins.instruction}], ins.answer,
                                                        pret=True))
            images.append(None)
            rows_.append(v_index[r.id])
        return examples, images, None, torch.tensor(rows_)

    Hv, vrows = ret_states(model, valid_batch, len(valid))
    bank = F.normalize(torch.from_numpy(feats), dim=-1)
    vbank = torch.from_numpy(vfeats)

    def valid_mr(W):
        q = F.normalize(Hv @ W, dim=-1).numpy()
        return paired_recall(q, vbank[vrows].numpy())

    has_text = torch.tensor([k != "i2i" for k in kinds])[:, None]
    start = F.normalize(bank[rows] + torch.where(has_text, txt[rows], bank[rows]), dim=-1)
    W = ridge_fit(H, start, ridge).requires_grad_(True)
    best = (valid_mr(W.detach())["MR"], W.detach().clone(), 0)
    start_mr = best[0]
    opt = torch.optim.Adam([W], lr=1e-4)
    scale = float(model.logit_scale.detach().exp().clamp(max=100))
    g = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(H), generator=g).split(256):
            q = F.normalize(H[idx] @ W, dim=-1)
            t2i = F.cross_entropy(scale * q @ bank.T, rows[idx])
            sim = scale * q @ bank[rows[idx]].T
            i2t = F.cross_entropy(sim.T, torch.arange(len(idx)))
            opt.zero_grad()
            (t2i + i2t).backward()
            opt.step()
        mr = valid_mr(W.detach())["MR"]
        if mr > best[0]:
            best = (mr, W.detach().clone(), epoch)
        elif epoch - best[2] >= 15:
            break
    with torch.no_grad():
        model.w_t.weight.copy_(best[1].T.to(model.w_t.weight.dtype))
    log(f"W_t refit on {len(H)} <ret> states: valid T2I MR {start_mr} (ridge) -> {best[0]} "
        f"(epoch {best[2]}) in {time.time() - t0:.0f}s")
    return {"examples": len(H), "valid": len(valid), "ridge_mr": start_mr, "valid_mr": best[0], "epoch": best[2]}


@torch.no_grad()
def _answer_states(model, rng, records, index_of, feats, general, n: int, general_p: float):
    """Final hidden states at the answer positions of `n` teacher-forced examples, their targets, and
    per position the frozen head's log-sum-exp and target logit (0 where the target is new)."""
    head = model.llm.get_output_embeddings().weight
    base_len = min(model.specials.base_len, head.shape[0])
    cap = model.logit_cap
    hs, ts, lses, tls = [], [], [], []
    for start in range(0, n, 16):
        exs, ims, _, _ = sample_batch(model, rng, records, index_of, feats, general, min(16, n - start), general_p)
        b = model.batch(exs, ims)
        h = model.hidden_states(b)
        sel = (b["labels"] >= 0).to(h.device)
        hh, tt = h[sel].float(), b["labels"].to(h.device)[sel]
        bl = soft_cap(hh @ head[:base_len].float().T, cap)
        lses.append(torch.logsumexp(bl, -1))
        tls.append(torch.where(tt < base_len, bl.gather(1, tt.clamp(max=base_len - 1)[:, None])[:, 0], 0.0))
        hs.append(hh)
        ts.append(tt)
    return torch.cat(hs), torch.cat(ts), torch.cat(lses), torch.cat(tls), cap


def refit_out(model, rng, records, index_of, feats, general, n: int, general_p: float, steps: int, lr: float,
              log) -> dict:
    """Stage 2 for emission: with the input side fixed, hidden states do not depend on the output rows,
    so the LM loss in `<ret>`'s output row alone can be minimised over states computed once (the
    frozen head's part reduces to a log-sum-exp per position). Needs output rows of their own.
    Measured after 150 steps of the default recipe (tied row): tool selection (b)-(e) 0 -> 92-100 %
    on 24 instructions each, (a) 85 % on 48 (see bench/RESULTS.md)."""
    if model.tok_out is None:
        raise SystemExit("--refit-out needs output rows of their own: --output-rows or an untied LLM head")
    t0 = time.time()
    H, T, lse, tl, cap = _answer_states(model, rng, records, index_of, feats, general, n, general_p)
    is_ret = T == model.specials.ret
    row = model.tok_out[RET].detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([row], lr=lr)

    def loss_of(r):
        new = soft_cap(H @ r, cap)
        return (torch.logaddexp(lse, new) - torch.where(is_ret, new, tl)).mean()

    before = float(loss_of(row).detach())
    for _ in range(steps):
        loss = loss_of(row)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(loss_of(row).detach())
    with torch.no_grad():
        model.tok_out[RET].copy_(row.detach().to(model.tok_out.dtype))
    log(f"<ret> output row refit on {len(H)} answer positions ({int(is_ret.sum())} <ret>): LM loss "
        f"{before:.3f} -> {after:.3f} in {time.time() - t0:.0f}s")
    return {"positions": len(H), "ret_targets": int(is_ret.sum()), "loss_before": round(before, 4),
            "loss_after": round(after, 4)}


def save_state(out: Path, model, opt, sched, step: int, rng) -> None:
    model.save(out)
    tmp = out / f".trainer_state.pt.{os.getpid()}"
    # the adapter again, so that a kill between the two files cannot pair weights and optimizer of two steps
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "adapter": model.adapter_state()}, tmp)
    os.replace(tmp, out / "trainer_state.pt")


def _logged_step(line: str) -> float:
    """The step of a train_log.jsonl row; inf for a row cut short by a kill."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


@dataclass
class Run:
    """What the stages of a training run share."""
    args: argparse.Namespace
    acc: Any  # accelerate.Accelerator
    out: Path  # the adapter folder: adapter, config, trainer_state.pt, train_log.jsonl
    model: Any  # StickerLLM
    converted: bool  # a resumed tied-row adapter gained output rows (its optimizer state no longer fits)
    rng: random.Random  # draws the batches; saved in checkpoints
    records: list  # training stickers
    valid: list  # validation stickers (none with --valid-n 0)
    feats: np.ndarray  # (N, d) StickerCLIP image features of `records`, normalised
    index_of: dict  # record id -> its row of feats
    bank: torch.Tensor  # (N, d) feats: what t2i contrasts with
    general: list  # (general instruction, the frozen LLM's answer): the no-retrieval examples
    params: list  # the trained parameters
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR

    @property
    def last(self) -> int:
        """The last step of this run: --stop-after, within --steps (which the schedule spans)."""
        return min(self.args.steps, self.args.stop_after or self.args.steps)

    @property
    def state_path(self) -> Path:
        return self.out / "trainer_state.pt"

    @property
    def log_path(self) -> Path:
        return self.out / "train_log.jsonl"


def open_model(args, out: Path, device):
    """The StickerLLM to train, its config recording the recipe: the adapter in OUT when resuming (given
    output rows of its own when --output-rows asks: `converted`), else a new one on --llm and --clip
    -> (model, converted)."""
    from stickerllm import model as sllm

    converted = False
    if args.resume and (out / "config.json").is_file():
        model = sllm.load(out, llm=args.llm, clip=args.clip, device=device)
        if args.output_rows and model.tok_out is None:
            model.add_output_rows()  # continue a tied-row adapter with output rows of its own
            converted = True
    else:
        model = sllm.create(args.llm, args.clip, image_tokens=args.image_tokens, device=device,
                            output_rows=args.output_rows, query_layer=args.query_layer, prompt=args.prompt)
    model.config.extra.update({"data": str(args.data), "steps": args.steps, "stop_after": args.stop_after,
                               "batch_size": args.batch_size, "lr": args.lr, "lr_wt": args.lr_wt,
                               "weight_decay": args.weight_decay, "lam": args.lam, "general": args.general,
                               "seed": args.seed})
    return model, converted


def make_optimizer(args, model, params):
    """AdamW over the trained parameters (W_t at --lr-wt) with linear warmup, then a cosine decay over
    --steps -> (optimizer, scheduler)."""
    w_t = [model.w_t.weight]
    others = [p for p in params if p is not model.w_t.weight]
    lr_wt = args.lr if args.lr_wt is None else args.lr_wt
    opt = torch.optim.AdamW([{"params": others}, {"params": w_t, "lr": lr_wt}], lr=args.lr,
                            weight_decay=args.weight_decay)

    def lr_at(step):
        if step < args.warmup:
            return (step + 1) / args.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def setup(args) -> Run:
    """Accelerator, seeds, the training and validation stickers, the model, the stickers' image features,
    the frozen LLM's answers to general instructions (--general), optimizer and schedule."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
    out = Path(args.out)
    rng = random.Random(args.seed + acc.process_index)
    torch.manual_seed(args.seed)
    records = read_split(args.data, args.split, log)[:args.max_records]
    valid = read_split(args.data, args.valid_split, log) if args.valid_n else []
    if len(records) < 2:
        raise SystemExit(f"{args.data}: need at least 2 training records, found {len(records)}")
    model, converted = open_model(args, out, acc.device if args.device is None else torch.device(args.device))
    records = usable(records)
    feats = image_features(model.clip, records, log)
    general = general_answers(model, general_instructions(part="train"), args.general_tokens, log) \
        if args.general > 0 else []
    params = list(model.trainable().values())
    opt, sched = make_optimizer(args, model, params)
    return Run(args, acc, out, model, converted, rng, records, valid, feats,
               index_of={r.id: i for i, r in enumerate(records)}, bank=torch.from_numpy(feats), general=general,
               params=params, opt=opt, sched=sched)


def start_w_t(run: Run) -> None:
    """--init-wt: W_t starts at the ridge-regression map from `<ret>` states to the targets."""
    args = run.args
    run.model.config.extra["init_w_t"] = init_w_t(run.model, random.Random(args.seed + 1), run.records, run.index_of,
                                                  run.feats, args.init_wt, args.ridge, log)


def resume(run: Run) -> int:
    """Optimizer (afresh when the adapter gained output rows) and the adapter of the checkpoint's step,
    schedule and random states from OUT/trainer_state.pt -> the step to continue from."""
    st = torch.load(run.state_path, weights_only=False)
    if run.converted:
        log("the optimizer starts afresh: the adapter gained output rows")
    else:
        run.opt.load_state_dict(st["optimizer"])
        if "adapter" in st:
            run.model.load_adapter(st["adapter"], where=str(run.state_path))
    run.sched.load_state_dict(st["scheduler"])
    run.rng.setstate(st["rng"])
    torch.set_rng_state(st["torch_rng"])
    log(f"resumed at step {st['step']}")
    return st["step"]


def open_log(run: Run, start: int) -> None:
    """OUT/train_log.jsonl from step `start` on: a new run starts it afresh; a resumed one drops the rows
    logged after its checkpoint (then killed), which are logged again."""
    run.out.mkdir(parents=True, exist_ok=True)
    log_path = run.log_path
    if start == 0 and log_path.exists():
        log_path.unlink()
    elif log_path.exists():
        tmp = log_path.with_name(f".{log_path.name}.{os.getpid()}")
        kept = [line for line in log_path.read_text().splitlines() if _logged_step(line) <= start]
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, log_path)


def log_row(run: Run, row: dict) -> None:
    with run.log_path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def train_step(run: Run) -> dict:
    """One AdamW step on a fresh batch -> the loss and its parts (lm, t2i, i2t: scalars)."""
    args, model, acc = run.args, run.model, run.acc
    examples, images, targets, rows = sample_batch(model, run.rng, run.records, run.index_of, run.feats, run.general,
                                                   args.batch_size, args.general)  # targets (B, d), rows (B,)
    batch = model.batch(examples, images)
    with acc.autocast():
        parts = model.loss(batch, targets, args.lam, bank=run.bank, target_idx=rows.clamp(min=0))  # -1: general
    acc.backward(parts["loss"])
    if acc.num_processes > 1:
        for p in run.params:
            if p.grad is not None:
                p.grad = acc.reduce(p.grad, "mean")
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    return parts


def validate(run: Run, step: int) -> dict:
    """T2I recall of the first --valid-n validation stickers, logged -> the recall."""
    result = t2i_recall(run.model, run.valid[:run.args.valid_n], seed=run.args.seed)
    log_row(run, {"step": step, "valid_t2i": result})
    log(f"step {step}: valid T2I {result}")
    return result


def train_loop(run: Run, start: int) -> dict:
    """Steps `start` to run.last: a log row every --log-every steps; validation and a checkpoint every
    --save-every and at the last (on the main process) -> the last validation recall ({} if none)."""
    args, model, acc = run.args, run.model, run.acc
    model.train()
    t0, seen = time.time(), 0
    result = {}
    for step in range(start, run.last):
        parts = train_step(run)
        seen += args.batch_size
        done = step + 1
        if done % args.log_every == 0 or done == run.last:
            row = {"step": done, **{k: round(float(v.detach()), 4) for k, v in parts.items()},
                   "lr": run.sched.get_last_lr()[0], "seconds": round(time.time() - t0, 1),
                   "samples_per_s": round(seen / (time.time() - t0), 2)}
            if acc.is_main_process:
                log(json.dumps(row))
                log_row(run, row)
        if acc.is_main_process and (done % args.save_every == 0 or done == run.last):
            model.eval()
            if run.valid and args.valid_n:
                result = validate(run, done)
            model.config.extra["trained_steps"] = done
            save_state(run.out, model, run.opt, run.sched, done, run.rng)
            model.train()
    model.eval()
    return result


def refit_output_row(run: Run) -> None:
    """--refit-out: `<ret>`'s output row refit on cached answer states; saved (unless --refit-wt follows)."""
    args = run.args
    run.model.config.extra["refit_out"] = refit_out(run.model, random.Random(args.seed + 3), run.records,
                                                    run.index_of, run.feats, run.general, args.refit_out, args.general,
                                                    args.refit_out_steps, args.refit_out_lr, log)
    if not args.refit_wt:
        save_state(run.out, run.model, run.opt, run.sched, run.last, run.rng)


def refit_query_map(run: Run) -> dict:
    """--refit-wt: W_t refit on teacher-forced `<ret>` states, then validated, logged and saved -> the
    validation recall."""
    args = run.args
    if not run.valid:
        raise SystemExit("--refit-wt needs validation records (--valid-split, --valid-n)")
    fit = refit_w_t_teacher_forced(run.model, random.Random(args.seed + 2), run.records, run.index_of, run.feats,
                                   run.valid[-args.refit_valid:], args.refit_wt, args.ridge, args.refit_epochs, log)
    run.model.config.extra["refit_w_t"] = fit
    result = t2i_recall(run.model, run.valid[:args.valid_n], seed=args.seed)  # validation is read with --valid-n
    log(f"after the refit: valid T2I {result}")
    log_row(run, {"step": run.last, "refit": fit, "valid_t2i": result})
    save_state(run.out, run.model, run.opt, run.sched, run.last, run.rng)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = setup(args)
    checkpoint = args.resume and run.state_path.is_file()
    if args.init_wt and not checkpoint:
        start_w_t(run)
    start = resume(run) if checkpoint else 0
    open_log(run, start)
    result = train_loop(run, start)
    if args.refit_out and run.acc.is_main_process:
        refit_output_row(run)
    if args.refit_wt and run.acc.is_main_process:
        result = refit_query_map(run)
    return {"steps": run.last, "valid_t2i": result, "out": str(run.out)}


if __name__ == "__main__":
    print(json.dumps(main()))
