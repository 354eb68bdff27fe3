"""CPU benchmark of StickerLLM's streaming chat against plain `generate`, same LLM, same run.

    python -m bench.bench_llm_cpu [--adapter assets/stickerllm] [--tokens 64] [--repeats 3]
    python -m bench.bench_llm_cpu --tiny --tokens 8 --repeats 1        # smoke test

Both generate exactly `--tokens` tokens greedily from the same prompt ids (turn ends banned):
baseline `llm.generate` (with a streamer to time its first token), ours `StickerChat.chat_stream`
(time to its first text chunk). Reported: time to first token, decode tokens/s (after the first
token) and their ratio ours / baseline, medians over `--repeats` alternating runs. Then the added
latency of a retrieval on the default gallery: `<ret>` state -> W_t query -> index search (top 8),
median of 50, next to one decode step (the forced `</ret>`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

PROMPT = "请用三句话介绍一下长城。"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", default=None, help="StickerLLM adapter (default: assets/stickerllm if present)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="tiny random models (smoke test)")
    return ap.parse_args(argv)


def build(args):
    """(StickerLLM, sticker index)."""
    if args.tiny:
        from stickerclip.data import StickerRecord
        from stickerclip.index import StickerIndex
        from stickerclip.model import StickerCLIP, named_config
        from stickerllm.model import StickerLLM, StickerLLMConfig
        from devkit.imagegen import png_bytes
        from devkit.tinymodels import tiny_llm

        torch.manual_seed(0)
        clip = StickerCLIP(named_config("tiny")).eval()
        llm, tok = tiny_llm("gemma")
        model = StickerLLM(llm, tok, StickerLLMConfig(llm="tiny", clip="tiny"), clip=clip)
        d = tempfile.mkdtemp(prefix="bench-llm-")
        recs = []
        for i in range(20):
            p = f"{d}/{i}.png"
            with open(p, "wb") as f:
                f.write(png_bytes(color=(i * 12, 255 - i * 12, 80)))
            recs.append(StickerRecord(id=str(i), image=p, description=f"sticker {i}"))
        index = StickerIndex.open(f"{d}/index", clip, ocr=False)
        index.add(recs, ocr=False)
        return model, index
    from pathlib import Path

    from stickerclip.gallery import default_index
    from stickerclip.llm import EMBEDDED_LLM
    from stickerclip.model import DEFAULT_MODEL
    from stickerllm.model import create, load

    adapter = args.adapter or ("assets/stickerllm" if Path("assets/stickerllm/config.json").is_file() else None)
    model = load(adapter) if adapter else create(EMBEDDED_LLM, str(DEFAULT_MODEL))
    return model, default_index(model.clip)


class _FirstToken:
    """A `generate` streamer that records when the first new token arrives."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self):
        pass


@torch.inference_mode()
def run_generate(model, enc, n, stop_ids):
    """Plain `generate` on the prompt's input embeddings (the few-shot preamble holds the adapter's
    `<ret></ret>` rows, which are not in the frozen LLM's vocabulary)."""
    t = lambda xs: torch.tensor([xs])  # noqa: E731
    embeds = model.embed(t(enc.ids), t(enc.special), t(enc.slot))
    streamer = _FirstToken()
    t0 = time.perf_counter()
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=list(stop_ids),
                             pad_token_id=model.builder.pad_id, streamer=streamer)
    t1 = time.perf_counter()
    assert out.shape[1] == n  # with inputs_embeds, only the new tokens
    return streamer.first - t0, (n - 1) / (t1 - streamer.first)


def run_chat(chat, n):
    from stickerllm.chat import ChatSettings, Done, TextChunk

    s = ChatSettings(temperature=0.0, max_new_tokens=n, min_new_tokens=n)
    t0 = time.perf_counter()
    first, done = None, None
    for ev in chat.chat_stream(PROMPT, settings=s):
        if isinstance(ev, TextChunk) and first is None:
            first = time.perf_counter()
        if isinstance(ev, Done):
            done = ev
    t1 = time.perf_counter()
    if done.tokens != n:
        raise RuntimeError(f"chat generated {done.tokens} tokens, expected {n} (a retrieval happened?)")
    return first - t0, (n - 1) / (t1 - first)


def retrieval_latency(model, index, k=8, runs=50):
    """Median ms of W_t query + index search, and of one decode step."""
    from stickerllm.decoding import DynamicDecoder
    from stickerllm.tokens import END_RET

    hs = torch.randn(runs, model.config.hidden_size)
    times = []
    with torch.inference_mode():
        for h in hs:
            t0 = time.perf_counter()
            q = model.query(h[None])[0].numpy()
            index.search(query_vectors=(q, None), k=k)
            times.append((time.perf_counter() - t0) * 1000)
        chat_dec = DynamicDecoder(model)
        enc = model.builder.encode([{"role": "user", "content": PROMPT}])
        t = lambda xs: torch.tensor([xs])  # noqa: E731
        chat_dec.start(model.embed(t(enc.ids), t(enc.special), t(enc.slot)))
        steps = []
        for _ in range(10):
            t0 = time.perf_counter()
            chat_dec.step(model.specials.end_ret, END_RET)
            steps.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), statistics.median(steps)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from stickerllm.chat import StickerChat

    model, index = build(args)
    chat = StickerChat(model, index)
    enc, _, _ = chat.encode(PROMPT)
    run_generate(model, enc, 4, chat._stop_ids)  # warm-up
    run_chat(chat, 4)
    base, ours = [], []
    for _ in range(args.repeats):
        base.append(run_generate(model, enc, args.tokens, chat._stop_ids))
        ours.append(run_chat(chat, args.tokens))
    med = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
    search_ms, step_ms = retrieval_latency(model, index)
    res = {
        "tokens": args.tokens, "prompt_tokens": len(enc), "threads": args.threads, "index": len(index),
        "generate": {"ttft_ms": round(med(base, 0) * 1000, 1), "tokens_per_s": round(med(base, 1), 2)},
        "chat_stream": {"ttft_ms": round(med(ours, 0) * 1000, 1), "tokens_per_s": round(med(ours, 1), 2)},
        "retrieval_ms": round(search_ms, 2), "decode_step_ms": round(step_ms, 2),
    }
    res["ratio_tokens_per_s"] = round(res["chat_stream"]["tokens_per_s"] / res["generate"]["tokens_per_s"], 3)
    print("| | time to first token (ms) | decode tokens/s |")
    print("|---|---|---|")
    for name in ("generate", "chat_stream"):
        print(f"| {name} | {res[name]['ttft_ms']} | {res[name]['tokens_per_s']} |")
    print(f"ratio chat_stream / generate tokens/s: {res['ratio_tokens_per_s']}")
    print(f"retrieval (W_t + search top 8 of {len(index)}): {res['retrieval_ms']} ms; one decode step "
          f"(the forced </ret>): {res['decode_step_ms']} ms")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
