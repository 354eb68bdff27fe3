"""Evaluate StickerLLM as the paper does (Tables 4 and 5), printing one JSON object.

    python -m train.eval_stickerllm --model assets/stickerllm --data /tmp/open --split test

- tool selection (Table 4): (a) general instructions (the held-out part of
  train/data/general_instructions.jsonl): share of replies with no `<ret>`; (b) in-domain
  instructions, no prefix; (c) out-of-domain (held-out templates), no prefix; (d) in-domain with
  `<pret>`; (e) out-of-domain with `<pret>`: share of replies with `<ret>`. Greedy decoding.
- retrieval (Table 5): T2I and I2I R@1/5/10/MR over the split's stickers (the query is the `<ret>`
  state of a greedy reply to an in-domain instruction with `<pret>`), next to StickerCLIP's own T2I
  on the same stickers and texts, and their MR ratio; and the chat's own query on the same
  instructions (`chat_t2i`: the `<ret>` query mixed with StickerCLIP's reading of the message,
  `stickerllm.chat.mix_message`, by `--message-mix` or the app's) with its ratio.
- general answers unchanged: share of general instructions (no prefix) whose greedy reply is
  identical to the frozen LLM's own (`generate`).
- natural prompts (train/data/natural_eval.jsonl, written by hand, never trained on: half sticker
  requests, half not, zh and en): full chat replies through `StickerChat` with the app's default
  settings, greedy and sampled (`--natural-temps`), searching the app's gallery (`--gallery`).
  Tool selection (requests that retrieve, others that do not); relevance (the share of the top 4
  stickers whose words, i.e. description, caption and emotion labels, carry a word the request asks
  for); replies (no token 3-gram more than twice; letters only in the user's scripts); and the
  first replies verbatim. `--prompt` and `--no-guards` measure an older recipe as a baseline row.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace

import numpy as np

from stickerclip.data import build_text
from stickerclip.llm import precision
from stickerclip.metrics import paired_recall
from stickerllm.chat import ChatSettings, mix_message
from train.build_instructions import draw_kind, general_instructions, make
from train.common import encode_prompts, greedy_replies, read_split, ret_queries


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="StickerLLM adapter directory")
    ap.add_argument("--data", required=True, help="sticker records (corpus dir or manifest)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--llm", default=None, help="override the adapter's base LLM")
    ap.add_argument("--clip", default=None, help="override the adapter's StickerCLIP")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="the LLM's dtype (auto: as the app, see stickerclip.llm.precision; "
                    "float32, bfloat16; default float32)")
    ap.add_argument("--n-retrieval", type=int, default=None, help="stickers for T2I / I2I (default: all)")
    ap.add_argument("--n-tool", type=int, default=200, help="instructions per condition (b)-(e)")
    ap.add_argument("--n-general", type=int, default=None, help="general instructions (default: all held out)")
    ap.add_argument("--tool-tokens", type=int, default=32, help="max new tokens when looking for <ret>")
    ap.add_argument("--general-tokens", type=int, default=48, help="max new tokens of general replies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: tool, retrieval, general, natural")
    ap.add_argument("--n-natural", type=int, default=None, help="natural prompts (default: all; evenly spaced)")
    ap.add_argument("--natural-temps", default=f"0,{ChatSettings().temperature:g}",
                    help="temperatures of the natural replies (default: greedy and the app's)")
    ap.add_argument("--natural-tokens", type=int, default=64, help="max new tokens of a natural reply (the app's)")
    ap.add_argument("--gallery", default=None, help="gallery folder (all.jsonl) searched by natural prompts "
                                                    "(default: the app's)")
    ap.add_argument("--prompt", default=None, help="override the adapter's prompt style (stickerllm.prompt.STYLES)")
    ap.add_argument("--natural-set", default="eval", help="eval (the held-out natural prompts), valid (40 "
                    "sticker requests for choosing settings), fresh (40 more, read once), decide (64, half not "
                    "requests), decide_fresh (64 more of the same kinds) or a jsonl of the same fields")
    ap.add_argument("--message-mix", type=float, default=None,
                    help="the <ret> query's share of natural replies' retrieval, the rest the user's message "
                         "(ChatSettings.message_mix; 1: the <ret> query only; default: the app's)")
    ap.add_argument("--beta", type=float, default=None,
                    help="weight of stickers' OCR text in natural replies' retrieval (ChatSettings.beta; default: the app's)")
    ap.add_argument("--no-guards", action="store_true", help="natural replies without the decoding guards")
    ap.add_argument("--ret-anywhere", action="store_true",
                    help="natural replies may take <ret> at any position (ChatSettings.ret_first off; the paper's), "
                         "not only as the first token where the adapter says so (StickerLLMConfig.ret_first)")
    ap.add_argument("--sampled-ret", action="store_true",
                    help="at a sampling temperature, <ret> drawn like any token (ChatSettings.greedy_ret off; "
                         "default: the app's, decided greedily)")
    return ap.parse_args(argv)


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
        encs, feats = encode_prompts(model, items, by_id)
        res = greedy_replies(model, encs, feats, batch_size, max_new_tokens=max_new_tokens)
        hits = sum(r["ret"] for r in res)
        out[name] = {"accuracy": round(100.0 * hits / max(1, n), 2), "n": n, "domain": domain, "prefix": pret}
    return out


def general(model, rows, max_new_tokens: int, batch_size: int = 16) -> dict:
    """Table 4 (a) and answers unchanged: greedy replies to general instructions with StickerLLM and
    with the frozen LLM's own `generate` (the same left-padded batches), as shown (up to the end of
    the turn)."""
    encs, feats = encode_prompts(model, [(r["instruction"], [], False) for r in rows], {})
    mine = greedy_replies(model, encs, feats, batch_size, max_new_tokens=max_new_tokens)
    base = []
    for i in range(0, len(encs), batch_size):
        base += model.frozen_generate(encs[i:i + batch_size], max_new_tokens, model.builder.format.stop_ids)
    stop_text = model.builder.format.stop_text

    def said(tokens):  # the reply as shown: up to the end of its turn
        text = model.decode(tokens)
        return text.split(stop_text)[0] if stop_text else text

    no_ret = sum(not m["ret"] for m in mine)
    same = sum((not m["ret"]) and said(m["tokens"]) == said(b) for m, b in zip(mine, base))
    differing = [{"id": r["id"], "ret": m["ret"], "stickerllm": said(m["tokens"]), "base": said(b)}
                 for r, m, b in zip(rows, mine, base) if m["ret"] or said(m["tokens"]) != said(b)][:5]
    n = max(1, len(rows))
    return {"a": {"accuracy": round(100.0 * no_ret / n, 2), "n": len(rows)},
            "unchanged": {"identical": round(100.0 * same / n, 2), "n": len(rows), "differing": differing}}


def sticker_words(hit) -> str:
    """What a gallery sticker is known as, lower case: description, caption, emotion labels."""
    from stickerclip import labels

    parts = [hit.description or "", hit.ocr or ""]
    for e in list(hit.emotions or []) + list(hit.auto_emotions or []):
        try:
            lab = labels.emotion(e)
        except (KeyError, ValueError):
            continue
        parts += [lab.key, lab.zh, lab.en, *lab.aliases]
    return " ".join(parts).lower()


def repeats_ok(model, text: str, most: int = 2) -> bool:
    """No token 3-gram of `text` occurs more than `most` times."""
    ids = model.builder.text(text)
    counts: dict = {}
    for g in zip(ids, ids[1:], ids[2:]):
        counts[g] = counts.get(g, 0) + 1
    return max(counts.values(), default=0) <= most


def script_ok(user: str, reply: str) -> bool:
    """Every letter of `reply` is in a script the user wrote in (Han and Latin when the user wrote
    no letters)."""
    from stickerllm.chat import ScriptTable

    allowed = {ScriptTable._script(c) for c in user if c.isalpha()} or {0, 1}
    return all(ScriptTable._script(c) in allowed for c in reply if c.isalpha())


def natural(model, index, rows, settings, top: int = 4) -> dict:
    """Chat replies to the natural prompts `rows` with `settings`: tool selection, relevance of the
    top `top` stickers, reply checks, and the replies themselves."""
    from stickerllm.chat import Done, Retrieval, StickerChat, TextChunk

    chat = StickerChat(model, index)
    out = []
    for i, r in enumerate(rows):
        text, hits = [], []
        done = None
        for e in chat.chat_stream(r["text"], settings=replace(settings, seed=i)):
            if isinstance(e, TextChunk):
                text.append(e.text)
            elif isinstance(e, Retrieval):
                hits += e.hits
            elif isinstance(e, Done):
                done = e
        reply = "".join(text).strip()
        want = [w.lower() for w in r.get("want") or []]
        fits = [any(w in sticker_words(h) for w in want) for h in hits[:top]]
        out.append({"id": r["id"], "text": r["text"], "sticker": r["sticker"], "reply": reply,
                    "retrieved": done is not None and bool(done.stickers), "fits": fits,
                    "stickers": [(h.description or h.id)[:30] for h in hits[:top]],
                    "repeats_ok": repeats_ok(model, reply), "script_ok": script_ok(r["text"], reply)})
    req = [o for o in out if o["sticker"]]
    other = [o for o in out if not o["sticker"]]
    judged = [f for o in req if o["retrieved"] for f in o["fits"]]
    pct = lambda xs: round(100.0 * sum(xs) / max(1, len(xs)), 2)  # noqa: E731
    return {"requests_retrieve": pct([o["retrieved"] for o in req]), "n_requests": len(req),
            "others_do_not": pct([not o["retrieved"] for o in other]), "n_others": len(other),
            "relevance_top4": pct(judged), "n_judged": len(judged),
            "replies_no_repeats": pct([o["repeats_ok"] for o in out]),
            "replies_in_script": pct([o["script_ok"] for o in out]),
            "missed": [o["text"] for o in req if not o["retrieved"]],
            "retrieved_unasked": [o["text"] for o in other if o["retrieved"]],
            "replies": [{k: o[k] for k in ("text", "reply", "stickers", "fits")} for o in out[:12]]}


def _spread(rows: list, n: int | None) -> list:
    """`n` of `rows`, evenly spaced (all when n is None)."""
    if n is None or n >= len(rows):
        return rows
    return [rows[round(k * (len(rows) - 1) / max(1, n - 1))] for k in range(n)] if n > 1 else rows[:1]


def main(argv=None) -> dict:
    args = parse_args(argv)
    from stickerllm.model import load

    t0 = time.time()
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    records = read_split(args.data, args.split, keep_usable=True)
    if not records:
        raise SystemExit(f"{args.data}: no usable records")
    weights, head = precision(args.dtype, args.device) if args.dtype else (None, None)
    model = load(args.model, llm=args.llm, clip=args.clip, device=args.device, dtype=weights)
    model.set_head_dtype(head)
    if args.prompt:
        model.set_prompt(args.prompt)
    result = {"model": str(args.model), "data": str(args.data), "split": args.split,
              "prompt": model.builder.format.kind, "query_layer": model.config.query_layer}
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
        q_t, own_t, said = ret_queries(model, rec, "t2i", args.seed, args.batch_size, with_texts=True)
        q_i, own_i = ret_queries(model, rec, "i2i", args.seed, args.batch_size)
        clip_t = model.clip.encode_texts([build_text(r) for r in rec])
        t2i = paired_recall(q_t, img)
        ref = paired_recall(clip_t, img)
        # what the chat retrieves with: the query mixed with StickerCLIP's reading of the message
        s = ChatSettings() if args.message_mix is None else ChatSettings(message_mix=args.message_mix)
        chat_t2i = paired_recall(np.stack([mix_message(q, model.clip, m, s) for q, m in zip(q_t, said)]), img)
        result["retrieval"] = {"t2i": t2i, "i2i": paired_recall(q_i, img),
                               "stickerclip_t2i": ref, "t2i_mr_ratio": round(t2i["MR"] / max(ref["MR"], 1e-9), 3),
                               "chat_t2i": {**chat_t2i, "message_mix": s.message_mix},
                               "chat_t2i_mr_ratio": round(chat_t2i["MR"] / max(ref["MR"], 1e-9), 3),
                               "emitted_ret": {"t2i": round(100 * own_t, 2), "i2i": round(100 * own_i, 2)},
                               "n": len(rec)}
    if "natural" not in skip:
        from stickerclip.gallery import GALLERY, default_index
        from train.natural import NATURAL_SETS, natural_eval

        index = default_index(model.clip, args.gallery or GALLERY, log=lambda m: print(m, file=sys.stderr))
        base = ChatSettings(repetition_penalty=1.0, no_repeat_ngram=0, same_script=False) if args.no_guards \
            else ChatSettings()
        rows = _spread(natural_eval(NATURAL_SETS.get(args.natural_set, args.natural_set)), args.n_natural)
        base = replace(base, max_new_tokens=args.natural_tokens)
        if args.message_mix is not None:
            base = replace(base, message_mix=args.message_mix)
        if args.beta is not None:
            base = replace(base, beta=args.beta)
        if args.sampled_ret:
            base = replace(base, greedy_ret=False)
        if args.ret_anywhere:
            base = replace(base, ret_first=False)
        result["natural"] = {f"t{t:g}": natural(model, index, rows, replace(base, temperature=t))
                             for t in (float(x) for x in args.natural_temps.split(",") if x.strip())}
        result["natural"]["guards"] = not args.no_guards
        result["natural"]["message_mix"] = base.message_mix
        result["natural"]["beta"] = base.beta
        result["natural"]["greedy_ret"] = base.greedy_ret
        result["natural"]["ret_first"] = base.takes_ret_first(model)
    if "tool_selection" in result:
        result["tool_selection"] = dict(sorted(result["tool_selection"].items()))
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
