"""GPU benchmark of StickerCLIP ViT-B/16 against plain `transformers` ChineseCLIPModel, same run.

    python -m bench.bench_clip_gpu [--batch 256] [--steps 20] [--warmup 5]
    python -m bench.bench_clip_gpu --tiny --device cpu --steps 2     # smoke test anywhere

Measures (1) training throughput, pairs/s, of `full` mode (every weight trained, AdamW, symmetric
InfoNCE) at batch 256, and (2) image-encoding throughput, images/s. Baseline: ChineseCLIPModel with
default settings (fp32, its default attention, `model(..., return_loss=True)`, torch AdamW).
Ours: the StickerCLIP training path with bf16 autocast, fused AdamW, SDPA attention and
torch.compile; encoding in bf16 with compile. Prints a table with ratios and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from stickerclip.model import StickerCLIP, named_config
from stickerclip.loss import clip_loss


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps, warmup, device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def build(tiny: bool):
    cfg = named_config("tiny" if tiny else "ViT-B-16")
    return cfg


def hf_model(cfg, device):
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    hf_cfg = ChineseCLIPConfig(text_config=cfg.text, vision_config=cfg.vision, projection_dim=cfg.embed_dim)
    return ChineseCLIPModel(hf_cfg).to(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seq", type=int, default=64, help="text length (the paper's context length)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config: a smoke test, not a measurement")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the baseline is plain fp32
    cfg = build(args.tiny)
    b, s = args.batch, cfg.image_size
    pixels = torch.randn(b, 3, s, s, device=device)
    ids = torch.randint(1000, 20000, (b, args.seq), device=device)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    rows = {}

    # ---- baseline: plain transformers, default settings
    hf = hf_model(cfg, device).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=2e-5, weight_decay=1e-2)

    def hf_step():
        out = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows["train plain"] = b / timed(hf_step, args.steps, args.warmup, device)
    hf.eval()

    def hf_encode():
        with torch.inference_mode():
            hf.get_image_features(pixel_values=pixels)

    rows["encode plain"] = b / timed(hf_encode, args.steps, args.warmup, device)
    del hf, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # ---- ours: StickerCLIP training path
    cfg.vision["attn_implementation"] = "sdpa"
    ours = StickerCLIP(cfg).to(device).train()
    counts = [1] * b
    fwd = ours if args.no_compile else torch.compile(ours)
    opt = torch.optim.AdamW(ours.parameters(), lr=2e-5, weight_decay=1e-2, fused=device.type == "cuda")

    def our_step():
        with autocast:
            img, txt, scale = fwd(pixels, counts, input_ids=ids, attention_mask=mask)
        loss = clip_loss(img.float(), txt.float(), scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows["train ours"] = b / timed(our_step, args.steps, args.warmup, device)
    ours.eval()
    enc = ours.image_features if args.no_compile else torch.compile(ours.image_features)

    def our_encode():
        with torch.inference_mode(), autocast:
            enc(pixels)

    rows["encode ours"] = b / timed(our_encode, args.steps, args.warmup, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; config: {'tiny' if args.tiny else 'ViT-B/16'}; batch {b}")
    print(f"{'what':28s} {'plain':>10s} {'ours':>10s} {'ratio':>6s}")
    result = {"device": name, "batch": b}
    for what, unit in (("train", "pairs/s"), ("encode", "images/s")):
        p, o = rows[f"{what} plain"], rows[f"{what} ours"]
        print(f"{what + ' (' + unit + ')':28s} {p:10.1f} {o:10.1f} {o / p:6.2f}")
        result[what] = {"plain": round(p, 1), "ours": round(o, 1), "ratio": round(o / p, 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
