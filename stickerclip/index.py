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

Scores (cosine similarities of L2-normalised vectors):
  * text query: image similarity + beta * OCR-text similarity (the paper's demo, beta 0.3),
    image similarity alone for stickers without OCR text;
  * image query: image-to-image similarity;
  * both: mix * text score + (1 - mix) * image score (mix 0.5).

CLI: python -m stickerclip.index add FOLDER --index DIR [--model M] [--no-ocr] [--prune]
     python -m stickerclip.index {prune,info} --index DIR;  python -m stickerclip.index remove ID... --index DIR
"""
from __future__ import annotations

import argparse
import errno
import functools
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import labels
from .data import IMAGE_EXTENSIONS, LMDB_SCHEME, StickerRecord, image_source
from .images import StickerImage, StickerImageError, load_sticker, read_sticker_bytes
from .vectors import EXACT_MAX, VectorIndex

SCHEMA_VERSION = "1"
BETA = 0.3
MIX = 0.5
AUTO_EMOTIONS = 3  # auto-tags: at most this many emotions ...
AUTO_MIN_PROB = 0.15  # ... each with at least this zero-shot probability (the top one always)
AUTO_HARMFUL_MIN_PROB = 0.6  # auto-tag "harmful" (hidden in safe mode) only when this sure
SAVE_EVERY_S = 60.0  # rewrite vectors.npz at least this often during a long add

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stickers (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    frames INTEGER NOT NULL, format TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '', emotions TEXT NOT NULL DEFAULT '[]', style TEXT NOT NULL DEFAULT '',
    ocr TEXT NOT NULL DEFAULT '', ocr_source TEXT NOT NULL DEFAULT '',
    auto_emotions TEXT NOT NULL DEFAULT '[]', auto_style TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '', license TEXT NOT NULL DEFAULT '',
    added REAL NOT NULL,
    vec BLOB NOT NULL, ocr_vec BLOB
);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, hash TEXT NOT NULL, size INTEGER, mtime_ns INTEGER);
CREATE INDEX IF NOT EXISTS files_hash ON files(hash);
CREATE TABLE IF NOT EXISTS folders (path TEXT PRIMARY KEY, added REAL NOT NULL);
"""


class IndexModelMismatch(ValueError):
    """The index was built with another embedding model; vectors of two models never mix."""


class IndexDiskFull(OSError):
    """The disk filled while indexing: what was committed before is kept, the index stays valid."""


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full_is_clear(method):
    """An add that fills the disk raises IndexDiskFull saying so and what was kept (SQLite rolls
    back the batch it was writing; vectors.npz is a cache rebuilt from SQLite on open)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        before = len(self)
        try:
            return method(self, *args, **kwargs)
        except (OSError, sqlite3.OperationalError) as exc:
            if isinstance(exc, IndexDiskFull) or not _is_disk_full(exc):
                raise
            self._changed = 0
            raise IndexDiskFull(errno.ENOSPC, f"disk full while indexing into {self.directory}: {len(self) - before} "
                                f"new stickers were saved before it filled and the index is intact; free some "
                                f"space and add again to finish") from exc
    return wrapper


@dataclass
class Hit:
    """One search result: the sticker's id, file, score and what is known about it."""

    id: str
    path: str
    score: float
    image_score: float | None = None
    text_score: float | None = None
    description: str = ""
    emotions: list[str] = field(default_factory=list)
    style: str = ""
    ocr: str = ""
    auto_emotions: list[str] = field(default_factory=list)
    auto_style: str = ""
    width: int = 0
    height: int = 0
    frames: int = 1

    @property
    def animated(self) -> bool:
        return self.frames > 1

    def labels(self) -> tuple[list[str], str]:
        """(emotions, style): the annotated ones, else the auto-tags."""
        return (self.emotions or self.auto_emotions), (self.style or self.auto_style)

    def to_json(self) -> dict:
        return {**asdict(self), "animated": self.animated}


@dataclass
class IndexSummary:
    """What one add did. `failed` holds (path or id, reason) for every sticker that was skipped."""

    added: int = 0
    duplicates: int = 0
    unchanged: int = 0
    updated: int = 0
    removed: int = 0
    ocr_read: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        head = (f"added {self.added}, unchanged {self.unchanged}, duplicates {self.duplicates}, "
                f"updated {self.updated}, removed {self.removed}, failed {len(self.failed)}"
                f" ({self.seconds:.1f} s; OCR read {self.ocr_read})")
        return "\n".join([head] + [f"  failed: {p}: {why}" for p, why in self.failed])

    def to_json(self) -> dict:
        return {**asdict(self), "failed": [{"path": p, "reason": r} for p, r in self.failed]}


@dataclass
class _New:
    """A sticker read and hashed, waiting to be encoded and committed."""

    key: str  # file path, or the record's image
    id: str
    hash: str
    image: StickerImage
    size: int
    record: StickerRecord | None = None
    stat: tuple[int, int] | None = None  # (size, mtime_ns) of a file


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, np.float32).tobytes()


class StickerIndex:
    """Stickers (image vectors in faiss, metadata in SQLite) in one directory. Thread-safe."""

    def __init__(self, directory: Path, model, conn: sqlite3.Connection, ocr: bool, exact_max: int):
        self.directory = directory
        self.model = model
        self.db = conn
        self.ocr_enabled = ocr
        self._ocr = None
        self._lock = threading.RLock()
        self._exact_max = exact_max
        self._tag_vecs = None
        self._changed = 0  # files whose content changed, counted as updated, not removed
        self._load_state()

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, directory: str | os.PathLike, model=None, *, ocr: bool = True, exact_max: int = EXACT_MAX,
             create: bool = True) -> "StickerIndex":
        """Open (or create) the index in `directory`.

        `model` is a StickerCLIP or a `load_model` source; None means the model the index was built
        with (the embedded default for a new index). Raises IndexModelMismatch for another model."""
        from .model import DEFAULT_MODEL, load_model

        d = Path(directory).expanduser()
        if not (d / "meta.sqlite").is_file():
            if not create:
                raise FileNotFoundError(f"{d}: no sticker index here (meta.sqlite missing)")
            d.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(d / "meta.sqlite"), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        info = dict(conn.execute("SELECT key, value FROM info").fetchall())
        if info.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(f"{d}: index schema {info['schema']}, this version reads {SCHEMA_VERSION}")
        source = getattr(model, "source", None)
        if model is None:
            source = info.get("model_source") or DEFAULT_MODEL
            model = load_model(source)
        elif isinstance(model, (str, os.PathLike)):
            source = str(model)
            model = load_model(source)
        if source is not None and Path(source).exists():
            source = str(Path(source).resolve())
        ident = model.identity()
        if "model" in info and info["model"] != ident:
            raise IndexModelMismatch(
                f"{d}: index was built with model {info['model']} ({info.get('model_source', '?')}); "
                f"the model given is {ident}. Use that model, or a new index directory for this one.")
        if "model" not in info:
            with conn:
                conn.execute("BEGIN")
                rows = {"schema": SCHEMA_VERSION, "model": ident, "dim": str(model.config.embed_dim),
                        "created": str(time.time())}
                if source is not None:
                    rows["model_source"] = source
                conn.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", rows.items())
        return cls(d, model, conn, ocr, exact_max)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def dim(self) -> int:
        return int(self.model.config.embed_dim)

    def info(self) -> dict:
        """Model identity and source, size, index kind, folders."""
        with self._lock:
            info = dict(self.db.execute("SELECT key, value FROM info").fetchall())
            return {"stickers": len(self), "files": self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0],
                    "index": self._vec.kind, "model": info.get("model"), "model_source": info.get("model_source"),
                    "folders": self.folders(), "with_ocr": int(len(self._ocr_pos))}

    def folders(self) -> list[str]:
        """Folders added to this index (absolute)."""
        return [r[0] for r in self.db.execute("SELECT path FROM folders ORDER BY path")]

    # ----------------------------------------------------------------------- in-memory state
    def _load_state(self) -> None:
        """Positions, filter arrays and OCR vectors from SQLite; the faiss index from its file."""
        rows, ids, styles, emos, ocr_pos, ocr_vecs = [], [], [], [], [], []
        cur = self.db.execute("SELECT row, id, style, auto_style, emotions, auto_emotions, ocr_vec FROM stickers "
                              "ORDER BY row")
        for pos, (row, sid, style, astyle, em, aem, ovec) in enumerate(cur):
            rows.append(row)
            ids.append(sid)
            styles.append(style or astyle)
            emos.append(json.loads(em) or json.loads(aem))
            if ovec is not None:
                ocr_pos.append(pos)
                ocr_vecs.append(np.frombuffer(ovec, np.float32))
        self._rows = np.asarray(rows, np.int64)
        self._ids = ids
        self._pos_by_id = {s: i for i, s in enumerate(ids)}
        self._style = np.asarray([_style_code(s) for s in styles], np.int16).reshape(-1)
        self._emo_bits = np.asarray([_emotion_bits(e) for e in emos], np.int64).reshape(-1)
        self._ocr_pos = np.asarray(ocr_pos, np.int64)
        self._ocr_vecs = np.stack(ocr_vecs) if ocr_vecs else np.zeros((0, self.dim), np.float32)
        self._vec = self._load_vectors()

    def _load_vectors(self) -> VectorIndex:
        path = self.directory / "vectors.npz"
        vec, file_rows = None, np.zeros(0, np.int64)
        if path.is_file():
            try:
                vec, extra = VectorIndex.load(path)
                file_rows = extra["rows"]
                vec.exact_max = self._exact_max
            except Exception as exc:  # a damaged cache file: rebuilt from SQLite below
                print(f"{path}: unreadable ({exc}); rebuilding from meta.sqlite", file=sys.stderr)
                vec = None
        n = len(file_rows)
        if vec is not None and vec.dim == self.dim and len(vec) == n and np.array_equal(self._rows[:n], file_rows):
            if n < len(self._rows):  # committed rows the file missed (killed before it was saved)
                vec.add(self._vectors_of(self._rows[n:]), all_vectors=lambda: self._vectors_of(self._rows))
            return vec
        vec = VectorIndex(self.dim, self._exact_max)
        if len(self._rows):
            vec.rebuild(self._vectors_of(self._rows))
        return vec

    def _vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Image vectors of SQLite rows, in the order given."""
        out = np.zeros((len(rows), self.dim), np.float32)
        where = {int(r): i for i, r in enumerate(rows)}
        ordered = sorted(where)
        for start in range(0, len(ordered), 900):
            chunk = ordered[start:start + 900]
            q = f"SELECT row, vec FROM stickers WHERE row IN ({','.join('?' * len(chunk))})"
            for row, blob in self.db.execute(q, chunk):
                out[where[row]] = np.frombuffer(blob, np.float32)
        return out

    def save(self) -> None:
        """Write vectors.npz for the committed rows (atomic)."""
        with self._lock:
            self._vec.save(self.directory / "vectors.npz", {"rows": self._rows})

    # ---------------------------------------------------------------------------------- adding
    @_disk_full_is_clear
    def add_folder(self, folder: str | os.PathLike, *, prune: bool = False, batch_size: int = 64,
                   progress: Callable[[int, int], None] | bool | None = True, ocr: bool | None = None
                   ) -> IndexSummary:
        """Index every sticker file under `folder` (recursive; symlinked folders not followed).

        Files whose size and mtime are unchanged are skipped without reading; others are hashed and
        only new content is encoded. With `prune`, stickers whose files are gone are removed.
        `progress` is True (a progress bar on stderr), False/None, or a callback (done, total)."""
        t0 = time.time()
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"{folder}: not a folder")
        if not _utf8(str(root)):
            raise ValueError(f"{_shown(str(root))}: folder name is not valid UTF-8 (rename the folder)")
        summary = IndexSummary()
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO folders VALUES (?, ?)", (str(root), time.time()))
            known = {p: (h, s, m) for p, h, s, m in self.db.execute(
                "SELECT path, hash, size, mtime_ns FROM files WHERE path >= ? AND path < ?",
                (str(root) + os.sep, str(root) + chr(ord(os.sep) + 1)))}
        todo = []
        for path in _walk(root, summary):
            try:
                st = os.stat(path)
            except OSError as exc:
                summary.failed.append((path, exc.strerror or str(exc)))
                continue
            old = known.get(path)
            if old is not None and old[1] == st.st_size and old[2] == st.st_mtime_ns and old[0] in self._hashes():
                summary.unchanged += 1
            else:
                todo.append((path, (st.st_size, st.st_mtime_ns)))
        self._ingest(((p, None, stat) for p, stat in todo), len(todo), summary, batch_size, progress, ocr)
        if prune:
            gone = [p for p in known if not os.path.exists(p)]
            with self._lock, self.db:
                self.db.execute("BEGIN")
                self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in gone])
        self._finish(summary)
        summary.seconds = time.time() - t0
        return summary

    def carry_over(self, old: str | os.PathLike, progress=False) -> IndexSummary:
        """Re-index, with this index's model, what the index in `old` (another model's) held: its
        folders (those inside `old`, such as uploads, are copied here first) and the other files it
        indexed. `old` is only read, so nothing is lost. The summary counts what was added and skipped."""
        import shutil

        old = Path(old).resolve()
        conn = sqlite3.connect(f"file:{old / 'meta.sqlite'}?mode=ro", uri=True)
        try:
            folders = [r[0] for r in conn.execute("SELECT path FROM folders ORDER BY path")]
            files = [r[0] for r in conn.execute("SELECT path FROM files ORDER BY path")]
        finally:
            conn.close()
        total = IndexSummary()
        inside = str(old) + os.sep
        done_roots = []
        for folder in folders:
            src = Path(folder)
            if folder.startswith(inside):
                dst = Path(self.directory).resolve() / os.path.relpath(folder, old)
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                src = dst
            if not src.is_dir():
                total.failed.append((folder, "folder no longer exists"))
                continue
            part = self.add_folder(src, progress=progress)
            done_roots.append(folder + os.sep)
            total.added += part.added
            total.unchanged += part.unchanged
            total.failed += part.failed
        loose = [f for f in files if not any(f.startswith(r) for r in done_roots)]
        records = [StickerRecord(id=Path(f).stem, image=f) for f in loose if os.path.isfile(f)]
        total.failed += [(f, "file no longer exists") for f in loose if not os.path.isfile(f)]
        if records:
            part = self.add(records)
            total.added += part.added
            total.failed += part.failed
        return total

    @_disk_full_is_clear
    def add(self, records: Iterable[StickerRecord], *, batch_size: int = 64,
            progress: Callable[[int, int], None] | bool | None = False, ocr: bool | None = None) -> IndexSummary:
        """Index records (JSONL, Sticker820K, ...): their descriptions, emotions, style and OCR are kept.

        The record's id is the sticker's id; a known id with new content replaces the old sticker."""
        t0 = time.time()
        records = list(records)
        summary = IndexSummary()
        self._ingest(((r.image, r, None) for r in records), len(records), summary, batch_size, progress, ocr)
        self._finish(summary)
        summary.seconds = time.time() - t0
        return summary

    def _finish(self, summary: IndexSummary) -> None:
        """Drop orphans (old contents of changed files are not counted as removed) and save."""
        summary.removed += max(0, self._drop_orphans() - self._changed)
        self._changed = 0
        self.save()

    def _hashes(self) -> set[str]:
        if getattr(self, "_hash_cache", None) is None or len(self._hash_cache) != len(self):
            self._hash_cache = {h for (h,) in self.db.execute("SELECT hash FROM stickers")}
        return self._hash_cache

    def _ingest(self, items, total: int, summary: IndexSummary, batch_size: int, progress, ocr) -> None:
        """Read, hash, encode and commit items ((key, record or None, stat or None)) batch by batch."""
        bar = None
        if progress is True and total:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="indexing", unit="sticker", file=sys.stderr)
        done, batch, last_save = 0, [], time.time()
        for key, record, stat in items:
            item = self._read(key, record, stat, summary)
            if item is not None:
                batch.append(item)
            done += 1
            if len(batch) >= batch_size:
                self._commit(batch, summary, ocr)
                batch = []
                if time.time() - last_save > SAVE_EVERY_S:
                    self.save()
                    last_save = time.time()
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(done, total)
        if batch:
            self._commit(batch, summary, ocr)
        if bar is not None:
            bar.close()

    def _read(self, key: str, record: StickerRecord | None, stat, summary: IndexSummary) -> _New | None:
        """Hash a file or record's image; known content only gets its path noted, new content is loaded."""
        label = record.id if record is not None else key
        try:
            data = read_sticker_bytes(image_source(record)[0] if record is not None else key, key)
            digest = _hash(data)
            with self._lock:
                hit = self.db.execute("SELECT id FROM stickers WHERE hash = ?", (digest,)).fetchone()
                if hit is not None:
                    prev = self.db.execute("SELECT hash FROM files WHERE path = ?", (key,)).fetchone()
                    with self.db:
                        self.db.execute("BEGIN")
                        self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                        (key, digest, *(stat or (len(data), None))))
                    if prev is not None and prev[0] == digest:
                        summary.unchanged += 1
                    elif record is not None and hit[0] == record.id:
                        summary.unchanged += 1
                    else:
                        summary.duplicates += 1
                    return None
            image = load_sticker(data, name=key)
        except StickerImageError as exc:
            summary.failed.append((label, exc.reason))
            return None
        except OSError as exc:
            summary.failed.append((label, exc.strerror or str(exc)))
            return None
        sid = record.id if record is not None and record.id else digest[:16]
        return _New(key, sid, digest, image, len(data), record, stat)

    def _commit(self, batch: list[_New], summary: IndexSummary, ocr: bool | None) -> None:
        """Encode a batch and store it in one transaction, then extend the in-memory index."""
        # Same bytes twice in one batch: keep the first.
        seen, unique = {}, []
        for b in batch:
            if b.hash in seen:
                summary.duplicates += 1
                seen[b.hash].append(b)
            else:
                seen[b.hash] = [b]
                unique.append(b)
        vecs = self.model.encode_images([b.image for b in unique])  # (n, D)
        texts = []
        for b in unique:
            known = b.record.ocr if b.record is not None else ""
            if not known and (self.ocr_enabled if ocr is None else ocr):
                known = self._reader().read(b.image)
                if known:
                    summary.ocr_read += 1
            texts.append(known)
        ocr_vecs = self._encode_ocr(texts)
        auto = self._auto_tags(vecs, unique)
        now = time.time()
        before = self._changed
        with self._lock:
            replaced = []
            with self.db:
                self.db.execute("BEGIN")
                for b, v, text, ov, (aem, ast) in zip(unique, vecs, texts, ocr_vecs, auto):
                    r = b.record
                    old = self.db.execute("SELECT hash FROM stickers WHERE id = ?", (b.id,)).fetchone()
                    if old is not None:  # a record id with new content: replace the old sticker
                        self.db.execute("DELETE FROM stickers WHERE id = ?", (b.id,))
                        self.db.execute("DELETE FROM files WHERE hash = ?", (old[0],))
                        replaced.append(b.id)
                    st = r.style if r is not None else ""
                    prev = self.db.execute("SELECT hash FROM files WHERE path = ?", (b.key,)).fetchone()
                    if prev is not None and prev[0] != b.hash:
                        summary.updated += 1  # a changed file: its old content becomes an orphan
                        self._changed += 1
                    self.db.execute(
                        "INSERT INTO stickers (id, hash, path, bytes, width, height, frames, format, description, "
                        "emotions, style, ocr, ocr_source, auto_emotions, auto_style, source, license, added, vec, "
                        "ocr_vec) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (b.id, b.hash, b.key, b.size, b.image.size[0], b.image.size[1], b.image.n_frames,
                         b.image.format, r.description if r else "", json.dumps(list(r.emotions) if r else []),
                         st, text, ("record" if r is not None and r.ocr else "rapidocr" if text else ""),
                         json.dumps(aem), ast, r.source if r else "", r.license if r else "", now, _blob(v),
                         _blob(ov) if text else None))
                    for dup in seen[b.hash]:
                        self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                        (dup.key, b.hash, *(dup.stat or (dup.size, None))))
            changed_here = self._changed - before
            if replaced:
                summary.updated += len(replaced)
                summary.added += len(unique) - len(replaced) - changed_here
                self._load_state()
                return
            self._append(unique, vecs, texts, ocr_vecs, auto)
        summary.added += len(unique) - changed_here

    def _append(self, items, vecs, texts, ocr_vecs, auto) -> None:
        rows = [r for (r,) in self.db.execute(
            f"SELECT row FROM stickers WHERE hash IN ({','.join('?' * len(items))}) ORDER BY row",
            [b.hash for b in items])]
        start = len(self._rows)
        self._rows = np.concatenate([self._rows, np.asarray(rows, np.int64)])
        for i, b in enumerate(items):
            self._pos_by_id[b.id] = start + i
            self._ids.append(b.id)
        styles = [(b.record.style if b.record is not None else "") or a[1] for b, a in zip(items, auto)]
        emos = [(list(b.record.emotions) if b.record is not None else []) or a[0] for b, a in zip(items, auto)]
        self._style = np.concatenate([self._style, np.asarray([_style_code(s) for s in styles], np.int16)])
        self._emo_bits = np.concatenate([self._emo_bits, np.asarray([_emotion_bits(e) for e in emos], np.int64)])
        has = [i for i, t in enumerate(texts) if t]
        if has:
            self._ocr_pos = np.concatenate([self._ocr_pos, start + np.asarray(has, np.int64)])
            self._ocr_vecs = np.concatenate([self._ocr_vecs, ocr_vecs[has]])
        self._vec.add(vecs, all_vectors=lambda: self._vectors_of(self._rows))
        self._hash_cache = None

    def _reader(self):
        if self._ocr is None:
            from .ocr import OCRReader

            self._ocr = OCRReader()
        return self._ocr

    def _encode_ocr(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        idx = [i for i, t in enumerate(texts) if t]
        if idx:
            out[idx] = self.model.encode_texts([texts[i] for i in idx])
        return out

    def _auto_tags(self, vecs: np.ndarray, items: list[_New]) -> list[tuple[list[str], str]]:
        """Zero-shot emotions (top few) and style (top 1) for stickers that lack them."""
        need = [i for i, b in enumerate(items) if b.record is None or not b.record.emotions or not b.record.style]
        out: list[tuple[list[str], str]] = [([], "")] * len(items)
        if not need:
            return out
        emo_t, sty_t = self.tag_vectors()
        scale = float(self.model.logit_scale.detach().exp().clamp(max=100))
        for i in need:
            b = items[i]
            p = _softmax(scale * (emo_t @ vecs[i]))
            order = np.argsort(-p)[:AUTO_EMOTIONS]
            emos = [labels.EMOTIONS[j].key for j in order if j == order[0] or p[j] >= AUTO_MIN_PROB]
            ps = _softmax(scale * (sty_t @ vecs[i]))
            order = np.argsort(-ps)
            sty = labels.STYLES[order[0]].key
            if sty == "harmful" and ps[order[0]] < AUTO_HARMFUL_MIN_PROB:  # hiding needs strong evidence
                sty = labels.STYLES[order[1]].key
            out[i] = ([] if b.record is not None and b.record.emotions else emos,
                      "" if b.record is not None and b.record.style else sty)
        return out

    def tag_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Text vectors of the 30 emotion and 7 style prompts used for auto-tags (computed once)."""
        if self._tag_vecs is None:
            emo = [f"表情包；{lab.zh}" for lab in labels.EMOTIONS]
            sty = [f"表情包；{lab.zh}" for lab in labels.STYLES]
            v = self.model.encode_texts(emo + sty)
            self._tag_vecs = (v[:len(emo)], v[len(emo):])
        return self._tag_vecs

    # -------------------------------------------------------------------------------- removing
    def remove(self, ids: Iterable[str]) -> int:
        """Remove stickers by id (and their file paths); returns how many were removed."""
        ids = [i for i in dict.fromkeys(ids) if i in self._pos_by_id]
        if not ids:
            return 0
        with self._lock:
            with self.db:
                self.db.execute("BEGIN")
                for sid in ids:
                    self.db.execute("DELETE FROM files WHERE hash = (SELECT hash FROM stickers WHERE id = ?)", (sid,))
                    self.db.execute("DELETE FROM stickers WHERE id = ?", (sid,))
            self._after_removal()
        return len(ids)

    def prune(self) -> int:
        """Forget files that no longer exist; remove stickers left without any file."""
        with self._lock:
            gone = [p for (p,) in self.db.execute("SELECT path FROM files")
                    if not p.startswith(LMDB_SCHEME) and not os.path.exists(p)]
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in gone])
        return self._drop_orphans()

    def _drop_orphans(self) -> int:
        """Stickers no file path refers to any more (deleted or changed files) are removed."""
        with self._lock:
            with self.db:
                self.db.execute("BEGIN")
                n = self.db.execute("DELETE FROM stickers WHERE hash NOT IN (SELECT hash FROM files)").rowcount
                # a sticker whose first path is gone is shown under one of its remaining paths
                self.db.execute("UPDATE stickers SET path = (SELECT path FROM files WHERE files.hash = stickers.hash "
                                "ORDER BY path LIMIT 1) WHERE path NOT IN (SELECT path FROM files)")
            if n:
                self._after_removal()
        return n

    def _after_removal(self) -> None:
        self._load_state()
        if len(self._vec) != len(self._rows):
            self._vec = VectorIndex(self.dim, self._exact_max)
            if len(self._rows):
                self._vec.rebuild(self._vectors_of(self._rows))
        self._hash_cache = None
        self.save()

    # ---------------------------------------------------------------------------------- search
    def search(self, text: str | None = None, image=None, k: int = 24, emotions=None, style: str | None = None,
               safe: bool = True, exclude: Iterable[str] = (), beta: float = BETA, mix: float = MIX,
               query_vectors: tuple[np.ndarray | None, np.ndarray | None] | None = None) -> list[Hit]:
        """Top-k stickers for a text, a sticker (path, bytes, PIL image or StickerImage), or both.

        `emotions` (any of these) and `style` filter on the annotated labels, else the auto-tags;
        `safe` hides the harmful style; `exclude` drops sticker ids already shown. `query_vectors`
        passes precomputed (text vector, image vector) instead of encoding `text` / `image`."""
        if query_vectors is not None:
            qt, qi = query_vectors
        else:
            text = text.strip() if isinstance(text, str) else text
            if not text and image is None:
                raise ValueError("search needs a text, an image or both")
            qt = self.model.encode_texts([text])[0] if text else None
            qi = self.model.encode_images([image])[0] if image is not None else None
        with self._lock:
            n = len(self._rows)
            if n == 0 or k <= 0:
                return []
            allowed = self._allowed(emotions, style, safe, exclude)
            if allowed is not None and not allowed.any():
                return []
            if self._vec.kind == "exact":
                pos = np.arange(n)
                scores = self._scores(self._vec.vectors(), pos, qt, qi, beta, mix)
                if allowed is not None:
                    scores = np.where(allowed, scores, -np.inf)
            else:
                pos = self._candidates(qt, qi, k, allowed)
                scores = self._scores(self._vectors_of(self._rows[pos]), pos, qt, qi, beta, mix)
            k = min(k, len(pos))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            top = [t for t in top if np.isfinite(scores[t])]
            return self._hits([int(pos[t]) for t in top], [float(scores[t]) for t in top], qt, qi, beta)

    def _scores(self, vecs: np.ndarray, pos: np.ndarray, qt, qi, beta: float, mix: float) -> np.ndarray:
        """Scores of the stickers at `pos` (their image vectors `vecs`, (m, D)) -> (m,)."""
        text = image = None
        if qt is not None:
            text = vecs @ qt + beta * self._ocr_scores(pos, qt)
        if qi is not None:
            image = vecs @ qi
        if text is not None and image is not None:
            return mix * text + (1 - mix) * image
        return text if text is not None else image

    def _ocr_scores(self, pos: np.ndarray, qt: np.ndarray) -> np.ndarray:
        """OCR-text similarity for stickers at `pos`, 0 where a sticker has no OCR text."""
        out = np.zeros(len(pos), np.float32)
        if len(self._ocr_pos):
            where = np.searchsorted(self._ocr_pos, pos)
            where = np.minimum(where, len(self._ocr_pos) - 1)
            has = self._ocr_pos[where] == pos
            out[has] = self._ocr_vecs[where[has]] @ qt
        return out

    def _candidates(self, qt, qi, k: int, allowed) -> np.ndarray:
        """Approximate index: positions to rescore, from the image index and the OCR vectors."""
        want = 4 * k + 64
        cand = []
        for q in (qt, qi):
            if q is not None:
                _, p = self._vec.search(q, want, allowed)
                cand.append(p[0][p[0] >= 0])
        if qt is not None and len(self._ocr_pos):
            s = self._ocr_vecs @ qt
            if allowed is not None:
                s = np.where(allowed[self._ocr_pos], s, -np.inf)
            m = min(want, len(s))
            best = np.argpartition(-s, m - 1)[:m]
            cand.append(self._ocr_pos[best[np.isfinite(s[best])]])
        return np.unique(np.concatenate(cand)) if cand else np.zeros(0, np.int64)

    def _allowed(self, emotions, style, safe: bool, exclude) -> np.ndarray | None:
        mask = None

        def both(m):
            return m if mask is None else mask & m

        if emotions:
            keys, _ = labels.parse_emotions(emotions, strict=True)
            mask = both((self._emo_bits & _emotion_bits(keys)) != 0)
        if style:
            mask = both(self._style == _style_code(labels.style(style).key))
        if safe:
            mask = both(self._style != _style_code("harmful"))
        drop = [self._pos_by_id[i] for i in exclude if i in self._pos_by_id]
        if drop:
            mask = np.ones(len(self._rows), bool) if mask is None else mask.copy()
            mask[drop] = False
        return mask

    def _hits(self, positions: list[int], scores: list[float], qt, qi, beta: float) -> list[Hit]:
        if not positions:
            return []
        rows = self._rows[positions]
        q = ("SELECT row, id, path, description, emotions, style, ocr, auto_emotions, auto_style, width, height, "
             f"frames, vec, ocr_vec FROM stickers WHERE row IN ({','.join('?' * len(rows))})")
        meta = {r[0]: r for r in self.db.execute(q, [int(x) for x in rows])}
        hits = []
        for row, score in zip(rows, scores):
            (_, sid, path, desc, em, st, ocr, aem, ast, w, h, fr, vec, ovec) = meta[int(row)]
            v = np.frombuffer(vec, np.float32)
            img_s = float(v @ qi) if qi is not None else None
            txt_s = None
            if qt is not None:
                txt_s = float(v @ qt) + (beta * float(np.frombuffer(ovec, np.float32) @ qt) if ovec is not None else 0.0)
            hits.append(Hit(sid, path, score, img_s, txt_s, desc, json.loads(em), st, ocr, json.loads(aem), ast,
                            w, h, fr))
        return hits

    def get(self, sticker_id: str) -> Hit | None:
        """A sticker's metadata by id (score 0), or None."""
        with self._lock:
            r = self.db.execute("SELECT id, path, description, emotions, style, ocr, auto_emotions, auto_style, "
                                "width, height, frames FROM stickers WHERE id = ?", (sticker_id,)).fetchone()
        if r is None:
            return None
        return Hit(r[0], r[1], 0.0, None, None, r[2], json.loads(r[3]), r[4], r[5], json.loads(r[6]), r[7],
                   r[8], r[9], r[10])

    def ids(self) -> list[str]:
        return list(self._ids)


class IndexSet:
    """Several StickerIndexes of one model searched as one (the gallery and a person's own library):
    the query is encoded once, each index is searched, hits are merged by score."""

    def __init__(self, indexes: Iterable[StickerIndex]):
        self.indexes = [i for i in indexes if i is not None]
        if not self.indexes:
            raise ValueError("IndexSet needs at least one index")
        models = {i.info()["model"] for i in self.indexes}
        if len(models) > 1:
            raise IndexModelMismatch(f"indexes built with different models: {sorted(models)}")
        self.model = self.indexes[0].model

    def __len__(self) -> int:
        return sum(len(i) for i in self.indexes)

    def info(self) -> dict:
        infos = [i.info() for i in self.indexes]
        return {"stickers": len(self), "model": infos[0]["model"], "indexes": infos}

    def search(self, text: str | None = None, image=None, k: int = 24, query_vectors=None, **filters) -> list[Hit]:
        """StickerIndex.search over every index; the best k overall (an id found twice kept once)."""
        if query_vectors is None:
            text = text.strip() if isinstance(text, str) else text
            if not text and image is None:
                raise ValueError("search needs a text, an image or both")
            query_vectors = (self.model.encode_texts([text])[0] if text else None,
                             self.model.encode_images([image])[0] if image is not None else None)
        hits: list[Hit] = []
        for index in self.indexes:
            hits += index.search(k=k, query_vectors=query_vectors, **filters)
        hits.sort(key=lambda h: -h.score)
        seen, out = set(), []
        for h in hits:
            if h.id not in seen:
                seen.add(h.id)
                out.append(h)
        return out[:k]

    def get(self, sticker_id: str) -> Hit | None:
        for index in self.indexes:
            hit = index.get(sticker_id)
            if hit is not None:
                return hit
        return None


# ------------------------------------------------------------------------------------- helpers
def _walk(root: Path, summary: IndexSummary):
    """Sticker-like files under root, sorted; symlinks leaving the folder are refused."""
    def err(exc: OSError):
        summary.failed.append((exc.filename or str(root), exc.strerror or str(exc)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=err, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, name)
            if not _utf8(path):  # SQLite keeps paths as UTF-8 text: such a name would fail the whole batch
                summary.failed.append((_shown(path), "file name is not valid UTF-8 (rename the file)"))
                continue
            if os.path.islink(path):
                try:
                    target = Path(path).resolve(strict=True)
                except (OSError, RuntimeError) as exc:
                    summary.failed.append((path, f"broken or looping symlink ({exc.__class__.__name__})"))
                    continue
                if root not in target.parents:
                    summary.failed.append((path, "symlink points outside the folder"))
                    continue
            yield path


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.walk gives undecodable bytes of a name as lone surrogates
        return False


def _shown(path: str) -> str:
    """A path that can be printed and stored: undecodable bytes of its name as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _style_code(key: str) -> int:
    return labels.STYLE_KEYS.index(key) if key in labels.STYLE_KEYS else -1


def _emotion_bits(keys) -> int:
    bits = 0
    for k in keys:
        if k in labels.EMOTION_KEYS:
            bits |= 1 << labels.EMOTION_KEYS.index(k)
    return bits


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


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
