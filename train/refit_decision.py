"""Stage 3 of StickerLLM training: fit `<ret>`'s output row to the greedy decision itself.

    python -m train.refit_decision --model assets/stickerllm --data /tmp/open --out assets/stickerllm

Tool selection (Table 4) is a greedy decision: a reply retrieves when `<ret>`'s logit beats the
frozen head's best token at some position. The LM loss of training only approximates that. Here,
with everything else fixed, the hidden states do not depend on `<ret>`'s output row, so they are
computed once and the row alone is fit to margins s = `<ret>` logit - best other logit:

- positives: in-domain retrieval instructions over the training stickers (the paper's mix of
  kinds, `<pret>` with p 0.5): s > 0 at the answer's first position;
  With a corpus' concepts (`--concepts`, concepts.json of train.build_multistyle), also natural
  requests (train.natural: a word, a colloquial or indirect request, a mood; zh and en);
- negatives: the training part of the general instructions (train/data/general_instructions.jsonl,
  every third), train/data/general_train_extra.jsonl and natural non-requests (questions about
  sticker subjects), along the reply the chat itself would give (its decoding guards, `<ret>`
  banned, up to the end of the line or `--tokens` positions): s < 0 at every position (a soft
  maximum over them).

`<pret>` before a message asks for stickers whatever the message says (Table 4 (d), (e); the app's
"always retrieve" box). With `--pret-row N`, `<pret>`'s input row is fit first (the paper's trainable
set; the LLM frozen), by backpropagation through the frozen model: N messages of each kind with
`<pret>` before them (the paper's instructions over the training stickers, other messages: general
instructions and natural non-requests, and natural requests) must open their reply with `<ret>` by
`--pret-margin`, while the `<ret>` query of the requests among them stays where it was
(`--pret-keep-query`; Table 5 and the chat read it). No prompt without `<pret>` changes, so
`<ret>`'s row stays right (`--skip-row` keeps it as it is). The queries after `<pret>` still move a
little: the shipped adapter refit W_t after this (`--skip-row --refit-wt`, its card's step 7).

The row is fit to decide at the first answer position, so the adapter it writes has `ret_first` set: the
chat then takes `<ret>` only as a reply's first token (the model's own words cannot pull a gallery in later).

The loss is logistic in (margin - s) and (s + margin), positives and negatives weighted equally.
Every fifth prompt of each side is held out and reports accuracy before and after. Held-out
(out-of-domain) templates and the evaluation part of the general instructions are never used.

With `--refit-wt N`, W_t is then refit (ridge, no bias) on N `<ret>` states taken where the row now
emits `<ret>`: at the first answer position (`--skip-row` does only this), plus the natural requests
(targets: the mean image feature of the concepts asked for). With `--layers`, the query layer
(`query_layer`) and the ridge penalty are chosen together by T2I MR on requests for concepts of the
`--valid-split`, never trained on; StickerCLIP's own text tower is scored on the same queries.
`--valid-paper N` also scores every fit on N instructions of Table 5's T2I over that split's records
(the eval's protocol on concepts never trained on) beside StickerCLIP's own MR there: the ratio the
chosen fit reaches, and the best any fit tried reaches (what a linear W_t from one layer can do).
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

from stickerclip.data import build_text
from stickerclip.llm import cache_dir
from stickerllm.model import soft_cap
from stickerllm.tokens import RET
from train.build_instructions import GENERAL, draw_kind, general_instructions, make
from train.common import encode_prompts, image_features, read_split, ridge_fit

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
    ap.add_argument("--pret-row", type=int, default=0,
                    help="first fit <pret>'s input row on this many messages of each kind with <pret> (0: keep it)")
    ap.add_argument("--pret-margin", type=float, default=4.0, help="margin <ret> must win by after <pret>")
    ap.add_argument("--pret-epochs", type=int, default=2)
    ap.add_argument("--pret-lr", type=float, default=0.5,
                    help="Adam's step, relative to the vocabulary rows' size per coordinate")
    ap.add_argument("--pret-keep-query", type=float, default=10.0,
                    help="weight of 1 - cos(<ret> query, the query before) for requests with <pret> (Table 5 reads them)")
    ap.add_argument("--temperature", type=float, default=1.0, help="of the logistic loss and soft maximum")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--refit-wt", type=int, default=0,
                    help="then refit W_t (ridge, no bias) on this many first-position <ret> states (0: keep it)")
    ap.add_argument("--skip-row", action="store_true", help="keep <ret>'s output row as it is (with --refit-wt or --pret-row)")
    ap.add_argument("--concepts", default=None,
                    help="concepts.json for natural requests (default: DATA/concepts.json where it exists; '' for none)")
    ap.add_argument("--natural", type=int, default=1200, help="natural requests, and as many non-requests")
    ap.add_argument("--layers", default="",
                    help="query layers to choose from with --refit-wt, e.g. 0,3,6,9 (0: the last; '': keep the adapter's)")
    ap.add_argument("--valid-split", default="valid", help="records whose concepts choose the layer and penalty")
    ap.add_argument("--valid-paper", type=int, default=0,
                    help="also report, for every fit, T2I MR of this many Table 5 instructions (t2i, <pret>) over "
                         "--valid-split records, and StickerCLIP's on the same: the ratio on concepts never trained on")
    ap.add_argument("--contrastive-epochs", type=int, default=0,
                    help="then refine W_t by InfoNCE against the distinct targets, up to this many epochs")
    ap.add_argument("--distill", default="0",
                    help="weights w to choose from (comma list): W_t's target is (1-w)·the image target + w·StickerCLIP's "
                         "text feature of the message (its own text tower as a teacher)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(f"[refit_decision] {msg}", file=sys.stderr, flush=True)


def _states_key(model, prompts, tokens: int) -> str:
    """What the states depend on: the LLM, the adapter's input side (not `<ret>`'s output row), the
    prompts and the reply length."""
    h = hashlib.sha256(json.dumps([model.config.llm, model.config.clip_identity, tokens, prompts,
                                   model.builder.format.kind, model.builder.preamble().ids, "guarded"],
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
    from stickerllm.chat import ChatSettings
    from stickerllm.decoding import greedy_batch

    out, t0 = [], time.time()
    for start in range(0, len(prompts), batch_size):
        if start and start % (batch_size * 10) == 0:
            log(f"  {start}/{len(prompts)} prompts, {time.time() - t0:.0f}s")
        chunk = prompts[start:start + batch_size]
        encs, feats = encode_prompts(model, chunk, by_id)
        hs, mx = [[] for _ in chunk], [[] for _ in chunk]

        def seen(rows, h, logits, hs=hs, mx=mx):
            best = logits.max(-1).values
            for j, i in enumerate(rows):
                hs[i].append(h[j].float().cpu())
                mx[i].append(best[j].float().cpu())

        greedy_batch(model, encs, feats, max_new_tokens=tokens, stop_ids=model.builder.format.stop_ids,
                     allow_ret=False, on_step=seen, stop_text=model.builder.format.stop_text, guard=ChatSettings(),
                     users=[text for text, _, _ in chunk])
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
        return soft_cap(h @ row, self.cap) - best

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


def natural_messages(concepts, args, rng):
    """(requests, non-requests) of train.natural over `concepts`, none of them a hand-written evaluation prompt."""
    from train.natural import hand_written, non_requests, requests

    if not concepts:
        return [], []
    held_out = hand_written()
    pos = [m for m in requests(concepts, args.natural, rng) if m.text not in held_out]
    neg = [m for m in non_requests(concepts, args.natural, rng) if m.text not in held_out]
    return pos, neg


def refit(model, records, args, concepts=None) -> dict:
    """Fit `<ret>`'s output row in place; returns what was measured."""
    if model.tok_out is None:
        raise SystemExit("refit_decision needs output rows of the adapter's own (--output-rows or an untied head)")
    t0 = time.time()
    rng = random.Random(args.seed)
    by_id = {r.id: r for r in records}
    nat_pos, nat_neg = natural_messages(concepts, args, random.Random(args.seed + 7))
    pos_prompts = prompts_for(records, args.positives, rng) + [(m.text, [], False) for m in nat_pos]
    general = general_rows(args.extra)
    rng.shuffle(general)
    neg_prompts = [(r["instruction"], [], False) for r in general] + [(m.text, [], False) for m in nat_neg]
    rng.shuffle(pos_prompts)
    rng.shuffle(neg_prompts)
    log(f"{len(pos_prompts)} retrieval ({len(nat_pos)} natural) and {len(neg_prompts)} other messages "
        f"({len(nat_neg)} natural)")
    pos = decision_states(model, pos_prompts, by_id, 1, args.batch_size, cache=True)
    log(f"positives' states in {time.time() - t0:.0f}s")
    neg = decision_states(model, neg_prompts, by_id, args.tokens, args.batch_size, cache=True)
    log(f"other replies' states ({sum(len(m) for _, m in neg)} positions) in {time.time() - t0:.0f}s")
    cap = model.logit_cap

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
    res = {"positives": len(pos), "general": len(neg), "natural": [len(nat_pos), len(nat_neg)],
           "general_extra": Path(args.extra).name if args.extra else None,
           "tokens": args.tokens, "margin": args.margin, "temperature": args.temperature, "steps": args.steps,
           "lr": args.lr, "seed": args.seed, "before": before, "after": after, "seconds": round(time.time() - t0)}
    log(f"accuracy before {before} -> after {after}")
    return res


def pret_prompts(records, concepts, args) -> dict[str, list[tuple[str, list, bool]]]:
    """`--pret-row` messages of each kind, `<pret>` before every one: the paper's mix over `records`,
    other messages (general instructions of the training part and natural non-requests) and natural
    requests (with `concepts`); none of them a held-out prompt."""
    rng = random.Random(args.seed + 3)
    paper = [make(draw_kind(rng), rng.choice(records), records, rng, "in", pret=True) for _ in range(args.pret_row)]
    nat_pos, nat_neg = natural_messages(concepts, args, random.Random(args.seed + 4))
    others = [r["instruction"] for r in general_rows(args.extra)] + [m.text for m in nat_neg]
    rng.shuffle(others)
    rng.shuffle(nat_pos)
    out = {"paper": [(p.instruction, p.images, True) for p in paper],
           "others": [(text, [], True) for text in others[:args.pret_row]],
           "natural": [(m.text, [], True) for m in nat_pos[:args.pret_row]]}
    return {k: v for k, v in out.items() if v}


def ret_batch(model, prompts, by_id: dict) -> tuple[dict, dict]:
    """(batch, decoder kwargs) of `prompts` with `<ret>` placed at the first answer position (its
    index: batch["ret_pos"]), right-padded after the shared preamble, whose KV cache is run once."""
    from stickerllm.decoding import with_prefix

    encs, feats = encode_prompts(model, prompts, by_id)
    for e in encs:
        e.extend([model.specials.ret], special=RET)
    P, cache, rest = with_prefix(model, encs)
    b = model.batch([(e, len(e) - 1) for e in rest], feats)
    B, T = b["ids"].shape
    b["attention_mask"] = torch.cat([torch.ones(B, P, dtype=torch.long), b["attention_mask"]], 1)
    return b, ({"past_key_values": cache, "position_ids": torch.arange(P, P + T).expand(B, T)} if P else {})


def first_margins(model, prompts, by_id: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """((N,) s = `<ret>` logit - the best other logit at the first answer position of each prompt,
    (N, d) the `<ret>` query read there) in one batch; differentiable in the adapter's input rows
    (causal: the margin before `<ret>` does not see it)."""
    b, kw = ret_batch(model, prompts, by_id)
    h, hq = model.hidden_states(b, query=True, **kw)  # (B, T, H) final and query-layer states
    rows, at = torch.arange(len(h), device=h.device), b["ret_pos"].to(h.device)
    logits = model.logits(h[rows, at - 1]).float()  # (B, V) at the first answer position
    col = model.specials.ids[RET]
    s = logits[:, col] - logits.index_fill(1, torch.tensor([col], device=logits.device), float("-inf")).max(-1).values
    return s, model.query(hq[rows, at])


def refit_pret_row(model, records, args, concepts=None) -> dict:
    """Fit `<pret>`'s input row in place (Adam on that row alone, the LLM frozen) so that `<ret>` opens
    the reply after `<pret>` whatever the message, while the query read at that `<ret>` stays where it
    was for retrieval requests (`--pret-keep-query`: weight of 1 - cos(query, the query before)).
    Returns per kind, before and after, on the fit part and a held-out fifth: accuracy (s > 0), margins
    and the queries' mean cosine to the ones before."""
    from stickerllm.tokens import PRET

    t0 = time.time()
    by_id = {r.id: r for r in records}
    kinds = pret_prompts(records, concepts, args)
    fit = [(k, p) for k, ps in kinds.items() for i, p in enumerate(ps) if i % 5 != 4]
    held = [(k, p) for k, ps in kinds.items() for i, p in enumerate(ps) if i % 5 == 4]
    bs = args.batch_size

    @torch.no_grad()
    def run(part):
        out = [first_margins(model, [p for _, p in part[i:i + bs]], by_id) for i in range(0, len(part), bs)]
        return torch.cat([s for s, _ in out]), torch.cat([q for _, q in out])

    q0 = {"fit": run(fit)[1], "held_out": run(held)[1]}  # (N, d) the queries before

    def report(name, part) -> dict:
        s, q = run(part)
        cos = (q * q0[name]).sum(-1)
        out = {}
        for k in kinds:
            at = torch.tensor([kind == k for kind, _ in part])
            sk = s[at]
            out[k] = {"accuracy": round(100 * (sk > 0).float().mean().item(), 2), "n": len(sk),
                      "min_margin": round(sk.min().item(), 2), "median_margin": round(sk.median().item(), 2),
                      "query_cos": round(cos[at].mean().item(), 4)}
        return out

    before = {"fit": report("fit", fit), "held_out": report("held_out", held)}
    log(f"<pret> row: {len(fit)} messages to fit, {len(held)} held out; before {before}")
    tok_in = model.tok_in
    row0 = tok_in.detach()[PRET].clone().float()
    keep = torch.ones(tok_in.shape[0], 1, dtype=torch.bool, device=tok_in.device)
    keep[PRET] = False
    asks = torch.tensor([k != "others" for k, _ in fit])  # requests: their query should not move
    tok_in.requires_grad_(True)
    step = args.pret_lr * float(model.llm.get_input_embeddings().weight.detach().float().std())
    opt = torch.optim.Adam([tok_in], lr=step)  # relative to the vocabulary rows' size per coordinate
    rng = random.Random(args.seed + 5)
    losses = []
    for epoch in range(args.pret_epochs):
        order = list(range(len(fit)))
        rng.shuffle(order)
        for i in range(0, len(order), bs):
            idx = torch.tensor(order[i:i + bs])
            s, q = first_margins(model, [fit[j][1] for j in idx], by_id)
            loss = F.softplus(args.pret_margin - s).mean()
            if args.pret_keep_query and asks[idx].any():
                moved = 1 - (q * q0["fit"][idx]).sum(-1)  # (b,)
                loss = loss + args.pret_keep_query * moved[asks[idx]].mean()
            opt.zero_grad()
            loss.backward()
            tok_in.grad.masked_fill_(keep, 0.0)  # only <pret>'s row moves (Adam leaves zero-grad rows alone)
            opt.step()
            losses.append(loss.item())
        per_epoch = (len(order) + bs - 1) // bs
        log(f"  epoch {epoch + 1}: loss {sum(losses[-per_epoch:]) / per_epoch:.3f}, {time.time() - t0:.0f}s")
    tok_in.requires_grad_(False)
    model.tok_in.grad = None
    after = {"fit": report("fit", fit), "held_out": report("held_out", held)}
    norm = {"before": round(row0.norm().item(), 3), "after": round(tok_in.detach()[PRET].float().norm().item(), 3),
            "other_rows": [round(x, 3) for x in tok_in.detach()[keep[:, 0]].float().norm(dim=1).tolist()]}
    res = {"per_kind": args.pret_row, "margin": args.pret_margin, "epochs": args.pret_epochs, "lr": args.pret_lr,
           "adam_step": round(step, 5), "keep_query": args.pret_keep_query, "before": before, "after": after,
           "row_norm": norm, "seconds": round(time.time() - t0)}
    log(f"<pret> row: after {after}; norm {norm}")
    return res


@torch.no_grad()
def first_ret_states(model, prompts, by_id: dict, batch_size: int, layers: bool = False):
    """States at `<ret>` placed at the first answer position of each prompt (where the refit row now
    emits it, so where every query comes from): (N, H) of the query layer, or with `layers` (L+1, N, H)
    of every layer."""
    out = []
    for start in range(0, len(prompts), batch_size):
        b, kw = ret_batch(model, prompts[start:start + batch_size], by_id)
        at = (torch.arange(len(b["ids"])), b["ret_pos"])
        if layers:
            hs = model.hidden_states(b, layers=True, **kw)
            out.append(torch.stack([h[at].float().cpu() for h in hs]))
        else:
            out.append(model.hidden_states(b, query=True, **kw)[1][at].float().cpu())
    return torch.cat(out, dim=1 if layers else 0)


def _concept_targets(model, records, messages):
    """(N, d) targets of natural requests: the normalised mean image feature of the concepts' records."""
    rows: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        rows.setdefault(getattr(r, "concept", "") or r.id, []).append(i)
    feats = torch.from_numpy(image_features(model.clip, records, log)).float()
    keep, ys = [], []
    for k, m in enumerate(messages):
        idx = [i for c in m.concepts for i in rows.get(c, [])]
        if idx:
            keep.append(k)
            ys.append(F.normalize(feats[idx].mean(0), dim=-1))
    return keep, (torch.stack(ys) if ys else torch.zeros(0, feats.shape[1]))


def _contrastive(W, H, Y, held_mr, start_mr: float, epochs: int, scale: float):
    """Refine a ridge W_t (H -> d) by InfoNCE of each state's query against every distinct target
    (the loss the query is used for), keeping the epoch with the best held-out MR -> (W, MR, epoch)."""
    if epochs <= 0:
        return W, start_mr, 0
    first: dict[bytes, tuple[int, int]] = {}  # target -> (its bank row, the first example with it)
    labels = torch.tensor([first.setdefault(y.numpy().tobytes(), (len(first), i))[0] for i, y in enumerate(Y)])
    bank = Y[[i for _, i in first.values()]]
    W = W.clone().requires_grad_(True)
    opt = torch.optim.Adam([W], lr=0.02 * float(W.detach().abs().mean()))
    best, g = (start_mr, W.detach().clone(), 0), torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(H), generator=g).split(256):
            loss = F.cross_entropy(scale * F.normalize(H[idx] @ W, dim=-1) @ bank.T, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = held_mr(W.detach())
        if score > best[0]:
            best = (score, W.detach().clone(), epoch)
        elif epoch - best[2] >= 5:
            break
    return best[1], best[0], best[2]


def refit_w_t_first_ret(model, records, args, concepts=None, valid_records=()) -> dict:
    """W_t (no bias) by ridge regression of first-position `<ret>` states onto the targets' image
    features (the states where the refit row emits `<ret>`, not the teacher-forced ones of training
    answers that `train.train_stickerllm.refit_w_t_teacher_forced` fits), over instructions of the paper's mix and natural requests. The penalty (and, with
    `--layers`, the query layer) is picked by T2I MR on held-out queries: natural requests for the
    concepts of `valid_records` where there are any (each its own concept; StickerCLIP's text tower
    scored on the same), else a held-out fifth of the training queries."""
    from stickerclip.metrics import paired_ranks, recall_from_ranks
    from train.natural import requests

    t0 = time.time()
    rng = random.Random(args.seed + 1)
    by_id = {r.id: r for r in list(records) + list(valid_records)}
    targets = [rng.choice(records) for _ in range(args.refit_wt)]
    prompts = []
    for r in targets:
        ins = make(draw_kind(rng), r, records, rng, "in")
        prompts.append((ins.instruction, ins.images, ins.pret))
    Y = torch.from_numpy(model.clip.encode_images(targets)).float()
    nat_pos, _ = natural_messages(concepts, args, random.Random(args.seed + 8))
    train_keys = {getattr(r, "concept", "") for r in records}
    keep, Yn = _concept_targets(model, records, [m for m in nat_pos if set(m.concepts) <= train_keys])
    nat_train = [m for m in nat_pos if set(m.concepts) <= train_keys]
    prompts += [(nat_train[k].text, [], False) for k in keep]
    Y = torch.cat([Y, Yn])
    texts = [p[0] if not p[1] else "" for p in prompts]  # the teacher reads messages that carry no sticker
    T_ = torch.from_numpy(model.clip.encode_texts([t or "-" for t in texts])).float()
    has_text = torch.tensor([bool(t) for t in texts])[:, None]
    valid_concepts = {getattr(r, "concept", "") for r in valid_records} - {""}
    if concepts and valid_concepts:
        vc = {k: v for k, v in concepts.items() if k in valid_concepts}
        vmsgs, seen = [], set()
        for m in requests(vc, 4 * len(vc), random.Random(args.seed + 9)):
            if len(m.concepts) == 1 and m.concepts[0] not in seen:
                seen.add(m.concepts[0])
                vmsgs.append(m)
        vkeep, Yv = _concept_targets(model, list(valid_records), vmsgs)
        vmsgs = [vmsgs[k] for k in vkeep]
        vprompts = [(m.text, [], False) for m in vmsgs]
    else:
        vmsgs, vprompts, Yv = [], [], None
    paper = random.Random(args.seed + 10).sample(list(valid_records), min(args.valid_paper, len(valid_records)))
    prng = random.Random(args.seed + 11)
    pprompts = [(make("t2i", r, list(valid_records), prng, "in", pret=True).instruction, [], True) for r in paper]
    layer_list = [int(x) for x in args.layers.split(",") if x.strip()] if args.layers else [model.config.query_layer]
    n_layers = model.llm.config.get_text_config().num_hidden_layers
    states = first_ret_states(model, prompts + vprompts + pprompts, by_id, args.batch_size, layers=True)  # (L+1, N, H)
    n, n_paper = len(prompts), len(pprompts)
    paper_rows = torch.arange(states.shape[1] - n_paper, states.shape[1])
    Yp = torch.from_numpy(model.clip.encode_images(paper)).float() if paper else None
    paper_scores = {}
    if vprompts:
        fit_rows, held_rows, Yh = torch.arange(n), torch.arange(n, n + len(vprompts)), Yv
    else:
        held = torch.arange(n) % 5 == 4
        fit_rows, held_rows, Yh = torch.arange(n)[~held], torch.arange(n)[held], Y[held]

    def mr(W, H, Y_=None):
        Y_ = Yh if Y_ is None else Y_
        return recall_from_ranks(paired_ranks(F.normalize(H @ W, dim=-1).numpy(), Y_.numpy()))["MR"]

    def target(w):
        return F.normalize(torch.where(has_text, (1 - w) * Y + w * T_, Y), dim=-1)[fit_rows]

    weights = [float(x) for x in args.distill.split(",") if x.strip()] or [0.0]
    scores = {}
    with torch.no_grad():
        for layer in layer_list:
            H = states[layer if layer else n_layers]
            scale = float((H[fit_rows] ** 2).sum(1).mean())
            for c in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
                for w in weights:
                    W = ridge_fit(H[fit_rows], target(w), c * scale)
                    scores[(layer, c, w)] = mr(W, H[held_rows])
                    if paper:
                        paper_scores[(layer, c, w)] = mr(W, H[paper_rows], Yp)
        layer, c, w = max(scores, key=scores.get)
        H = states[layer if layer else n_layers]
        scale = float((H[fit_rows] ** 2).sum(1).mean())
        W = ridge_fit(H[fit_rows], target(w), c * scale)
    ridge_mr = scores[(layer, c, w)]
    W, best_mr, epoch = _contrastive(W, H[fit_rows], target(w), lambda W_: mr(W_, H[held_rows]), ridge_mr,
                                     args.contrastive_epochs, float(model.logit_scale.detach().exp().clamp(max=100)))
    with torch.no_grad():
        model.config.query_layer = layer
        model.w_t.weight.copy_(W.T.to(model.w_t.weight.dtype).to(model.w_t.weight.device))
    res = {"examples": n, "natural": len(keep), "held_out": len(held_rows), "query_layer": layer, "penalty": c,
           "distill": w, "ridge_held_out_mr": ridge_mr, "held_out_mr": best_mr, "contrastive_epochs": epoch,
           "held_out_mr_by_layer": {str(k): max(v for (l2, _, _), v in scores.items() if l2 == k) for k in layer_list},
           "held_out_mr_by_distill": {f"{k:g}": max(v for (_, _, w2), v in scores.items() if w2 == k) for k in weights},
           "seconds": round(time.time() - t0)}
    if vmsgs:
        clip_q = model.clip.encode_texts([m.text for m in vmsgs])
        res["stickerclip_text_mr"] = recall_from_ranks(paired_ranks(clip_q, Yh.numpy()))["MR"]
    if paper:  # Table 5's T2I on held-out concepts: the chosen fit, the best any fit reached, StickerCLIP's own
        ref = recall_from_ranks(paired_ranks(model.clip.encode_texts([build_text(r) for r in paper]), Yp.numpy()))["MR"]
        with torch.no_grad():
            chosen = mr(W, H[paper_rows], Yp)
        res["paper_t2i"] = {"n": n_paper, "chosen_mr": chosen, "stickerclip_mr": ref,
                            "chosen_ratio": round(chosen / max(ref, 1e-9), 3),
                            "best_mr_by_layer": {str(k): max(v for (l2, _, _), v in paper_scores.items() if l2 == k)
                                                 for k in layer_list},
                            "best_ratio": round(max(paper_scores.values()) / max(ref, 1e-9), 3)}
        log(f"Table 5 T2I on {n_paper} held-out instructions: the chosen fit {chosen}, StickerCLIP {ref} "
            f"(ratio {res['paper_t2i']['chosen_ratio']}); the best of every fit tried: ratio {res['paper_t2i']['best_ratio']}")
    log(f"W_t refit on {n} first-position <ret> states ({len(keep)} natural): held-out MR by layer "
        f"{res['held_out_mr_by_layer']}, by distillation weight {res['held_out_mr_by_distill']} -> layer {layer}, "
        f"penalty {c}, weight {w}: {ridge_mr}; contrastive: {best_mr} (epoch {epoch}) "
        f"(StickerCLIP text {res.get('stickerclip_text_mr')})")
    return res


def main(argv=None) -> dict:
    args = parse_args(argv)
    from stickerllm.model import load

    if 0 < args.pret_row < 5 or args.pret_row < 0:
        raise SystemExit(f"--pret-row {args.pret_row}: at least 5 messages of each kind (a fifth is held out), or 0")
    if args.valid_paper and not (args.refit_wt and args.valid_split):
        raise SystemExit("--valid-paper scores W_t fits: it needs --refit-wt and a --valid-split")
    records = read_split(args.data, args.split, log, keep_usable=True)
    if len(records) < 2:
        raise SystemExit(f"{args.data}: need at least 2 usable records of split {args.split!r}")
    model = load(args.model, device=args.device)
    model.eval()
    concepts = None
    where = Path(args.data) / "concepts.json" if args.concepts is None else (Path(args.concepts) if args.concepts else None)
    if where is not None and where.is_file():
        from train.natural import load_concepts

        concepts = load_concepts(where)
    elif args.concepts:
        raise SystemExit(f"{args.concepts}: no concepts.json")
    valid = read_split(args.data, args.valid_split, lambda m: None, keep_usable=True) \
        if args.refit_wt and args.valid_split else []
    if args.valid_paper and not valid:
        raise SystemExit(f"--valid-paper: {args.data} has no usable records of split {args.valid_split!r}")
    res = {}
    if args.pret_row:
        res["pret_row"] = model.config.extra["refit_pret_row"] = refit_pret_row(model, records, args, concepts)
    if not args.skip_row:
        res.update(refit(model, records, args, concepts))
        model.config.extra["refit_decision"] = {k: v for k, v in res.items() if k != "pret_row"}
        model.config.ret_first = True  # the decision is fit at the first answer position: the chat takes <ret> only there
    if args.refit_wt:
        res["refit_w_t"] = model.config.extra["refit_w_t_first_ret"] = refit_w_t_first_ret(model, records, args,
                                                                                        concepts, valid)
    model.save(args.out)
    print(json.dumps(res, ensure_ascii=False))
    return res


if __name__ == "__main__":
    main()
