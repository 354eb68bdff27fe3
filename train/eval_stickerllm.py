"""Evaluate StickerLLM as the paper does (Tables 4 and 5), printing one JSON object.

    python -m train.eval_stickerllm --model assets/stickerllm --data /tmp/open --split test

- tool selection (Table 4): (a) general instructions (the held-out part of
  train/data/general_instructions.jsonl): share of replies with no `<ret>`; (b) in-domain
  instructions, no prefix; (c) out-of-domain (held-out templates), no prefix; (d) in-domain with
  `<pret>`; (e) out-of-domain with `<pret>`: share of replies with `<ret>`. Greedy decoding.
- retrieval (Table 5): T2I and I2I R@1/5/10/MR over the split's stickers (the query is the `<ret>`
  state of a greedy reply to an in-domain instruction with `<pret>`), next to StickerCLIP's own T2I
  on the same stickers and texts, and their MR ratio.
- general answers unchanged: share of general instructions (no prefix) whose greedy reply is
  identical to the frozen LLM's own (`generate`).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np

from stickerclip.data import build_text, read_records
from stickerclip.metrics import paired_ranks, recall_from_ranks
from train.build_instructions import draw_kind, general_instructions, make
from train.eval_stickerclip import usable


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="StickerLLM adapter directory")
    ap.add_argument("--data", required=True, help="sticker records (corpus dir or manifest)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--llm", default=None, help="override the adapter's base LLM")
    ap.add_argument("--clip", default=None, help="override the adapter's StickerCLIP")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n-retrieval", type=int, default=None, help="stickers for T2I / I2I (default: all)")
    ap.add_argument("--n-tool", type=int, default=200, help="instructions per condition (b)-(e)")
    ap.add_argument("--n-general", type=int, default=None, help="general instructions (default: all held out)")
    ap.add_argument("--tool-tokens", type=int, default=32, help="max new tokens when looking for <ret>")
    ap.add_argument("--general-tokens", type=int, default=48, help="max new tokens of general replies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: tool, retrieval, general")
    return ap.parse_args(argv)


def _stop_ids(model):
    return model.builder.format.stop_ids


def _prompts(model, items, records_by_id, pret_of=None):
    """(sequences, image features) for (instruction, image ids, pret) triples."""
    encs, feats = [], []
    for text, image_ids, pret in items:
        encs.append(model.builder.encode([{"role": "user", "content": text, "images": len(image_ids)}], pret=pret))
        feats.append(model.encode_images([records_by_id[i] for i in image_ids]) if image_ids else None)
    return encs, feats


def _batched(model, encs, feats, batch_size: int, **kw) -> list[dict]:
    from stickerllm.chat import greedy_batch

    out = []
    for i in range(0, len(encs), batch_size):
        out += greedy_batch(model, encs[i:i + batch_size], feats[i:i + batch_size], stop_ids=_stop_ids(model), **kw)
    return out


def queries(model, records, kind: str, seed: int = 0, batch_size: int = 16) -> tuple[np.ndarray, float]:
    """(N, d) `<ret>` queries for in-domain `kind` instructions with `<pret>` (greedy replies; a reply
    without `<ret>` gets one appended), and the share where the model emitted `<ret>` itself."""
    rng = random.Random(seed)
    by_id = {r.id: r for r in records}
    items = []
    for r in records:
        ins = make(kind, r, records, rng, "in", pret=True)
        items.append((ins.instruction, [r.id] if kind == "i2i" else [], True))
    encs, feats = _prompts(model, items, by_id)
    res = _batched(model, encs, feats, batch_size, max_new_tokens=16, force_ret=True)
    return np.stack([r["query"] for r in res]), sum(r["ret"] for r in res) / max(1, len(res))


def t2i_recall(model, records, seed: int = 0) -> dict:
    """StickerLLM T2I recall over `records` (used for validation during training)."""
    img = model.clip.encode_images(records)
    q, _ = queries(model, records, "t2i", seed)
    return recall_from_ranks(paired_ranks(q, img))


def tool_selection(model, records, n: int, max_new_tokens: int, seed: int = 0, batch_size: int = 16) -> dict:
    """Table 4 (b)-(e): share of retrieval instructions (the paper's mix of kinds) answered with `<ret>`."""
    out = {}
    by_id = {r.id: r for r in records}
    for name, domain, pret in (("b", "in", False), ("c", "out", False), ("d", "in", True), ("e", "out", True)):
        rng = random.Random(f"{seed}-{name}")
        items = []
        for _ in range(n):
            ins = make(draw_kind(rng), rng.choice(records), records, rng, domain, pret=pret)
            items.append((ins.instruction, ins.images, pret))
        encs, feats = _prompts(model, items, by_id)
        res = _batched(model, encs, feats, batch_size, max_new_tokens=max_new_tokens)
        hits = sum(r["ret"] for r in res)
        out[name] = {"accuracy": round(100.0 * hits / max(1, n), 2), "n": n, "domain": domain, "prefix": pret}
    return out


def general(model, rows, max_new_tokens: int, batch_size: int = 16) -> dict:
    """Table 4 (a) and answers unchanged: greedy replies to general instructions with StickerLLM and
    with the frozen LLM's own `generate` (the same left-padded batches), token for token."""
    import torch

    encs, feats = _prompts(model, [(r["instruction"], [], False) for r in rows], {})
    mine = _batched(model, encs, feats, batch_size, max_new_tokens=max_new_tokens)
    stop = set(_stop_ids(model))
    base = []
    for i in range(0, len(encs), batch_size):
        chunk = encs[i:i + batch_size]
        T = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), T), model.builder.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, e in enumerate(chunk):
            ids[j, T - len(e):] = torch.tensor(e.ids)
            mask[j, T - len(e):] = 1
        with torch.inference_mode():
            out = model.llm.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                     max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stop),
                                     pad_token_id=model.builder.pad_id)
        for row in out[:, T:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stop), len(row))
            base.append(row[:cut])
    no_ret = sum(not m["ret"] for m in mine)
    same = sum((not m["ret"]) and m["tokens"] == b for m, b in zip(mine, base))
    differing = [{"id": r["id"], "ret": m["ret"],
                  "stickerllm": model.tokenizer.decode(m["tokens"], skip_special_tokens=True),
                  "base": model.tokenizer.decode(b, skip_special_tokens=True)}
                 for r, m, b in zip(rows, mine, base) if m["ret"] or m["tokens"] != b][:5]
    n = max(1, len(rows))
    return {"a": {"accuracy": round(100.0 * no_ret / n, 2), "n": len(rows)},
            "unchanged": {"identical": round(100.0 * same / n, 2), "n": len(rows), "differing": differing}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from stickerllm.model import load

    t0 = time.time()
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    errors = []
    records = list(read_records(args.data, split=args.split, on_error=errors.append))
    for e in errors:
        print(f"skipped record: {e}", file=sys.stderr)
    records = usable(records)
    if not records:
        raise SystemExit(f"{args.data}: no usable records")
    model = load(args.model, llm=args.llm, clip=args.clip, device=args.device)
    result = {"model": str(args.model), "data": str(args.data), "split": args.split}
    if "tool" not in skip:
        result["tool_selection"] = tool_selection(model, records, args.n_tool, args.tool_tokens, args.seed,
                                                  args.batch_size)
    if "general" not in skip:
        rows = general_instructions(part="eval")[:args.n_general]
        g = general(model, rows, args.general_tokens, args.batch_size)
        result.setdefault("tool_selection", {})["a"] = g["a"]
        result["general_unchanged"] = g["unchanged"]
    if "retrieval" not in skip:
        rec = records[:args.n_retrieval]
        img = model.clip.encode_images(rec)
        q_t, own_t = queries(model, rec, "t2i", args.seed, args.batch_size)
        q_i, own_i = queries(model, rec, "i2i", args.seed, args.batch_size)
        clip_t = model.clip.encode_texts([build_text(r) for r in rec])
        t2i = recall_from_ranks(paired_ranks(q_t, img))
        ref = recall_from_ranks(paired_ranks(clip_t, img))
        result["retrieval"] = {"t2i": t2i, "i2i": recall_from_ranks(paired_ranks(q_i, img)),
                               "stickerclip_t2i": ref, "t2i_mr_ratio": round(t2i["MR"] / max(ref["MR"], 1e-9), 3),
                               "emitted_ret": {"t2i": round(100 * own_t, 2), "i2i": round(100 * own_i, 2)},
                               "n": len(rec)}
    if "tool_selection" in result:
        result["tool_selection"] = dict(sorted(result["tool_selection"].items()))
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
