"""Sticker loading throughput: `load_sticker` (with its safety checks, frame choice and RGB
conversion) against a bare PIL open + convert of the same files, in the same process.

    python -m bench.bench_loader [--corpus assets/gallery/all.jsonl] [--repeat 3]
"""
from __future__ import annotations

import argparse
import io
import time
import warnings

from PIL import Image

from stickerclip.data import read_jsonl
from stickerclip.images import load_sticker


def _bare(data: bytes):
    img = Image.open(io.BytesIO(data))
    return img.convert("RGB")  # first frame only: the least a loader can do


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="assets/gallery/all.jsonl")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # PIL: palette transparency in the baseline
    blobs = [r.read_bytes() for r in read_jsonl(args.corpus)]
    rows = {}
    for name, fn in (("PIL open+convert (1st frame)", _bare), ("load_sticker", load_sticker)):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for b in blobs:
                fn(b)
            best = min(best, time.perf_counter() - t0)
        rows[name] = len(blobs) / best
    base = rows["PIL open+convert (1st frame)"]
    print(f"{'loader':32s} {'stickers/s':>11s} {'ratio':>6s}   ({len(blobs)} stickers)")
    for name, rate in rows.items():
        print(f"{name:32s} {rate:11.0f} {rate / base:6.2f}")


if __name__ == "__main__":
    main()
