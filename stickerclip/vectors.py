"""Inner-product search over unit vectors with faiss, index type chosen by size.

Up to `exact_max` vectors: exact search (faiss IndexFlatIP). Above: an inverted-file index
(IndexIVFScalarQuantizer, fp16 codes: half the memory of float32, recall measured in
bench/bench_search.py) with `nlist` ~ 4·sqrt(N) lists and `nprobe` lists scanned per query.
Vectors are addressed by position 0..N-1; the caller maps positions to its own ids.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

EXACT_MAX = 50_000
NPROBE = 64


class VectorIndex:
    """Positions 0..N-1 -> unit vectors of one dimension; `search` takes an optional allowed mask."""

    def __init__(self, dim: int, exact_max: int = EXACT_MAX, nprobe: int = NPROBE):
        import faiss

        self.dim = dim
        self.exact_max = exact_max
        self.nprobe = nprobe
        self.index = faiss.IndexFlatIP(dim)
        self.trained_at = 0  # size the IVF was trained at (0: exact)

    # ---------------------------------------------------------------------------------- state
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return "ivf" if self.trained_at else "exact"

    def vectors(self) -> np.ndarray:
        """(N, D) stored vectors without a copy (exact index only)."""
        import faiss

        if self.kind != "exact":
            raise TypeError("stored vectors are only readable from an exact index")
        n = len(self)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        return faiss.rev_swig_ptr(self.index.get_xb(), n * self.dim).reshape(n, self.dim)

    # ---------------------------------------------------------------------------------- writes
    def add(self, vecs: np.ndarray, all_vectors=None) -> None:
        """Append (n, D) vectors at positions N..N+n-1.

        Crossing `exact_max`, or growing 4x past the size an IVF was trained at, rebuilds the index;
        `all_vectors()` must then return every vector (old and new) in position order."""
        vecs = _f32(vecs, self.dim)
        n = len(self) + len(vecs)
        if n > self.exact_max and (self.kind == "exact" or n > 4 * self.trained_at):
            full = all_vectors() if all_vectors is not None else np.concatenate([self.vectors(), vecs])
            if len(full) != n:
                raise ValueError(f"all_vectors() gave {len(full)} vectors, expected {n}")
            self.rebuild(full)
            return
        self.index.add(vecs)

    def rebuild(self, vecs: np.ndarray, seed: int = 0) -> None:
        """Replace the contents with (N, D) vectors, choosing the index type for N."""
        import faiss

        vecs = _f32(vecs, self.dim)
        n = len(vecs)
        if n <= self.exact_max:
            index = faiss.IndexFlatIP(self.dim)
            self.trained_at = 0
        else:
            nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                  faiss.METRIC_INNER_PRODUCT)
            sample = vecs[np.random.default_rng(seed).choice(n, size=min(n, nlist * 40), replace=False)]
            index.train(sample)
            index.own_fields = True
            quantizer.this.disown()
            self.trained_at = n
        index.add(vecs)
        self.index = index

    # ---------------------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
        """(m, D) queries -> (scores (m, k), positions (m, k)); position -1 where fewer than k match.

        `allowed` is a bool mask over positions (None: all)."""
        import faiss

        q = _f32(np.atleast_2d(queries), self.dim)
        k = max(1, min(k, len(self)))
        if len(self) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        params = faiss.SearchParametersIVF(nprobe=self.nprobe) if self.kind == "ivf" else faiss.SearchParameters()
        if allowed is not None:
            if len(allowed) != len(self):
                raise ValueError(f"allowed mask has {len(allowed)} entries for {len(self)} vectors")
            bits = np.packbits(np.asarray(allowed, bool), bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            scores, pos = self.index.search(q, k, params=params)
            del bits  # kept alive until the search returned
            return scores, pos
        return self.index.search(q, k, params=params)

    # ---------------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike, extra: dict[str, np.ndarray] | None = None) -> None:
        """Write atomically (temp file, fsync, rename), together with the caller's `extra` arrays."""
        import faiss

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        meta = np.array([self.dim, self.exact_max, self.nprobe, self.trained_at], np.int64)
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, faiss_index=faiss.serialize_index(self.index), faiss_meta=meta, **(extra or {}))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk, say: the old file stays, the partial one goes
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["VectorIndex", dict[str, np.ndarray]]:
        """(index, extra arrays) from a file written by `save`."""
        import faiss

        with np.load(path, allow_pickle=False) as z:
            dim, exact_max, nprobe, trained_at = (int(x) for x in z["faiss_meta"])
            out = cls(dim, exact_max, nprobe)
            out.index = faiss.deserialize_index(z["faiss_index"])
            out.trained_at = trained_at
            extra = {k: z[k] for k in z.files if not k.startswith("faiss_")}
        return out, extra


def _f32(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"vectors of shape {x.shape}, expected (n, {dim})")
    return x
