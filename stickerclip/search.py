"""Search a sticker index from the command line.

    python -m stickerclip.search --index DIR [--text T] [--image PATH] [--k K] [--json]
        [--emotions 开心,期待] [--style 可爱卡通] [--unsafe] [--beta 0.3] [--exclude ID ...]

Without --index, searches the default gallery's index (built on first use). --json prints a list
of objects with id, path, score (and the sticker's metadata); otherwise one line per hit.
"""
from __future__ import annotations

import argparse
import json
import sys

from .index import BETA, IndexModelMismatch, StickerIndex
from .labels import UnknownLabelError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stickerclip.search", description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=None, help="index directory (default: the default gallery's)")
    ap.add_argument("--model", default=None, help="StickerCLIP (load_model source); default: the index's own")
    ap.add_argument("--text", default=None)
    ap.add_argument("--image", default=None, help="a sticker file to search by")
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--emotions", default=None, help="keep stickers with any of these emotions")
    ap.add_argument("--style", default=None, help="keep stickers of this style")
    ap.add_argument("--unsafe", action="store_true", help="also show the harmful style (safe mode off)")
    ap.add_argument("--beta", type=float, default=BETA, help="weight of OCR-text similarity for text queries")
    ap.add_argument("--exclude", nargs="*", default=(), help="sticker ids to leave out")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not (args.text and args.text.strip()) and args.image is None:
        ap.error("give --text, --image or both")
    try:
        if args.index is None:
            from .gallery import default_index

            index = default_index()
        else:
            index = StickerIndex.open(args.index, args.model, create=False)
    except (IndexModelMismatch, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        hits = index.search(text=args.text, image=args.image, k=args.k, emotions=args.emotions, style=args.style,
                            safe=not args.unsafe, exclude=args.exclude, beta=args.beta)
    except UnknownLabelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # a bad --image file names itself in the message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([h.to_json() for h in hits], ensure_ascii=False))
    else:
        for h in hits:
            emos, style = h.labels()
            print(f"{h.score:7.4f}  {h.id:24s}  {h.path}  {h.description or h.ocr}  [{','.join(emos)}|{style}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
