"""Indexing throughput: a folder of 1,000 mixed stickers, against encode_images alone.

    python -m bench.bench_index [--n 1000] [--threads 2] [--no-ocr-run]

Copies the first N stickers of the default gallery (static, GIF, captioned) into a temporary
folder, then times, in one process: `encode_images` over the files (the baseline), `add_folder`
without OCR (hashing, SQLite, faiss, auto-tags on top of the same encoding), and `add_folder` with
RapidOCR. Prints stickers/s and each ratio against the baseline; overhead = 1 - ratio.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from stickerclip.data import read_jsonl
from stickerclip.gallery import GALLERY
from stickerclip.index import StickerIndex
from stickerclip.model import DEFAULT_MODEL
from stickerclip.factory import load_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ocr-run", action="store_true", help="skip the (slow) run with OCR")
    ap.add_argument("--model", default=None, help="StickerCLIP (default: the embedded one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model or DEFAULT_MODEL)
    recs = list(read_jsonl(GALLERY / "all.jsonl"))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "stickers"
        folder.mkdir()
        files = []
        for r in recs:
            dst = folder / Path(r.image).name
            shutil.copyfile(r.image, dst)
            files.append(dst)
        kinds = {"gif": sum(f.suffix == ".gif" for f in files), "captioned": sum(bool(r.ocr) for r in recs)}
        model.encode_images(files[:64])  # warm up
        t = time.perf_counter()
        model.encode_images(files)
        base = time.perf_counter() - t
        rows = [("encode_images alone (baseline)", len(files) / base, 1.0, "")]
        for ocr in ([False] if args.no_ocr_run else [False, True]):
            with StickerIndex.open(Path(tmp) / f"index-{ocr}", model, ocr=ocr) as index:
                t = time.perf_counter()
                s = index.add_folder(folder, progress=False)
                dt = time.perf_counter() - t
            rows.append((f"add_folder, OCR {'on' if ocr else 'off'}", len(files) / dt, base / dt,
                         f"added {s.added}, duplicates {s.duplicates}, failed {len(s.failed)}, OCR read {s.ocr_read}"))
    print(f"\nindexing {len(files)} stickers ({kinds['gif']} GIF, {kinds['captioned']} captioned), "
          f"{args.threads} threads\n")
    print("| run | stickers/s | ratio vs baseline | overhead | note |\n|---|---:|---:|---:|---|")
    for name, rate, ratio, note in rows:
        print(f"| {name} | {rate:.1f} | {ratio:.2f} | {100 * (1 - ratio):.0f} % | {note} |")
    return rows


if __name__ == "__main__":
    main()
