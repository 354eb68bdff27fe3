"""GPU benchmark of StickerLLM on a 6B-class LLM: decoding and training throughput.

    python -m bench.bench_llm_gpu [--tokens 128] [--train-batch 8] [--steps 5]
    python -m bench.bench_llm_gpu --tiny --device cpu --no-compile --tokens 4 --steps 1   # smoke test

The LLM is a GlmForCausalLM (the ChatGLM line) of ChatGLM-6B's size: hidden 4096, 28 layers, 32
heads, vocabulary 130,528, and a gated FFN of 10,923 (the same weight count as ChatGLM-6B's 16,384
GELU FFN; a gated FFN of 16,384 would make it 8.6B); 6.71B parameters, random weights, bf16. The
StickerCLIP is a random ViT-B/16-shaped one (only its image features' size matters here).
- decode, batch 1: tokens/s, the same prompt ids, exactly `--tokens` greedy tokens each (2 warm-up
  runs, then 2 timed), one row per implementation:
  - "transformers bf16 + SDPA" (the baseline the ratios use): plain `generate` (dynamic cache,
    eager PyTorch) on bf16 weights with `set_attn_implementation("sdpa")`: on a GPU the very model
    ours runs, on the CPU a bf16 copy of it. Where SDPA cannot be had it runs the model's attention
    and its label says so.
  - "transformers fp32 (reference)": the same `generate` on fp32 weights with transformers' default
    attention (SDPA in 5.23): on a GPU an fp32 copy of the model (26.8 GB more while it runs, freed
    afterwards), on the CPU the model itself.
  - StickerChat with a StaticDecoder (static KV cache, eager; then torch.compile "reduce-overhead",
    i.e. CUDA graphs, unless `--no-compile`) on the model's own weights (bf16 on a GPU, fp32 on
    the CPU), its attention as the model resolved it (SDPA).
  `ratio` = best of ours / bf16 + SDPA (target >= 3); `ratio_vs_fp32` = best of ours / fp32
  reference. A variant that fails is reported with its error and the rest still run. (Before the
  two named baselines, the one baseline was `generate` on the model's own weights with the default
  attention, JSON key `generate`: on a GPU that was already bf16 + SDPA, on the CPU fp32 + SDPA.)
- batched decode: total tokens/s of 1, 4, 16, 64 (`--sessions`) concurrent replies decoded
  together by StickerChat's BatchDecoder (continuous batching, dynamic cache, eager), `--tokens`
  each; the ratio 16 sessions / 1 (target >= 8).
- training: samples/s of the frozen-LLM StickerLLM step (LM + contrastive loss, backward into the
  new rows, W_t and W_c only, AdamW) at `--train-batch` examples, bf16 autocast; peak memory. No
  transformers baseline: plain transformers has no such step.
Prints a table and one JSON line: {"device", "llm_params_b", "labels" and "attention" (each decode
row's label and the attention it ran), "decode_tokens_per_s": {"generate_bf16_sdpa", "generate_fp32",
"stickerllm_static_eager", "stickerllm_static_compiled", each with "_warmup_s" or "_error", "ratio",
"ratio_vs_fp32"}, "train"}.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time

import torch

CHATGLM_6B = dict(vocab_size=130528, hidden_size=4096, intermediate_size=10923, num_hidden_layers=28,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=2048,
                  pad_token_id=0, eos_token_id=2)
TINY = dict(vocab_size=21200, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, head_dim=16, max_position_embeddings=512, pad_token_id=0, eos_token_id=2)
BF16_SDPA = "transformers bf16 + SDPA"
FP32 = "transformers fp32 (reference)"
PROMPT = "请写一段关于秋天的短文，描写落叶、天空和远处的山。"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--sessions", default="1,4,16,64", help="batched decode: concurrent replies to time")
    return ap.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(args, device):
    from transformers import AutoModelForCausalLM, GlmConfig

    from stickerclip.model import StickerCLIP, bert_tokenizer, named_config
    from stickerllm.model import StickerLLM, StickerLLMConfig

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    cfg = GlmConfig(**(TINY if args.tiny else CHATGLM_6B))
    with device:
        llm = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    llm.requires_grad_(False)
    clip = StickerCLIP(named_config("tiny" if args.tiny else "ViT-B-16")).to(device).eval()
    model = StickerLLM(llm, bert_tokenizer(), StickerLLMConfig(llm="random ChatGLM-6B shape", clip="random"),
                       clip=clip)
    return model.to(device)


@contextlib.contextmanager
def plain_llm(model, dtype, sdpa: bool):
    """The StickerLLM's causal LM as plain transformers in `dtype`: the model itself where it has that
    dtype, else a copy cast to it (freed afterwards). With `sdpa`, its attention set to SDPA for the
    while (restored afterwards). Yields (llm, attention it runs, note for the label)."""
    own = model.llm.dtype == dtype
    llm = model.llm if own else copy.deepcopy(model.llm).to(dtype)
    before, note = llm.config._attn_implementation, ""
    if sdpa and before != "sdpa":
        try:
            llm.set_attn_implementation("sdpa")
        except (ValueError, ImportError) as e:  # not available for this model / torch: run what it has
            note = f" (SDPA unavailable: {type(e).__name__})"
    try:
        yield llm, str(llm.config._attn_implementation), note
    finally:
        if own and llm.config._attn_implementation != before:
            llm.set_attn_implementation(before)
        del llm
        if model.llm.device.type == "cuda":
            torch.cuda.empty_cache()


def decode(model, args, device, labels: dict, attention: dict):
    """Batch-1 decode tokens/s of each variant (see the module docstring); fills `labels` and
    `attention` by variant."""
    from stickerllm.chat import ChatSettings, StickerChat
    from stickerllm.decoding import StaticDecoder

    n = args.tokens
    plain_chat = StickerChat(model)
    enc, _, _ = plain_chat.encode(PROMPT)
    inp = torch.tensor([enc.ids], device=device)

    @contextlib.contextmanager
    def plain(name, dtype, sdpa):
        with plain_llm(model, dtype, sdpa) as (llm, attn, note):
            attention[name] = attn
            if sdpa:
                labels[name] = BF16_SDPA if attn == "sdpa" and not note else f"transformers bf16 + {attn}{note}"
            else:
                labels[name] = FP32

            def run():
                with torch.inference_mode():
                    out = llm.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, pad_token_id=0)
                assert out.shape[1] - inp.shape[1] == n
            yield run

    s = ChatSettings(temperature=0.0, max_new_tokens=n, min_new_tokens=n)
    own = "bf16" if model.llm.dtype == torch.bfloat16 else str(model.llm.dtype).removeprefix("torch.")

    @contextlib.contextmanager
    def ours(name, compile):
        attention[name] = str(model.llm.config._attn_implementation)
        labels[name] = (f"StickerLLM static cache{' + compile' if compile else ', eager'} "
                        f"({own}, {attention[name]})")
        chat = StickerChat(model, decoder=StaticDecoder(model, max_len=len(enc) + n + 8, compile=compile))

        def run():
            done = list(chat.chat_stream(PROMPT, settings=s))[-1]
            assert done.tokens == n, done
        yield run

    variants = [("generate_bf16_sdpa", lambda: plain("generate_bf16_sdpa", torch.bfloat16, True)),
                ("generate_fp32", lambda: plain("generate_fp32", torch.float32, False)),
                ("stickerllm_static_eager", lambda: ours("stickerllm_static_eager", False))]
    if not args.no_compile:
        variants.append(("stickerllm_static_compiled", lambda: ours("stickerllm_static_compiled", True)))
    out = {}
    for name, setup in variants:
        try:
            with setup() as fn:
                t0 = time.perf_counter()
                fn()
                fn()  # warm-up (and compilation / graph capture)
                _sync(device)
                warm = time.perf_counter() - t0
                t0 = time.perf_counter()
                reps = 2
                for _ in range(reps):
                    fn()
                _sync(device)
                out[name] = round(n * reps / (time.perf_counter() - t0), 2)
            out[name + "_warmup_s"] = round(warm, 1)
            print(f"{labels.get(name, name)}: {out[name]} tokens/s (warm-up {warm:.1f} s)", flush=True)
        except Exception as e:  # a failing variant is reported, the others still run
            out[name] = None
            out[name + "_error"] = f"{type(e).__name__}: {e}"[:500]
    best = out.get("stickerllm_static_compiled") or out.get("stickerllm_static_eager")
    for key, base in (("ratio", "generate_bf16_sdpa"), ("ratio_vs_fp32", "generate_fp32")):
        out[key] = round(best / out[base], 2) if best and out.get(base) else None
    return out


def batched(model, args, device) -> dict:
    """Batched decode: total tokens/s of N concurrent replies (`StickerChat.chat_stream` from N
    threads; continuous batching in one BatchDecoder with `max_batch` N, dynamic KV cache, eager),
    exactly `--tokens` greedy tokens each, for each N of `--sessions`; one warm-up round first."""
    import threading

    from stickerllm.chat import ChatSettings, StickerChat

    n = args.tokens
    s = ChatSettings(temperature=0.0, max_new_tokens=n, min_new_tokens=n)
    out = {}
    for k in [int(x) for x in args.sessions.split(",") if x.strip()]:
        chat = StickerChat(model, max_batch=k)
        made = []

        def one(i):
            made.append(list(chat.chat_stream(f"{PROMPT}（{i}）", settings=s))[-1].tokens)

        def round_of_k():
            threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        try:
            round_of_k()  # warm-up
            made.clear()
            _sync(device)
            t0 = time.perf_counter()
            round_of_k()
            _sync(device)
            assert made == [n] * k, made
            out[str(k)] = round(k * n / (time.perf_counter() - t0), 2)
            out[f"{k}_mean_batch"] = round(chat.batcher.row_steps / max(1, chat.batcher.steps), 2)
            print(f"batched decode, {k} sessions: {out[str(k)]} tokens/s", flush=True)
        except Exception as e:
            out[str(k)] = None
            out[f"{k}_error"] = f"{type(e).__name__}: {e}"[:500]
    if out.get("1") and out.get("16"):
        out["ratio_16_vs_1"] = round(out["16"] / out["1"], 2)
    return out


def train(model, args, device):
    import torch.nn.functional as F

    exs, feats = [], []
    for i in range(args.train_batch):
        msg = {"role": "user", "content": f"帮我找一个表情包：一只在雨中哭泣的小猫，伤心，可爱风格，第{i}张",
               "images": 1 if i % 2 else 0}
        exs.append(model.builder.encode_answer([msg], "好的，给你找到这些表情包：<ret></ret>", pret=i % 2 == 0))
        feats.append(F.normalize(torch.randn(1, model.config.clip_dim), dim=-1) if i % 2 else None)
    batch = model.batch(exs, feats)
    targets = F.normalize(torch.randn(len(exs), model.config.clip_dim), dim=-1)
    params = list(model.trainable().values())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    # the adapter trains in fp32 while the frozen LLM runs in bf16
    model.train()

    def step():
        with amp:
            loss = model.loss(batch, targets)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    model.eval()
    res = {"samples_per_s": round(args.train_batch * args.steps / dt, 2), "batch": args.train_batch,
           "seq_len": int(batch["ids"].shape[1])}
    if device.type == "cuda":
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return res


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    model = build(args, device)
    if device.type == "cuda":
        # keep the adapter in fp32 (its optimizer state too); the LLM stays bf16
        for p in model.trainable().values():
            p.data = p.data.float()
    params = sum(p.numel() for p in model.llm.parameters())
    labels, attention = {}, {}
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "llm_params_b": round(params / 1e9, 2), "labels": labels, "attention": attention,
           "decode_tokens_per_s": decode(model, args, device, labels, attention)}
    res["batched_tokens_per_s"] = batched(model, args, device)
    try:
        res["train"] = train(model, args, device)
    except Exception as e:
        res["train"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    d = res["decode_tokens_per_s"]
    print("| | tokens/s (batch 1) |")
    print("|---|---|")
    for key in ("generate_bf16_sdpa", "generate_fp32", "stickerllm_static_eager", "stickerllm_static_compiled"):
        if key in d:
            print(f"| {labels.get(key, key)} | {d[key] if d[key] is not None else d.get(key + '_error')} |")
    print(f"| ratio (best ours / {labels.get('generate_bf16_sdpa', BF16_SDPA)}) | {d['ratio']} |")
    print(f"| ratio (best ours / {FP32}) | {d['ratio_vs_fp32']} |")
    b = res["batched_tokens_per_s"]
    print("| concurrent sessions (batched decode) | tokens/s |")
    print("|---|---|")
    for key in [k for k in b if k.isdigit()]:
        print(f"| {key} | {b[key] if b[key] is not None else b.get(key + '_error')} |")
    print(f"training step: {res['train'].get('samples_per_s')} samples/s at batch {args.train_batch}")
    print(json.dumps(res, ensure_ascii=False))
    return res


if __name__ == "__main__":
    main()
