"""Stage 3 of StickerLLM training: fit `<ret>`'s output row to the greedy decision itself.

    python -m train.refit_decision --model assets/stickerllm --data /tmp/open --out assets/stickerllm

Tool selection (Table 4) is a greedy decision: a reply retrieves when `<ret>`'s logit beats the
frozen head's best token at some position. The LM loss of training only approximates that. Here,
with everything else fixed, the hidden states do not depend on `<ret>`'s output row, so they are
computed once and the row alone is fit to margins s = `<ret>` logit - best other logit:

- positives: in-domain retrieval instructions over the training stickers (the paper's mix of
  kinds, `<pret>` with p 0.5): s > 0 at the answer's first position;
- negatives: the training part of the general instructions (train/data/general_instructions.jsonl,
  every third) and train/data/general_train_extra.jsonl, along the frozen LLM's own greedy reply
  (`--tokens` positions, `<ret>` banned): s < 0 at every position (a soft maximum over them).

The loss is logistic in (margin - s) and (s + margin), positives and negatives weighted equally.
Every fifth prompt of each side is held out and reports accuracy before and after. Held-out
(out-of-domain) templates and the evaluation part of the general instructions are never used.

With `--refit-wt N`, W_t is then refit (ridge, no bias) on N `<ret>` states taken where the row now
emits `<ret>`: at the first answer position (`--skip-row` does only this).
Needs output rows of the adapter's own (`--output-rows` in training, or an untied LLM head).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stickerclip.data import read_records
from stickerclip.llm import cache_dir
from stickerllm.tokens import RET
from train.build_instructions import GENERAL, draw_kind, general_instructions, make
from train.eval_stickerclip import usable
from train.eval_stickerllm import _prompts

EXTRA = GENERAL.with_name("general_train_extra.jsonl")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="StickerLLM adapter directory")
    ap.add_argument("--data", required=True, help="sticker records (corpus dir or manifest)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", required=True, help="where the refitted adapter goes (may be --model)")
    ap.add_argument("--positives", type=int, default=1600, help="retrieval instructions")
    ap.add_argument("--extra", default=str(EXTRA), help="more general instructions for training ('' for none)")
    ap.add_argument("--tokens", type=int, default=48, help="positions of each general reply")
    ap.add_argument("--margin", type=float, default=2.0, help="logit margin wanted on both sides")
    ap.add_argument("--temperature", type=float, default=1.0, help="of the logistic loss and soft maximum")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--refit-wt", type=int, default=0,
                    help="then refit W_t (ridge, no bias) on this many first-position <ret> states (0: keep it)")
    ap.add_argument("--skip-row", action="store_true", help="keep <ret>'s output row as it is (with --refit-wt)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(f"[refit_decision] {msg}", file=sys.stderr, flush=True)


def _states_key(model, prompts, tokens: int) -> str:
    """What the states depend on: the LLM, the adapter's input side (not `<ret>`'s output row), the
    prompts and the reply length."""
    h = hashlib.sha256(json.dumps([model.config.llm, model.config.clip_identity, tokens, prompts],
                                  ensure_ascii=False).encode())
    for name, t in sorted(model.adapter_state().items()):
        if name != "tok_out":
            h.update(name.encode() + t.numpy().tobytes())
    return h.hexdigest()[:20]


def decision_states(model, prompts: list[tuple[str, list, bool]], by_id: dict, tokens: int, batch_size: int,
                    cache: bool = False):
    """Per prompt (instruction, sticker ids sent, pret): (states (k, H), best other logit (k,)) at the
    first `tokens` positions of the frozen LLM's own greedy reply (`<ret>` banned). With `cache`,
    kept under the cache directory, keyed by everything they depend on."""
    path = cache_dir() / "stickerllm-decision" / f"{_states_key(model, prompts, tokens)}.pt" if cache else None
    if path is not None and path.is_file():
        log(f"states from {path}")
        return torch.load(path)
    out = _decision_states(model, prompts, by_id, tokens, batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        torch.save(out, tmp)
        os.replace(tmp, path)
    return out


def _decision_states(model, prompts, by_id: dict, tokens: int, batch_size: int):
    from stickerllm.chat import greedy_batch

    out, t0 = [], time.time()
    for start in range(0, len(prompts), batch_size):
        if start and start % (batch_size * 10) == 0:
            log(f"  {start}/{len(prompts)} prompts, {time.time() - t0:.0f}s")
        chunk = prompts[start:start + batch_size]
        encs, feats = _prompts(model, chunk, by_id)
        hs, mx = [[] for _ in chunk], [[] for _ in chunk]

        def seen(rows, h, logits, hs=hs, mx=mx):
            best = logits.max(-1).values
            for j, i in enumerate(rows):
                hs[i].append(h[j].float().cpu())
                mx[i].append(best[j].float().cpu())

        greedy_batch(model, encs, feats, max_new_tokens=tokens, stop_ids=model.builder.format.stop_ids,
                     allow_ret=False, on_step=seen)
        out += [(torch.stack(h), torch.stack(m)) for h, m in zip(hs, mx)]
    return out


def _padded(groups):
    """[(states (k_i, H), best (k_i,))] -> states (G, K, H), best (G, K), valid mask (G, K)."""
    K = max(len(m) for _, m in groups)
    H = groups[0][0].shape[1]
    hs = torch.zeros(len(groups), K, H)
    mx = torch.zeros(len(groups), K)
    ok = torch.zeros(len(groups), K, dtype=torch.bool)
    for g, (h, m) in enumerate(groups):
        hs[g, :len(m)], mx[g, :len(m)], ok[g, :len(m)] = h, m, True
    return hs, mx, ok


class Margins:
    """s = capped(h . row) - best other logit, per prompt: the first position (positives) or the
    largest over the reply (negatives; soft with `temperature` in the loss)."""

    def __init__(self, pos, neg, cap):
        self.pos_h = torch.stack([h[0] for h, _ in pos])
        self.pos_m = torch.stack([m[0] for _, m in pos])
        self.neg_h, self.neg_m, self.neg_ok = _padded(neg)
        self.cap = cap

    def _s(self, h, best, row):
        s = h @ row
        if self.cap:
            s = torch.tanh(s / self.cap) * self.cap
        return s - best

    def pos(self, row):
        return self._s(self.pos_h, self.pos_m, row)

    def neg(self, row):  # (G, K), -inf where padded
        return self._s(self.neg_h, self.neg_m, row).masked_fill(~self.neg_ok, float("-inf"))

    def loss(self, row, margin: float, t: float):
        neg = t * torch.logsumexp(self.neg(row) / t, -1)
        return F.softplus((margin - self.pos(row)) / t).mean() + F.softplus((neg + margin) / t).mean()

    @torch.no_grad()
    def accuracy(self, row) -> dict:
        pos = (self.pos(row) > 0).float().mean().item()
        neg = (self.neg(row).max(-1).values < 0).float().mean().item()
        return {"positives": round(100 * pos, 2), "negatives": round(100 * neg, 2),
                "n_pos": len(self.pos_h), "n_neg": len(self.neg_h)}


def fit_row(row0: torch.Tensor, fit: Margins, margin: float, t: float, steps: int, lr: float):
    row = row0.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([row], lr=lr)
    for _ in range(steps):
        loss = fit.loss(row, margin, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return row.detach()


def prompts_for(records, n: int, rng: random.Random):
    out = []
    for _ in range(n):
        ins = make(draw_kind(rng), rng.choice(records), records, rng, "in")
        out.append((ins.instruction, ins.images, ins.pret))
    return out


def general_rows(extra: str) -> list[dict]:
    rows = general_instructions(part="train")
    if extra:
        held_out = {r["instruction"] for r in general_instructions(part="eval")}
        more = general_instructions(extra)
        clash = [r["id"] for r in more if r["instruction"] in held_out]
        if clash:
            raise SystemExit(f"{extra}: instructions of the evaluation part: {clash[:5]}")
        rows += more
    return rows


def refit(model, records, args) -> dict:
    """Fit `<ret>`'s output row in place; returns what was measured."""
    if model.tok_out is None:
        raise SystemExit("refit_decision needs output rows of the adapter's own (--output-rows or an untied head)")
    t0 = time.time()
    rng = random.Random(args.seed)
    by_id = {r.id: r for r in records}
    pos_prompts = prompts_for(records, args.positives, rng)
    general = general_rows(args.extra)
    rng.shuffle(general)
    neg_prompts = [(r["instruction"], [], False) for r in general]
    log(f"{len(pos_prompts)} retrieval and {len(neg_prompts)} general instructions")
    pos = decision_states(model, pos_prompts, by_id, 1, args.batch_size, cache=True)
    log(f"positives' states in {time.time() - t0:.0f}s")
    neg = decision_states(model, neg_prompts, by_id, args.tokens, args.batch_size, cache=True)
    log(f"general replies' states ({sum(len(m) for _, m in neg)} positions) in {time.time() - t0:.0f}s")
    cap = getattr(model.llm.config.get_text_config(), "final_logit_softcapping", None)

    def part(xs, held):
        return [x for k, x in enumerate(xs) if (k % 5 == 4) == held]

    fit = Margins(part(pos, False), part(neg, False), cap)
    valid = Margins(part(pos, True), part(neg, True), cap)
    row0 = model.tok_out[RET].detach().float().cpu()
    before = {"fit": fit.accuracy(row0), "held_out": valid.accuracy(row0)}
    row = fit_row(row0, fit, args.margin, args.temperature, args.steps, args.lr)
    after = {"fit": fit.accuracy(row), "held_out": valid.accuracy(row)}
    with torch.no_grad():
        model.tok_out[RET].copy_(row.to(model.tok_out.dtype))
    res = {"positives": len(pos), "general": len(neg), "general_extra": Path(args.extra).name if args.extra else None,
           "tokens": args.tokens, "margin": args.margin, "temperature": args.temperature, "steps": args.steps,
           "lr": args.lr, "seed": args.seed, "before": before, "after": after, "seconds": round(time.time() - t0)}
    log(f"accuracy before {before} -> after {after}")
    return res


def first_ret_states(model, prompts, by_id: dict, batch_size: int) -> torch.Tensor:
    """(N, H) final hidden states at `<ret>` placed at the first answer position of each prompt: where
    the refit row now emits it, so where every query comes from."""
    from stickerllm.chat import greedy_batch

    out = []
    for start in range(0, len(prompts), batch_size):
        encs, feats = _prompts(model, prompts[start:start + batch_size], by_id)
        res = greedy_batch(model, encs, feats, max_new_tokens=0, stop_ids=model.builder.format.stop_ids,
                           force_ret=True)
        out += [r["state"] for r in res]
    return torch.stack(out)


def refit_w_t(model, records, args) -> dict:
    """W_t (no bias) by ridge regression of first-position `<ret>` states onto the targets' image
    features, over instructions of the paper's mix; the penalty is picked on a held-out fifth by
    paired MR (mean of R@1/5/10 of each query's own target among the held-out ones)."""
    from stickerclip.metrics import paired_ranks, recall_from_ranks
    from train.train_stickerllm import ridge_fit

    t0 = time.time()
    rng = random.Random(args.seed + 1)
    by_id = {r.id: r for r in records}
    targets = [rng.choice(records) for _ in range(args.refit_wt)]
    prompts = []
    for r in targets:
        ins = make(draw_kind(rng), r, records, rng, "in")
        prompts.append((ins.instruction, ins.images, ins.pret))
    H = first_ret_states(model, prompts, by_id, args.batch_size)
    Y = torch.from_numpy(model.clip.encode_images(targets)).float()
    held = torch.arange(len(H)) % 5 == 4
    scale = float((H[~held] ** 2).sum(1).mean())

    def mr(W, rows):
        q = F.normalize(H[rows] @ W, dim=-1).numpy()
        return recall_from_ranks(paired_ranks(q, Y[rows].numpy()))["MR"]

    def as_w(W):
        return W.T.to(model.w_t.weight.dtype).to(model.w_t.weight.device)

    with torch.no_grad():
        before = mr(model.w_t.weight.detach().float().cpu().T, held)
        scores = {c: mr(ridge_fit(H[~held], Y[~held], c * scale), held) for c in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)}
        c = max(scores, key=scores.get)
        model.w_t.weight.copy_(as_w(ridge_fit(H, Y, c * scale)))
    res = {"examples": len(H), "held_out_mr_before": before,
           "held_out_mr_by_penalty": {f"{k:g}": v for k, v in scores.items()},
           "penalty": c, "seconds": round(time.time() - t0)}
    log(f"W_t refit on {len(H)} first-position <ret> states: held-out MR {before} -> {scores[c]} (penalty {c})")
    return res


def main(argv=None) -> dict:
    args = parse_args(argv)
    from stickerllm.model import load

    errors = []
    records = usable(list(read_records(args.data, split=args.split, on_error=errors.append)))
    for e in errors:
        log(f"skipped record: {e}")
    if len(records) < 2:
        raise SystemExit(f"{args.data}: need at least 2 usable records of split {args.split!r}")
    model = load(args.model, device=args.device)
    model.eval()
    res = {}
    if not args.skip_row:
        res = refit(model, records, args)
        model.config.extra["refit_decision"] = res
    if args.refit_wt:
        res["refit_w_t"] = model.config.extra["refit_w_t_first_ret"] = refit_w_t(model, records, args)
    model.save(args.out)
    print(json.dumps(res, ensure_ascii=False))
    return res


if __name__ == "__main__":
    main()
