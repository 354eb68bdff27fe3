"""A persistent sticker index: your own sticker folder, searchable by text, by sticker, or both.

    index = StickerIndex.open("my-index")            # the embedded default model for a new index
    summary = index.add_folder("~/stickers")         # only new or changed files are encoded
    hits = index.search(text="晚安", k=24)            # or image=..., or both; filters, exclude

Layout of the index directory:
  * `meta.sqlite` — the truth: one row per distinct sticker (content hash, path, size, frames,
    description / emotions / style / OCR when known, auto-tags, time added, and its image and
    OCR-text vectors as float32 blobs), one row per file path (path -> content hash), the folders
    added, and the embedding model's identity. Every batch of stickers is one transaction.
  * `vectors.npz` — the faiss index over image vectors (exact below a size threshold, IVF above),
    rewritten atomically. It is a cache of the blobs: on open, rows it lacks are added from
    SQLite, and a file that disagrees with SQLite is rebuilt from it. A kill at any moment leaves
    an index that opens; re-running the same add finishes the job with nothing duplicated.

Scores (index_search.score): a text query ranks by image similarity + beta * OCR-text
similarity, a sticker query by image-to-image similarity, both by mix * text + (1 - mix) * image.

Modules: index_store (SQLite, vectors.npz, the in-memory state, removing), index_add (walk,
read, encode, commit, OCR, auto-tags), index_search (the score, filters, hits, IndexSet).

CLI: python -m stickerclip.index add FOLDER --index DIR [--model M] [--no-ocr] [--prune]
     python -m stickerclip.index {prune,info} --index DIR;  python -m stickerclip.index remove ID... --index DIR
"""
from __future__ import annotations

import argparse
import json
import sys

from .index_add import IndexAdder, IndexDiskFull, IndexSummary
from .index_search import BETA, MIX, Hit, IndexSearcher, IndexSet, score
from .index_store import IndexModelMismatch

__all__ = ["StickerIndex", "IndexSet", "Hit", "IndexSummary", "IndexModelMismatch", "IndexDiskFull", "score",
           "BETA", "MIX", "main"]


class StickerIndex(IndexAdder, IndexSearcher):
    """Stickers (image vectors in faiss, metadata in SQLite) in one directory. Thread-safe.

    `StickerIndex.open(directory, model)`; `add_folder`, `add`, `carry_over` (index_add);
    `search`, `get` (index_search); `remove`, `prune`, `info`, `folders`, `ids`, `save`, `close`
    (index_store)."""


# ------------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stickerclip.index", description="Build and maintain a sticker index.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="index a folder of stickers (incremental)")
    a.add_argument("folder")
    a.add_argument("--prune", action="store_true", help="also remove stickers whose files are gone")
    a.add_argument("--no-ocr", action="store_true", help="do not read captions with RapidOCR")
    a.add_argument("--batch-size", type=int, default=64)
    r = sub.add_parser("remove", help="remove stickers by id")
    r.add_argument("ids", nargs="+")
    sub.add_parser("prune", help="forget files that no longer exist")
    sub.add_parser("info", help="print what the index holds")
    for p in sub.choices.values():
        p.add_argument("--index", required=True, help="index directory")
        p.add_argument("--model", default=None, help="StickerCLIP (load_model source); default: the index's own")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    try:
        index = StickerIndex.open(args.index, args.model, create=args.cmd == "add", ocr=not getattr(args, "no_ocr", False))
    except (IndexModelMismatch, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with index:
        if args.cmd == "add":
            try:
                s = index.add_folder(args.folder, prune=args.prune, batch_size=args.batch_size, progress=True)
            except IndexDiskFull as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(s.to_json(), ensure_ascii=False) if args.json else str(s))
        elif args.cmd == "remove":
            print(index.remove(args.ids))
        elif args.cmd == "prune":
            print(index.prune())
        else:
            print(json.dumps(index.info(), ensure_ascii=False, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
