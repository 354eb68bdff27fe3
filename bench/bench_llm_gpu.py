"""GPU benchmark of StickerLLM on a 6B-class LLM: decoding and training throughput.

    python -m bench.bench_llm_gpu [--tokens 128] [--train-batch 8] [--steps 5]
    python -m bench.bench_llm_gpu --tiny --device cpu --no-compile --tokens 4 --steps 1   # smoke test

The LLM is a GlmForCausalLM (the ChatGLM line) of ChatGLM-6B's size: hidden 4096, 28 layers, 32
heads, vocabulary 130,528, and a gated FFN of 10,923 (the same weight count as ChatGLM-6B's 16,384
GELU FFN; a gated FFN of 16,384 would make it 8.6B); 6.71B parameters, random weights, bf16. The
StickerCLIP is a random ViT-B/16-shaped one (only its image features' size matters here).
- decode, batch 1: tokens/s of plain `generate` (dynamic cache, eager) against StickerChat with a
  StaticDecoder (static KV cache, eager, then torch.compile "reduce-overhead", i.e. CUDA graphs),
  the same prompt, exactly `--tokens` tokens each; ratio best of ours / plain (target >= 3). A
  variant that fails is reported with its error and the rest still run.
- training: samples/s of the frozen-LLM StickerLLM step (LM + contrastive loss, backward into the
  new rows, W_t and W_c only, AdamW) at `--train-batch` examples, bf16 autocast; peak memory.
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

CHATGLM_6B = dict(vocab_size=130528, hidden_size=4096, intermediate_size=10923, num_hidden_layers=28,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=2048,
                  pad_token_id=0, eos_token_id=2)
TINY = dict(vocab_size=21200, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, head_dim=16, max_position_embeddings=512, pad_token_id=0, eos_token_id=2)
PROMPT = "请写一段关于秋天的短文，描写落叶、天空和远处的山。"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
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


def decode(model, args, device):
    from stickerllm.chat import ChatSettings, StickerChat
    from stickerllm.decoding import StaticDecoder

    n = args.tokens
    plain_chat = StickerChat(model)
    enc, _, _ = plain_chat.encode(PROMPT)
    inp = torch.tensor([enc.ids], device=device)

    def plain():
        with torch.inference_mode():
            out = model.llm.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, pad_token_id=0)
        assert out.shape[1] - inp.shape[1] == n

    s = ChatSettings(temperature=0.0, max_new_tokens=n, min_new_tokens=n)

    def ours(compile):
        chat = StickerChat(model, decoder=StaticDecoder(model, max_len=len(enc) + n + 8, compile=compile))

        def run():
            done = list(chat.chat_stream(PROMPT, settings=s))[-1]
            assert done.tokens == n, done
        return run

    variants = [("generate", plain), ("stickerllm_static_eager", ours(False))]
    if not args.no_compile:
        variants.append(("stickerllm_static_compiled", ours(True)))
    out = {}
    for name, fn in variants:
        try:
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
            print(f"{name}: {out[name]} tokens/s (warm-up {warm:.1f} s)", flush=True)
        except Exception as e:  # a failing variant is reported, the others still run
            out[name] = None
            out[name + "_error"] = f"{type(e).__name__}: {e}"[:500]
    best = out.get("stickerllm_static_compiled") or out.get("stickerllm_static_eager")
    out["ratio"] = round(best / out["generate"], 2) if best and out.get("generate") else None
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
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "llm_params_b": round(params / 1e9, 2), "decode_tokens_per_s": decode(model, args, device)}
    try:
        res["train"] = train(model, args, device)
    except Exception as e:
        res["train"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    d = res["decode_tokens_per_s"]
    print("| | tokens/s (batch 1) |")
    print("|---|---|")
    print(f"| plain generate | {d['generate']} |")
    print(f"| StickerLLM static cache, eager | {d.get('stickerllm_static_eager')} |")
    print(f"| StickerLLM static cache + compile | {d.get('stickerllm_static_compiled')} |")
    print(f"| ratio (best / plain) | {d['ratio']} |")
    print(f"training step: {res['train'].get('samples_per_s')} samples/s at batch {args.train_batch}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
