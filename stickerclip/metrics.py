"""Retrieval metrics with the paper's protocol: item i of the queries is paired with item i of the
gallery; a hit at K when the paired item ranks in the top K over the whole gallery; MR is the mean
of R@1, R@5 and R@10. Similarities are computed block by block, so memory stays bounded."""
from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def paired_ranks(queries: np.ndarray, gallery: np.ndarray, block: int = 4096) -> np.ndarray:
    """0-based rank of gallery[i] for queries[i]: how many gallery items score strictly higher.

    queries (N, D) and gallery (N, D), both L2-normalised. Peak memory is block x N floats.
    """
    q = np.asarray(queries, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    if q.shape != g.shape:
        raise ValueError(f"queries {q.shape} and gallery {g.shape} must pair one to one")
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), block):
        sims = q[start:start + block] @ g.T  # (b, N)
        own = sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])]  # (b,)
        ranks[start:start + block] = (sims > own[:, None]).sum(1)
    return ranks


def recall_from_ranks(ranks: np.ndarray, ks=KS) -> dict[str, float]:
    """R@K in percent for each K, and MR (their mean)."""
    ranks = np.asarray(ranks)
    out = {f"R@{k}": round(float((ranks < k).mean() * 100.0), 2) if len(ranks) else 0.0 for k in ks}
    out["MR"] = round(float(np.mean([out[f"R@{k}"] for k in ks])), 2)
    return out


def paired_recall(queries: np.ndarray, gallery: np.ndarray, block: int = 4096) -> dict[str, float]:
    """R@1/5/10 and MR of queries[i] finding gallery[i] over the whole gallery (`paired_ranks`)."""
    return recall_from_ranks(paired_ranks(queries, gallery, block))


def retrieval_metrics(image_feats: np.ndarray, text_feats: np.ndarray, block: int = 4096) -> dict:
    """{"t2i": {...}, "i2t": {...}, "n": N} for paired image and text features."""
    return {
        "t2i": paired_recall(text_feats, image_feats, block),
        "i2t": paired_recall(image_feats, text_feats, block),
        "n": int(len(image_feats)),
    }


def first_relevant_ranks(queries: np.ndarray, gallery: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based rank of the best-placed relevant gallery item for each query.

    queries (Q, D), gallery (G, D), both L2-normalised; relevant (Q, G) bool: which gallery items
    answer each query (a concept drawn in several styles, every sticker carrying a keyword). A query
    with no relevant item gets rank G (a miss at every K)."""
    sims = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T  # (Q, G)
    best = np.where(relevant, sims, -np.inf).max(axis=1)  # (Q,)
    ranks = (sims > best[:, None]).sum(1)
    ranks[~relevant.any(axis=1)] = sims.shape[1]
    return ranks


def precision_at(queries: np.ndarray, gallery: np.ndarray, relevant: np.ndarray, k: int = 8) -> float:
    """Mean share (percent) of each query's top k gallery items that are relevant."""
    sims = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T  # (Q, G)
    top = np.argsort(-sims, axis=1)[:, :k]  # (Q, k)
    return round(float(np.take_along_axis(relevant, top, axis=1).mean() * 100.0), 2)
