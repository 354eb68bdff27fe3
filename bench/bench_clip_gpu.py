"""GPU benchmark of StickerCLIP ViT-B/16 against plain `transformers` ChineseCLIPModel, same run.

    python -m bench.bench_clip_gpu [--batch 256] [--steps 20] [--warmup 5]
    python -m bench.bench_clip_gpu --tiny --device cpu --steps 2     # smoke test anywhere

Measures (1) training throughput, pairs/s, of `full` mode (every weight trained, AdamW, symmetric
InfoNCE) at `--batch`, and (2) image-encoding throughput, images/s, at the same batch. The same
random inputs for every row; each row its own freshly initialised model. Rows:

- "transformers fp32 (reference)": ChineseCLIPModel with default settings: fp32 weights and
  compute (TF32 matmuls off on CUDA), the default attention (SDPA in transformers 5.23; the row's
  attention is printed), `model(..., return_loss=True)`, torch AdamW with its defaults; encoding
  with `get_image_features` in fp32 under `torch.inference_mode`.
- "transformers bf16 + SDPA" (the baseline the ratios use): what a competent user writes with the
  same library: ChineseCLIPModel with `attn_implementation="sdpa"`; training with fp32 weights
  under `torch.autocast(bfloat16)` around the forward and loss (backward outside), torch AdamW with
  its defaults; encoding with the weights cast to bf16 (`model.to(torch.bfloat16)`), bf16 pixels,
  `get_image_features` under `torch.inference_mode`. Where SDPA cannot be had, it runs the default
  attention and its label says so.
- "ours": the StickerCLIP training path (SDPA attention, bf16 autocast, the loss in fp32 on the
  features, fused AdamW on CUDA, torch.compile unless `--no-compile`); encoding
  `StickerCLIP.image_features` under bf16 autocast, compiled unless `--no-compile`.

Prints a table (one row per implementation, then "ours / bf16 + SDPA" and "ours / fp32 (reference)")
and one JSON line: {"device", "batch", "labels": {"fp32", "bf16_sdpa", "ours"}, "attention" (the
implementation each row resolved to, same keys), "train": {...}, "encode": {...}}, each measurement
{"fp32", "bf16_sdpa", "ours", "ratio", "ratio_vs_fp32"}: `ratio` = ours / bf16 + SDPA, and
`ratio_vs_fp32` = ours / fp32 reference (what `ratio` meant before the bf16 + SDPA row; the fp32
row's key was `plain`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from stickerclip.model import StickerCLIP, named_config
from stickerclip.loss import clip_loss

FP32 = "transformers fp32 (reference)"
MEASURES = (("train", "pairs/s"), ("encode", "images/s"))


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


def hf_model(cfg, device, attn: str | None = None):
    """A random ChineseCLIPModel of `cfg`'s shape, fp32; `attn` asks for an attention implementation
    (None: transformers' default)."""
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    extra = {} if attn is None else {"attn_implementation": attn}
    hf_cfg = ChineseCLIPConfig(text_config=cfg.text, vision_config=cfg.vision, projection_dim=cfg.embed_dim,
                               **extra)
    return ChineseCLIPModel(hf_cfg).to(device)


def attn_of(model) -> str:
    """The attention implementation a transformers model resolved to, per tower if they differ."""
    impls = {model.text_model.config._attn_implementation, model.vision_model.config._attn_implementation}
    return "/".join(sorted(str(i) for i in impls))


def sdpa_model(cfg, device):
    """(model, label) for the bf16 + SDPA baseline: SDPA if transformers grants it, else the default
    attention, named in the label."""
    try:
        hf = hf_model(cfg, device, attn="sdpa")
    except (ValueError, ImportError) as e:  # SDPA not available for this model / torch
        hf = hf_model(cfg, device)
        return hf, f"transformers bf16 + {attn_of(hf)} (SDPA unavailable: {type(e).__name__})"
    got = attn_of(hf)
    return hf, "transformers bf16 + SDPA" if got == "sdpa" else f"transformers bf16 + {got} (SDPA not granted)"


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
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is plain fp32
    cfg = build(args.tiny)
    b, s = args.batch, cfg.image_size
    pixels = torch.randn(b, 3, s, s, device=device)
    ids = torch.randint(1000, 20000, (b, args.seq), device=device)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    rows = {}  # (implementation key, measure) -> items/s
    labels = {"fp32": FP32}
    attention = {}

    def free():
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- transformers: fp32 reference (default settings), then bf16 + SDPA
    for key in ("fp32", "bf16_sdpa"):
        if key == "fp32":
            hf = hf_model(cfg, device)
        else:
            hf, labels[key] = sdpa_model(cfg, device)
        attention[key] = attn_of(hf)
        amp = autocast if key == "bf16_sdpa" else contextlib.nullcontext()
        hf.train()
        opt = torch.optim.AdamW(hf.parameters(), lr=2e-5, weight_decay=1e-2)

        def hf_step():
            with amp:
                out = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        rows[key, "train"] = b / timed(hf_step, args.steps, args.warmup, device)
        del opt
        hf.eval()
        inputs = pixels
        if key == "bf16_sdpa":  # inference as one would deploy it: bf16 weights and inputs
            hf.to(torch.bfloat16)
            inputs = pixels.to(torch.bfloat16)

        def hf_encode():
            with torch.inference_mode():
                hf.get_image_features(pixel_values=inputs)

        rows[key, "encode"] = b / timed(hf_encode, args.steps, args.warmup, device)
        del hf, inputs
        free()

    # ---- ours: StickerCLIP training path
    cfg.vision["attn_implementation"] = "sdpa"
    ours = StickerCLIP(cfg).to(device).train()
    attention["ours"] = str(ours.vision.config._attn_implementation)
    labels["ours"] = "ours (" + ", ".join(["bf16 autocast", attention["ours"].upper() if attention["ours"] == "sdpa"
                                           else f"{attention['ours']} attention"]
                                          + ["fused AdamW"] * (device.type == "cuda")
                                          + ["compile"] * (not args.no_compile)) + ")"
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

    rows["ours", "train"] = b / timed(our_step, args.steps, args.warmup, device)
    ours.eval()
    enc = ours.image_features if args.no_compile else torch.compile(ours.image_features)

    def our_encode():
        with torch.inference_mode(), autocast:
            enc(pixels)

    rows["ours", "encode"] = b / timed(our_encode, args.steps, args.warmup, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; config: {'tiny' if args.tiny else 'ViT-B/16'}; batch {b}")
    print("attention: " + "; ".join(f"{labels[k]}: {attention[k]}" for k in ("fp32", "bf16_sdpa", "ours")))
    width = max(len(v) for v in labels.values()) + 2
    heads = [f"{what} ({unit})" for what, unit in MEASURES]
    print(f"{'':{width}s}" + "".join(f"{h:>20s}" for h in heads))
    for key in ("fp32", "bf16_sdpa", "ours"):
        print(f"{labels[key]:{width}s}" + "".join(f"{rows[key, what]:20.1f}" for what, _ in MEASURES))
    for text, key in (("ratio ours / bf16 + SDPA", "bf16_sdpa"), ("ratio ours / fp32 (reference)", "fp32")):
        print(f"{text:{width}s}" + "".join(f"{rows['ours', what] / rows[key, what]:20.2f}" for what, _ in MEASURES))
    result = {"device": name, "batch": b, "labels": labels, "attention": attention}
    for what, _ in MEASURES:
        p32, pb, o = rows["fp32", what], rows["bf16_sdpa", what], rows["ours", what]
        result[what] = {"fp32": round(p32, 1), "bf16_sdpa": round(pb, 1), "ours": round(o, 1),
                        "ratio": round(o / pb, 2), "ratio_vs_fp32": round(o / p32, 2)}
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
