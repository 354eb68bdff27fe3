"""Where a StickerIndex keeps its stickers: `meta.sqlite` (the truth) and `vectors.npz` (a cache of
its image vectors), and the arrays search reads, loaded from them.

`IndexStore` opens or creates the directory, checks the model, loads the in-memory state
(positions, filter arrays, OCR vectors, the faiss index), and removes stickers. Adding is in
index_add, searching in index_search; StickerIndex (index.py) is the three together.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from . import labels
from .data import LMDB_SCHEME
from .vectors import EXACT_MAX, VectorIndex

SCHEMA_VERSION = "1"

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


class IndexStore:
    """Stickers (image vectors in faiss, metadata in SQLite) in one directory. Thread-safe.

    In memory, for search: `_rows` (SQLite row of each position), `_ids`, `_pos_by_id`, `_style`
    and `_emo_bits` (filter arrays), `_ocr_pos` / `_ocr_vecs` / `_ocr_texts` (positions with OCR text, their
    text vectors and texts) and `_vec` (the faiss index over image vectors, by position)."""

    def __init__(self, directory: Path, model, conn: sqlite3.Connection, ocr: bool, exact_max: int):
        self.directory = directory
        self.model = model
        self.db = conn
        self.ocr_enabled = ocr
        self._lock = threading.RLock()
        self._exact_max = exact_max
        self._hash_cache = None
        self._load_state()

    # ------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, directory: str | os.PathLike, model=None, *, ocr: bool = True, exact_max: int = EXACT_MAX,
             create: bool = True):
        """Open (or create) the index in `directory`.

        `model` is a StickerCLIP or a `load_model` source; None means the model the index was built
        with (the embedded default for a new index). Raises IndexModelMismatch for another model."""
        from .model import DEFAULT_MODEL
        from .factory import load_model

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

    def ids(self) -> list[str]:
        return list(self._ids)

    # ----------------------------------------------------------------------- in-memory state
    def _load_state(self) -> None:
        """Positions, filter arrays and OCR vectors from SQLite; the faiss index from its file."""
        rows, ids, styles, emos, ocr_pos, ocr_vecs, ocr_texts = [], [], [], [], [], [], []
        cur = self.db.execute("SELECT row, id, style, auto_style, emotions, auto_emotions, ocr_vec, ocr FROM stickers "
                              "ORDER BY row")
        for pos, (row, sid, style, astyle, em, aem, ovec, ocr) in enumerate(cur):
            rows.append(row)
            ids.append(sid)
            styles.append(style or astyle)
            emos.append(json.loads(em) or json.loads(aem))
            if ovec is not None:
                ocr_pos.append(pos)
                ocr_vecs.append(np.frombuffer(ovec, np.float32))
                ocr_texts.append(ocr or "")
        self._rows = np.asarray(rows, np.int64)
        self._ids = ids
        self._pos_by_id = {s: i for i, s in enumerate(ids)}
        self._style = np.asarray([style_code(s) for s in styles], np.int16).reshape(-1)
        self._emo_bits = np.asarray([emotion_bits(e) for e in emos], np.int64).reshape(-1)
        self._ocr_pos = np.asarray(ocr_pos, np.int64)
        self._ocr_vecs = np.stack(ocr_vecs) if ocr_vecs else np.zeros((0, self.dim), np.float32)
        self._ocr_texts = ocr_texts
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

    def _hashes(self) -> set[str]:
        """Content hashes of the stored stickers (cached)."""
        if self._hash_cache is None or len(self._hash_cache) != len(self):
            self._hash_cache = {h for (h,) in self.db.execute("SELECT hash FROM stickers")}
        return self._hash_cache

    def save(self) -> None:
        """Write vectors.npz for the committed rows (atomic)."""
        with self._lock:
            self._vec.save(self.directory / "vectors.npz", {"rows": self._rows})

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


# ------------------------------------------------------------------------------ filter arrays
def style_code(key: str) -> int:
    """A style key as stored in the filter array (-1: none or unknown)."""
    return labels.STYLE_KEYS.index(key) if key in labels.STYLE_KEYS else -1


def emotion_bits(keys) -> int:
    """Emotion keys as a bit set, one bit per emotion of labels.EMOTION_KEYS."""
    bits = 0
    for k in keys:
        if k in labels.EMOTION_KEYS:
            bits |= 1 << labels.EMOTION_KEYS.index(k)
    return bits
