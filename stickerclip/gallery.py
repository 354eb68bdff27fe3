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
GALLERY_OF = "gallery.txt"  # in a cached gallery index: the manifest it was made from


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
    path = str(manifest.resolve())
    where = hashlib.sha1(path.encode() + b"\0" + manifest.read_bytes()).hexdigest()[:8]
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
        (tmp / GALLERY_OF).write_text(path, encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: use its index
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists() and not target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _drop_older(root, target, Path(gallery).name, model.identity(), path, log)
    return StickerIndex.open(target, model, create=False, ocr=False)


def _drop_older(root: Path, target: Path, name: str, identity: str, path: str, log) -> None:
    """Remove this model's other cached indexes of the gallery at `path`: those of its earlier
    contents (an updated gallery leaves them behind). One is known by the manifest path it records,
    or, made before indexes recorded it, by the key of the path alone that they were made under."""
    legacy = root / f"{name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}-{identity}"
    for old in root.iterdir():
        if old == target or not (old.name.startswith(f"{name}-") and old.name.endswith(f"-{identity}")):
            continue
        marker = old / GALLERY_OF
        try:
            same = marker.read_text(encoding="utf-8") == path if marker.is_file() else old == legacy
        except OSError:
            continue
        if same:
            shutil.rmtree(old, ignore_errors=True)
            log(f"Removed the index of the gallery's earlier contents: {old}")
