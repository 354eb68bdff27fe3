"""Adding stickers to an index: walk a folder (or take records), read and hash each file, encode
the new content, read OCR text, auto-tag, and commit batch by batch.

Each batch is one SQLite transaction; vectors.npz is rewritten at the end (and every
SAVE_EVERY_S during a long add), so a kill at any moment leaves an index that opens, and the same
add run again finishes the job. A full disk raises IndexDiskFull with what was kept.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import labels
from .data import StickerRecord, image_source, is_utf8, printable_path, walk_stickers
from .images import StickerImage, StickerImageError, load_sticker, read_sticker_bytes
from .index_store import IndexStore, emotion_bits, style_code

AUTO_EMOTIONS = 3  # auto-tags: at most this many emotions ...
AUTO_MIN_PROB = 0.15  # ... each with at least this zero-shot probability (the top one always)
AUTO_HARMFUL_MIN_PROB = 0.6  # auto-tag "harmful" (hidden in safe mode) only when this sure
SAVE_EVERY_S = 60.0  # rewrite vectors.npz at least this often during a long add


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


class IndexAdder(IndexStore):
    """add_folder, add and carry_over: what brings stickers into the store."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ocr = None  # the OCR reader, made on first use
        self._tag_vecs = None  # the auto-tag prompts' text vectors, made on first use
        self._changed = 0  # files whose content changed, counted as updated, not removed

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
        if not is_utf8(str(root)):
            raise ValueError(f"{printable_path(str(root))}: folder name is not valid UTF-8 (rename the folder)")
        summary = IndexSummary()
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO folders VALUES (?, ?)", (str(root), time.time()))
            known = {p: (h, s, m) for p, h, s, m in self.db.execute(
                "SELECT path, hash, size, mtime_ns FROM files WHERE path >= ? AND path < ?",
                (str(root) + os.sep, str(root) + chr(ord(os.sep) + 1)))}
        todo = []
        for path in walk_stickers(root, lambda path, why: summary.failed.append((path, why))):
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

    # ------------------------------------------------------------------ read, encode, commit
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
        """Extend the in-memory state by a committed batch (without reloading it all)."""
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
        self._style = np.concatenate([self._style, np.asarray([style_code(s) for s in styles], np.int16)])
        self._emo_bits = np.concatenate([self._emo_bits, np.asarray([emotion_bits(e) for e in emos], np.int64)])
        has = [i for i, t in enumerate(texts) if t]
        if has:
            self._ocr_pos = np.concatenate([self._ocr_pos, start + np.asarray(has, np.int64)])
            self._ocr_vecs = np.concatenate([self._ocr_vecs, ocr_vecs[has]])
            self._ocr_texts = self._ocr_texts + [texts[i] for i in has]
        self._vec.add(vecs, all_vectors=lambda: self._vectors_of(self._rows))
        self._hash_cache = None

    # ------------------------------------------------------------------------ OCR, auto-tags
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


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, np.float32).tobytes()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
