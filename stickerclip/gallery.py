"""The embedded default gallery (assets/gallery) as a ready sticker index.

`default_index()` opens the gallery's index for the default model from the user cache, building
it on first use (about half a minute on 2 cores) so that search works offline right after set-up.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

GALLERY = Path(__file__).resolve().parent.parent / "assets" / "gallery"


def default_index(model=None, gallery: str | os.PathLike = GALLERY, log=None, progress=True):
    """The StickerIndex of `gallery`'s all.jsonl for `model` (default: the embedded default model).

    Messages go to `log` (default: stderr); indexing progress (the first time for a model) to
    `progress`: True (a bar on stderr) or a callback (done, total)."""
    from .data import read_jsonl
    from .index import StickerIndex
    from .llm import cache_dir
    from .model import DEFAULT_MODEL
    from .factory import load_model

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(model or DEFAULT_MODEL)
    manifest = Path(gallery) / "all.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: the sticker gallery is missing")
    root = cache_dir() / "index"
    # the index holds absolute paths, and what the manifest lists: a moved or rebuilt gallery is indexed anew
    where = hashlib.sha1(str(manifest.resolve()).encode() + b"\0" + manifest.read_bytes()).hexdigest()[:8]
    target = root / f"{Path(gallery).name}-{where}-{model.identity()}"
    if (target / "meta.sqlite").is_file():
        return StickerIndex.open(target, model, create=False, ocr=False)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        log(f"Indexing the sticker gallery {gallery} once (cached at {target})")
        with StickerIndex.open(tmp, model, ocr=False) as index:
            summary = index.add(read_jsonl(manifest), progress=progress, ocr=False)
        if summary.failed:
            log(f"gallery: {len(summary.failed)} stickers skipped: {summary.failed[:3]}")
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: use its index
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists() and not target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return StickerIndex.open(target, model, create=False, ocr=False)
