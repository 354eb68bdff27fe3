"""Sticker records, the three readers that yield them, and the text given to the text encoder.

Readers:
  * `read_jsonl(manifest)` - the project's own format, one JSON record per line, `image` relative
    to the manifest's folder (see README).
  * `read_sticker820k(root, split)` - the Sticker820K release layout: LMDB `infos/` (pickled dict
    per image name) and `imgs/` (raw bytes), with `train.txt` / `valid.txt` name lists.
  * `read_folder(folder)` - a bare folder of images, recursive, no annotations.
`read_records(path)` picks the reader from what `path` is.

A bad record never stops a reader when `on_error` is given: the error (naming file and line or
key) goes to the callback and reading goes on. Without it, the first bad record raises.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import labels
from .images import Source, StickerImage, UnreadableImageError, load_sticker

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
OCR_MAX_CHARS = 24
FIELD_SEP = "；"
LMDB_SCHEME = "lmdb://"


class RecordError(ValueError):
    """A record that cannot be read. The message names the file and the line, key or field."""


@dataclass
class StickerRecord:
    """One sticker. `emotions` are keys of labels.EMOTIONS, `style` a key of labels.STYLES or ""."""

    id: str
    image: str  # a file path, or lmdb://<db dir>#<image name> for Sticker820K
    description: str = ""
    emotions: list[str] = field(default_factory=list)
    style: str = ""
    ocr: str = ""
    source: str = ""
    license: str = ""
    concept: str = ""  # what the sticker shows, shared by its every rendering (e.g. an emoji key)
    art: str = ""  # art style / artist set it is drawn in (e.g. "twemoji")

    def __post_init__(self):
        self.emotions, _ = labels.parse_emotions(self.emotions, strict=True)
        if self.style:
            self.style = labels.style(self.style).key

    def to_json(self, base: str | os.PathLike | None = None) -> dict:
        """The manifest form; `image` relative to `base` when it lies under it."""
        out = asdict(self)
        if base is not None and not self.image.startswith(LMDB_SCHEME):
            rel = os.path.relpath(os.path.abspath(self.image), os.path.abspath(base))
            out["image"] = Path(rel).as_posix()
        return out

    def read_bytes(self) -> bytes:
        """The sticker file's bytes, wherever it lives."""
        if self.image.startswith(LMDB_SCHEME):
            return _lmdb_image_bytes(self.image)
        try:
            return Path(self.image).read_bytes()
        except OSError as exc:
            raise UnreadableImageError(self.image, exc.strerror or str(exc)) from None

    def load(self) -> StickerImage:
        """The sticker's frames through the project's one image loader."""
        src, name = image_source(self)
        return load_sticker(src, name=name)


def image_source(item) -> tuple[Source, str | None]:
    """(source, name) for `load_sticker` from a record, a path or anything it accepts."""
    if isinstance(item, StickerRecord):
        if item.image.startswith(LMDB_SCHEME):
            return item.read_bytes(), item.image
        return item.image, None
    return item, None


# ---------------------------------------------------------------------------------------------
# text


def build_text(record: StickerRecord, shuffle: bool = False, rng: random.Random | None = None,
               ocr_max: int = OCR_MAX_CHARS) -> str:
    """Text for the text encoder: description, emotions, style and OCR joined with '；'.

    Emotions and style are given by their Chinese names; OCR is cut to `ocr_max` characters; empty
    fields are left out. `shuffle` permutes the field order (training); otherwise it is fixed.
    """
    fields = [
        record.description.strip(),
        "，".join(labels.emotion_zh(record.emotions)),
        labels.style_zh(record.style),
        record.ocr.strip()[:ocr_max],
    ]
    fields = [f for f in fields if f]
    if shuffle:
        (rng or random).shuffle(fields)
    return FIELD_SEP.join(fields)


# ---------------------------------------------------------------------------------------------
# JSONL manifest


def _record_from_dict(obj: dict, base: Path, where: str) -> StickerRecord:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    for key in ("id", "image"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise RecordError(f"{where}: field '{key}' must be a non-empty string")
    for key in ("description", "style", "ocr", "source", "license", "concept", "art"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise RecordError(f"{where}: field '{key}' must be a string")
    emotions = obj.get("emotions") or []
    if not isinstance(emotions, (list, str)):
        raise RecordError(f"{where}: field 'emotions' must be a list of emotion names")
    image = obj["image"]
    if not image.startswith(LMDB_SCHEME) and not os.path.isabs(image):
        image = str(base / image)
    try:
        return StickerRecord(
            id=obj["id"], image=image, description=obj.get("description") or "",
            emotions=emotions, style=obj.get("style") or "", ocr=obj.get("ocr") or "",
            source=obj.get("source") or "", license=obj.get("license") or "",
            concept=obj.get("concept") or "", art=obj.get("art") or "",
        )
    except labels.UnknownLabelError as exc:
        field_name = "emotions" if "emotion" in str(exc) else "style"
        raise RecordError(f"{where}: field '{field_name}': {exc}") from None


def read_jsonl(manifest: str | os.PathLike,
               on_error: Callable[[RecordError], None] | None = None) -> Iterator[StickerRecord]:
    """Records from a JSONL manifest; `image` paths are resolved against its folder."""
    path = Path(manifest)
    base = path.parent
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RecordError(f"{where}: invalid JSON: {exc.msg} at column {exc.colno}") from None
                yield _record_from_dict(obj, base, where)
            except RecordError as exc:
                if on_error is None:
                    raise
                on_error(exc)


def write_jsonl(records: Iterable[StickerRecord], manifest: str | os.PathLike) -> int:
    """Write records to a manifest atomically, images relative to its folder. Returns the count."""
    path = Path(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec.to_json(base=path.parent), ensure_ascii=False) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


# ---------------------------------------------------------------------------------------------
# bare folder


def read_folder(folder: str | os.PathLike, on_error: Callable[[Exception], None] | None = None
                ) -> Iterator[StickerRecord]:
    """Records for every sticker file under `folder`, as `walk_stickers` finds them.

    `id` is the path relative to `folder` with '/' separators. Files are not opened here. A file
    the walk refuses is an UnreadableImageError (to `on_error`, else raised).
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")

    def refused(path: str, reason: str):
        err = UnreadableImageError(path, reason)
        if on_error is None:
            raise err
        on_error(err)

    for path in walk_stickers(root, refused):
        full = Path(path)
        yield StickerRecord(id=full.relative_to(root).as_posix(), image=str(full))


def walk_stickers(folder: str | os.PathLike, refused: Callable[[str, str], None]) -> Iterator[str]:
    """Paths of the sticker files under `folder` (by extension, IMAGE_EXTENSIONS): recursive,
    sorted, symlinked folders not followed. The one walk of a folder, for `read_folder` and for
    `StickerIndex.add_folder`.

    Refused, each told to `refused(path, reason)` and not yielded: a folder that cannot be listed,
    a name below `folder` that is not valid UTF-8 (its path shown with \\xNN), a broken or
    looping symlink, a symlink that leads out of `folder`.
    """
    top = os.fspath(folder)
    inside = Path(folder).resolve()

    def unlisted(exc: OSError):
        refused(exc.filename or top, exc.strerror or str(exc))

    for dirpath, dirnames, filenames in os.walk(top, onerror=unlisted, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, name)
            if not is_utf8(path[len(top):]):  # paths are stored as UTF-8 text (SQLite, JSONL)
                refused(printable_path(path), "file name is not valid UTF-8 (rename the file)")
                continue
            if os.path.islink(path):
                try:
                    target = Path(path).resolve(strict=True)
                except (OSError, RuntimeError) as exc:
                    refused(path, f"broken or looping symlink ({exc.__class__.__name__})")
                    continue
                if inside not in target.parents:
                    refused(path, "symlink points outside the folder")
                    continue
            yield path


def is_utf8(text: str) -> bool:
    """False for a name from the file system with bytes that are not UTF-8 (os.walk gives them as
    lone surrogates)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable_path(path: str) -> str:
    """A path that can be printed and stored: undecodable bytes of its name as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------------
# Sticker820K LMDB release


_LMDB_ENVS: dict[str, object] = {}
_LMDB_LOCK = threading.Lock()


def _open_lmdb(path: str):
    import lmdb

    with _LMDB_LOCK:
        env = _LMDB_ENVS.get(path)
        if env is None:
            if not os.path.isdir(path):
                raise RecordError(f"{path}: not an LMDB directory")
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                            max_readers=512)
            _LMDB_ENVS[path] = env
        return env


def _lmdb_uri(root: Path, name: str) -> str:
    return f"{LMDB_SCHEME}{root.resolve()}#{name}"


def _lmdb_image_bytes(uri: str) -> bytes:
    root, _, name = uri[len(LMDB_SCHEME):].partition("#")
    env = _open_lmdb(os.path.join(root, "imgs"))
    with env.begin(buffers=False) as txn:
        data = txn.get(name.encode("utf-8"))
    if data is None:
        raise UnreadableImageError(uri, "no image bytes under this name in imgs/")
    return bytes(data)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "，".join(str(v) for v in value if str(v).strip())
    return str(value)


def record_from_sticker820k(name: str, info: dict, root: Path) -> StickerRecord:
    """A record from one Sticker820K `infos/` entry. Emotion strings that name none of the 30
    classes (e.g. a polarity such as 正向) are dropped; an unknown style becomes "other"."""
    if not isinstance(info, dict):
        raise RecordError(f"{root}/infos[{name}]: expected a pickled dict, got {type(info).__name__}")
    emotions: list[str] = []
    for key in ("emotion_class", "emotion_label"):
        found, _ = labels.parse_emotions(_text(info.get(key)).replace("，", ","), strict=False)
        emotions += [e for e in found if e not in emotions]
    style_raw = _text(info.get("style_class")).strip()
    try:
        style = labels.style(style_raw).key if style_raw else ""
    except labels.UnknownLabelError:
        style = "other"
    return StickerRecord(
        id=name, image=_lmdb_uri(root, name), description=_text(info.get("caption")).strip(),
        emotions=emotions, style=style, ocr=_text(info.get("ocr_text")).strip(),
        source="Sticker820K", license="",
    )


def read_sticker820k(root: str | os.PathLike, split: str | None = "train",
                     on_error: Callable[[RecordError], None] | None = None) -> Iterator[StickerRecord]:
    """Records of a Sticker820K release directory. `split` is "train", "valid" (the names in
    train.txt / valid.txt) or None for every entry of infos/."""
    root = Path(root)
    env = _open_lmdb(str(root / "infos"))
    if split is not None:
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise RecordError(f"{list_file}: split list not found (expected train.txt / valid.txt)")
        # a line that is not UTF-8 becomes a name with \xNN in it: reported as missing, not fatal
        names: Iterable[str] = (ln.strip() for ln in open(list_file, encoding="utf-8", errors="backslashreplace"))
    else:
        with env.begin() as txn:
            names = [k.decode("utf-8", "backslashreplace") for k, _ in txn.cursor()]
    with env.begin(buffers=False) as txn:
        for name in names:
            if not name:
                continue
            try:
                raw = txn.get(name.encode("utf-8"))
                if raw is None:
                    where = f"listed in {split}.txt but missing from infos/" if split else "key is not valid UTF-8"
                    raise RecordError(f"{root}/infos[{name}]: {where}")
                try:
                    info = safe_unpickle(raw)
                except Exception as exc:
                    raise RecordError(f"{root}/infos[{name}]: cannot unpickle: {exc}") from None
                yield record_from_sticker820k(name, info, root)
            except RecordError as exc:
                if on_error is None:
                    raise
                on_error(exc)


class _ReleaseUnpickler(pickle.Unpickler):
    """Unpickles only plain data: dicts, lists, tuples, strings, bytes, numbers, booleans, None (all
    built by pickle's own opcodes) and the few containers below. Any other global, such as a function
    a hostile file would call (`os.system`), is refused before it is looked up."""

    ALLOWED = {(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "bytearray")} | {
        ("collections", "OrderedDict"), ("_codecs", "encode")}  # protocols 0-2: Python 2's module
    # name for builtins, and bytes written as _codecs.encode(text, "latin1")

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a Sticker820K info holds plain data only")
        return super().find_class(module, name)


def safe_unpickle(data: bytes):
    """`pickle.loads` for Sticker820K's `infos/` entries (data downloaded from elsewhere): plain data
    only (see _ReleaseUnpickler); anything else raises pickle.UnpicklingError without running it."""
    import io

    return _ReleaseUnpickler(io.BytesIO(data)).load()


def write_sticker820k(records: Iterable[StickerRecord], root: str | os.PathLike,
                      splits: dict[str, Iterable[str]] | None = None) -> int:
    """Export records in the Sticker820K layout (infos/, imgs/, train.txt, valid.txt)."""
    import lmdb

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    env_i = lmdb.open(str(root / "infos"), map_size=1 << 34)
    env_b = lmdb.open(str(root / "imgs"), map_size=1 << 36)
    try:
        with env_i.begin(write=True) as ti, env_b.begin(write=True) as tb:
            for rec in records:
                info = {
                    "caption": rec.description,
                    "emotion_class": ",".join(labels.emotion_zh(rec.emotions)),
                    "emotion_label": ",".join(labels.emotion(e).en for e in rec.emotions),
                    "style_class": labels.style_zh(rec.style),
                    "ocr_text": rec.ocr,
                }
                ti.put(rec.id.encode("utf-8"), pickle.dumps(info))
                tb.put(rec.id.encode("utf-8"), rec.read_bytes())
                n += 1
    finally:
        env_i.close()
        env_b.close()
    for split, names in (splits or {}).items():
        (root / f"{split}.txt").write_text("".join(f"{x}\n" for x in names), encoding="utf-8")
    return n


# ---------------------------------------------------------------------------------------------


def read_records(path: str | os.PathLike, split: str | None = None,
                 on_error: Callable[[Exception], None] | None = None) -> Iterator[StickerRecord]:
    """Records from a JSONL manifest, a Sticker820K directory (has infos/ and imgs/) or a folder.

    For a corpus directory holding `{split}.jsonl`, `split` picks the manifest.
    """
    p = Path(path)
    if p.is_file():
        return read_jsonl(p, on_error=on_error)
    if (p / "infos").is_dir() and (p / "imgs").is_dir():
        return read_sticker820k(p, split=split or "train", on_error=on_error)
    if split and (p / f"{split}.jsonl").is_file():
        return read_jsonl(p / f"{split}.jsonl", on_error=on_error)
    if p.is_dir():
        return read_folder(p, on_error=on_error)
    raise FileNotFoundError(f"{p}: no manifest, Sticker820K directory or folder here")
