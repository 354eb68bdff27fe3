"""Search latency and approximate-index recall: the default gallery and synthetic 10k / 100k / 1M.

    python -m bench.bench_search [--sizes 10000 100000 1000000] [--queries 200] [--threads 2]

Default gallery: `StickerIndex.search(text=...)` end to end (text encoding, hybrid OCR score,
filters, metadata), p50/p99 over distinct queries. Synthetic galleries: the vector part is
synthetic (clustered unit vectors like real sticker embeddings: points around 2,000 centres, and
queries near them; also a row of plain random unit vectors, the worst case for any approximate
index), the text encoding is the default model's on real query strings, so the end-to-end figure is
text encoding + vector search + hybrid rescoring of the candidates, as `StickerIndex` does above
its exact-search threshold. Recall@10 is against exact search on the same vectors. Memory: resident
size added by opening the saved 1M index.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stickerclip.vectors import EXACT_MAX, VectorIndex

QUERIES = ["晚安", "谢谢老板", "开心到飞起", "我拒绝", "生气的猫", "哈哈哈笑死", "好的收到", "一只狗", "加油",
           "心碎了", "点赞", "早上好", "害羞的脸", "无语", "吃瓜", "抱抱", "冲鸭", "委屈", "哭了", "天哪",
           "good night", "thank you boss", "so happy", "no way"]


def opened_rss_mb(path: Path) -> float:
    """Resident MB that opening a saved index adds, measured in a fresh process."""
    import subprocess
    import sys

    code = ("from stickerclip.runtime import rss_mib; from stickerclip.vectors import VectorIndex; "
            f"r = rss_mib(); v, rows = VectorIndex.load({str(path)!r}); print(rss_mib() - r)")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    return float(out.stdout.strip().splitlines()[-1])


def pct(xs, p):
    return float(np.percentile(np.asarray(xs) * 1000, p))


def query_texts(n: int) -> list[str]:
    """n distinct query strings (so no cache helps)."""
    return [f"{QUERIES[i % len(QUERIES)]}{'！' * (i // len(QUERIES))}" for i in range(n)]


def clustered(n: int, dim: int, rng, centres: np.ndarray, spread: float = 0.6) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + spread / np.sqrt(dim) * rng.normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at_10(index: VectorIndex, data: np.ndarray, queries: np.ndarray) -> float:
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    _, got = index.search(queries, 10)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got)]))


def bench_gallery(model, n_queries: int):
    from stickerclip.gallery import default_index

    t0 = time.perf_counter()
    index = default_index(model)
    ready = time.perf_counter() - t0
    texts = query_texts(n_queries)
    index.search(text="热身", k=24)
    times = []
    for q in texts:
        t = time.perf_counter()
        index.search(text=q, k=24)
        times.append(time.perf_counter() - t)
    return len(index), index._vec.kind, ready, times


def bench_synthetic(model, n: int, n_queries: int, rng, structured: bool = True, exact_max: int = EXACT_MAX):
    dim = model.config.embed_dim
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    data = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        data[s:e] = clustered(e - s, dim, rng, centres) if structured else \
            (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(rng.normal(size=(e - s, dim)).astype(np.float32))
    t0 = time.perf_counter()
    index = VectorIndex(dim, exact_max)
    index.rebuild(data)
    build = time.perf_counter() - t0
    if structured:
        queries = clustered(n_queries, dim, rng, centres, spread=0.9)
    else:
        queries = rng.normal(size=(n_queries, dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    recall = recall_at_10(index, data, queries) if index.kind == "ivf" else 1.0
    texts = query_texts(n_queries)
    model.encode_texts(["热身"])
    times = []
    for q, qv in zip(texts, queries):
        t = time.perf_counter()
        model.encode_texts([q])  # the real text encoding a query pays
        _, pos = index.search(qv, 4 * 24 + 64) if index.kind == "ivf" else index.search(qv, 24)
        if index.kind == "ivf":  # rescoring the candidates exactly, as StickerIndex does
            cand = pos[0][pos[0] >= 0]
            top = np.argsort(-(data[cand] @ qv))[:24]
        times.append(time.perf_counter() - t)
    mem, kind = None, index_kind(index)
    if n >= 1_000_000:
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "v.npz", {"rows": np.arange(n, dtype=np.int64)})
            mem = opened_rss_mb(Path(tmp) / "v.npz")
    return kind, build, recall, times, mem


def index_kind(index: VectorIndex) -> str:
    if index.kind == "exact":
        return "exact (flat IP)"
    return f"IVF{index.index.nlist},SQfp16 nprobe {index.nprobe}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--random", action="store_true", help="also plain random unit vectors (worst case)")
    ap.add_argument("--model", default=None, help="StickerCLIP to encode queries with (default: the embedded one)")
    ap.add_argument("--exact-max", type=int, default=EXACT_MAX, help="largest exact index")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    from stickerclip.model import DEFAULT_MODEL
    from stickerclip.factory import load_model

    model = load_model(args.model or DEFAULT_MODEL)
    rows = []
    n, kind, ready, times = bench_gallery(model, args.queries)
    rows.append((f"default gallery ({n})", f"exact; StickerIndex end to end", "-", "1.000", pct(times, 50),
                 pct(times, 99), f"opened/built in {ready:.1f} s"))
    enc = []
    for q in query_texts(args.queries):
        t = time.perf_counter()
        model.encode_texts([q])
        enc.append(time.perf_counter() - t)
    rows.append(("text encoding alone", "default model", "-", "-", pct(enc, 50), pct(enc, 99), ""))
    rng = np.random.default_rng(0)
    for size in args.sizes:
        for structured in ([True, False] if args.random else [True]):
            kind, build, recall, times, mem = bench_synthetic(model, size, args.queries, rng, structured,
                                                              args.exact_max)
            rows.append((f"synthetic {size:,}" + ("" if structured else " (random)"), kind, f"{build:.1f}",
                         f"{recall:.3f}", pct(times, 50), pct(times, 99),
                         f"index RSS {mem:.0f} MB" if mem is not None else ""))
            print(rows[-1], flush=True)
    print(f"\nsearch latency, {args.threads} threads, {args.queries} distinct text queries, k=24\n")
    print("| gallery | index | build s | recall@10 | p50 ms | p99 ms | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} | {r[6]} |")
    return rows


if __name__ == "__main__":
    main()
