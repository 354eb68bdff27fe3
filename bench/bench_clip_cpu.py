"""CPU encode throughput of StickerCLIP: the embedded default and a ViT-B/16-sized random model.

    python -m bench.bench_clip_cpu [--default assets/stickerclip] [--repeat 3] [--threads 2]

Images/s and texts/s at batch 1 and batch 64. For ViT-B/16 the same weights also run through plain
`transformers` ChineseCLIPModel (default settings) in the same process, and the ratio is printed.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from stickerclip.data import build_text, read_jsonl
from stickerclip.model import StickerCLIP, named_config
from stickerclip.factory import load_model

TEXT = "一个黄色圆脸的卡通表情：笑哭了，配文字“哈哈哈”；搞笑，兴奋；可爱卡通；哈哈哈"


def rate(fn, n_items: int, repeat: int) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_items / best


def bench_model(name, model, images, texts, repeat, rows):
    for bs in (1, 64):
        imgs = images[:bs]
        txts = texts[:bs]
        rows.append((name, "images/s", bs, rate(lambda: model.encode_images(imgs, batch_size=bs), len(imgs), repeat)))
        rows.append((name, "texts/s", bs, rate(lambda: model.encode_texts(txts, batch_size=bs), len(txts), repeat)))


def hf_baseline(model: StickerCLIP, images, texts, repeat, rows):
    """The same ViT-B/16 weights through plain transformers ChineseCLIPModel, default settings."""
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    cfg = ChineseCLIPConfig(text_config=model.config.text, vision_config=model.config.vision,
                            projection_dim=model.config.embed_dim)
    hf = ChineseCLIPModel(cfg).eval()
    hf.vision_model.load_state_dict(model.vision.state_dict())
    hf.text_model.load_state_dict(model.text.state_dict())
    hf.visual_projection.load_state_dict(model.visual_projection.state_dict())
    hf.text_projection.load_state_dict(model.text_projection.state_dict())
    for bs in (1, 64):
        # the baseline gets already-decoded, already-resized pixels: it measures the network alone
        pix = torch.stack([model.preprocess(r.load().frames[0]) for r in images[:bs]])
        enc = model.tokenize(texts[:bs])

        def img_fn():
            with torch.inference_mode():
                hf.get_image_features(pixel_values=pix)

        def txt_fn():
            with torch.inference_mode():
                hf.get_text_features(**enc)

        rows.append(("ViT-B/16 plain transformers", "images/s", bs, rate(img_fn, bs, repeat)))
        rows.append(("ViT-B/16 plain transformers", "texts/s", bs, rate(txt_fn, bs, repeat)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default", default="assets/stickerclip")
    ap.add_argument("--gallery", default="assets/gallery/all.jsonl")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    recs = list(read_jsonl(args.gallery))[:64]
    texts = [build_text(r) for r in recs]
    rows: list[tuple] = []
    if Path(args.default).exists():
        bench_model("default (" + Path(args.default).name + ")", load_model(args.default), recs, texts, args.repeat, rows)
    vitb = StickerCLIP(named_config("ViT-B-16")).eval()
    bench_model("ViT-B/16 StickerCLIP", vitb, recs, texts, args.repeat, rows)
    hf_baseline(vitb, recs, texts, args.repeat, rows)
    base = {(kind, bs): r for name, kind, bs, r in rows if name.startswith("ViT-B/16 plain")}
    print(f"{'model':34s} {'what':9s} {'batch':>5s} {'rate':>9s} {'vs plain':>8s}")
    for name, kind, bs, r in rows:
        ratio = f"{r / base[(kind, bs)]:.2f}" if name.startswith("ViT-B/16") else ""
        print(f"{name:34s} {kind:9s} {bs:5d} {r:9.1f} {ratio:>8s}")


if __name__ == "__main__":
    main()
