"""The gallery vector index past a million stickers: build, memory, latency, throughput, recall.

    python -m bench.bench_index_scale [--sizes 1000000,5000000] [--queries 200] [--threads N] [--smoke]

Vectors: synthetic, 256-d float32 unit vectors (StickerCLIP's default dimension), but structured,
not uniform noise: a seeded mixture of 20,000 Gaussian clusters. A centre is a shared direction
(as real embeddings share one) + one of 256 "topic" directions + a direction of its own (random
pairs of centres: cosine ~0.3; same topic: ~0.6); a cluster has its own spread (two members:
cosine ~0.45-0.67; two random points: ~0.15) and a log-normal weight (a few large clusters, many
small). Queries are held-out members of the clusters (drawn fresh, never added, picked by cluster
weight, with 20 % more spread), so their neighbours are other members of their cluster. Real
sticker embeddings will differ: the recall here says how the index types compare on clustered
data, not what real queries get.

Per size, rows:
  (a) exact IndexFlatIP, the baseline (what search costs without an ANN index);
  (b) `stickerclip.vectors.VectorIndex` as the app builds it (IVF, fp16 scalar quantizer, nlist
      ~4*sqrt(N), nprobe 64), searched through `VectorIndex.search`;
  (b') the same index as a chat retrieval calls it: safe mode on (a mask over all N, 3 % of the
      synthetic stickers marked harmful, computed per query as `StickerIndex._allowed` does),
      4k+64 = 96 candidates, exact rescoring of the candidates from the float32 vectors (the app
      reads those from SQLite; here they are in memory, so that cost is not in the figure);
  (c) IndexIVFPQ, same nlist and nprobe, `--pq-m` bytes per vector (8-bit codes);
  (d) IndexHNSWFlat (M 32, efConstruction 40, efSearch 64), only up to `--hnsw-max` vectors
      (its build is much slower than IVF's on 2 cores).
Build s: adding (and training) from vectors already in memory. Index MiB: the bytes
`faiss.write_index` writes (= `serialize_index`), counted without a copy. Latency: k = 8, one
query at a time as the app searches (the app never sets faiss's thread count, so neither does this
bench unless `--threads`), after one warm-up query; the exact row stops after `--flat-seconds`
(at least 20 queries). Throughput: batches of 64 queries, k = 8. Recall@8: against exact search
(numpy, float32) over the same vectors, on `--queries` queries; a result counts when its true
score is within 1e-5 of the 8th best (ties). "96 rescored": the top 8 after exact rescoring of the
index's top 96, which is what `StickerIndex` does above its exact threshold.

Prints progress to stderr, a markdown table and one JSON line on stdout. `--smoke`: tiny sizes and
dimension, a few seconds.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import sys
import time

import numpy as np

from stickerclip.runtime import rss_mib
from stickerclip.vectors import EXACT_MAX, NPROBE, VectorIndex

K = 8
CANDIDATES = 4 * K + 64  # what StickerIndex._candidates asks the approximate index for
HARMFUL = 1  # style code of the synthetic "harmful" stickers (safe mode drops them)
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# ------------------------------------------------------------------------------ synthetic data
class Mixture:
    """A seeded mixture of Gaussian clusters on the unit sphere (see the module docstring)."""

    def __init__(self, dim: int, clusters: int, topics: int, seed: int):
        rng = np.random.default_rng(seed)
        self.dim = dim
        shared = unit(rng.standard_normal((1, dim), dtype=np.float32))
        topic = unit(rng.standard_normal((topics, dim), dtype=np.float32))
        own = unit(rng.standard_normal((clusters, dim), dtype=np.float32))
        self.centres = unit(np.sqrt(0.3) * shared + np.sqrt(0.3) * topic[rng.integers(0, topics, clusters)]
                            + np.sqrt(0.4) * own).astype(np.float32)
        self.spread = rng.uniform(0.7, 1.1, clusters).astype(np.float32)
        w = rng.lognormal(0.0, 1.0, clusters)
        self.weights = w / w.sum()

    def draw(self, rng, n: int, more_spread: float = 1.0) -> np.ndarray:
        c = rng.choice(len(self.centres), size=n, p=self.weights)
        x = rng.standard_normal((n, self.dim), dtype=np.float32)
        x *= (more_spread * self.spread[c] / np.sqrt(self.dim))[:, None]
        x += self.centres[c]
        return unit(x)


def exact_gallery(mix: Mixture, n: int, rng, chunk: int = 250_000):
    """(IndexFlatIP holding n drawn vectors, a view of its storage, seconds spent in add)."""
    import faiss

    flat = faiss.IndexFlatIP(mix.dim)
    add_s = 0.0
    for s in range(0, n, chunk):
        x = mix.draw(rng, min(chunk, n - s))
        t = time.perf_counter()
        flat.add(x)
        add_s += time.perf_counter() - t
        del x
    data = faiss.rev_swig_ptr(flat.get_xb(), n * mix.dim).reshape(n, mix.dim)
    return flat, data, add_s


def true_top(data: np.ndarray, queries: np.ndarray, allowed: np.ndarray, k: int = K, chunk: int = 250_000):
    """k-th best exact score per query, over all vectors and over the allowed ones (numpy, float32)."""
    m = len(queries)
    best = np.full((m, k), -np.inf, np.float32)
    best_ok = np.full((m, k), -np.inf, np.float32)
    for s in range(0, len(data), chunk):
        sc = queries @ data[s:s + chunk].T
        best = np.partition(np.concatenate([best, np.partition(sc, -k, axis=1)[:, -k:]], axis=1), -k, axis=1)[:, -k:]
        sc[:, ~allowed[s:s + chunk]] = -np.inf
        best_ok = np.partition(np.concatenate([best_ok, np.partition(sc, -k, axis=1)[:, -k:]], axis=1),
                               -k, axis=1)[:, -k:]
        del sc
    return best.min(axis=1), best_ok.min(axis=1)


def recall(found: np.ndarray, queries: np.ndarray, data: np.ndarray, kth: np.ndarray,
           allowed: np.ndarray | None = None, k: int = K) -> float:
    """Tie-aware recall@k: a found position counts when its exact score is within 1e-5 of the kth best."""
    good = 0
    for q, row, t in zip(queries, found, kth):
        row = np.unique(row[row >= 0][:k])
        if allowed is not None:
            row = row[allowed[row]]
        good += int(np.sum(data[row] @ q >= t - 1e-5))
    return good / (k * len(queries))


def rescore(cands: np.ndarray, queries: np.ndarray, data: np.ndarray, k: int = K) -> np.ndarray:
    """Top k of each query's candidates by exact score (-1 where fewer)."""
    out = np.full((len(queries), k), -1, np.int64)
    for i, (q, c) in enumerate(zip(queries, cands)):
        c = c[c >= 0]
        top = c[np.argsort(-(data[c] @ q), kind="stable")[:k]]
        out[i, :len(top)] = top
    return out


# ------------------------------------------------------------------------------ measurement
def serialized_bytes(index) -> int:
    """Bytes faiss.write_index writes for `index` (= len(serialize_index(index))), without holding them."""
    import faiss

    total = [0]

    def count(buf):
        total[0] += len(buf)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer
    return total[0]


def single_queries(search1, queries: np.ndarray, budget_s: float | None = None, min_n: int = 20):
    """(seconds per query, positions (n, k)) for one query at a time; stops past `budget_s`."""
    search1(queries[:1])  # warm-up
    times, found = [], []
    start = time.perf_counter()
    for i in range(len(queries)):
        t = time.perf_counter()
        found.append(search1(queries[i:i + 1]))
        times.append(time.perf_counter() - t)
        if budget_s is not None and i + 1 >= min_n and time.perf_counter() - start > budget_s:
            break
    return np.asarray(times), np.concatenate(found)


def batch_throughput(search_batch, pool: np.ndarray, batch: int = 64, budget_s: float = 3.0,
                     min_batches: int = 2) -> float:
    """Queries/s over batches of `batch` distinct queries (at least `min_batches`, then until `budget_s`)."""
    done = 0
    start = time.perf_counter()
    for s in range(0, len(pool) - batch + 1, batch):
        search_batch(pool[s:s + batch])
        done += 1
        if done >= min_batches and time.perf_counter() - start > budget_s:
            break
    return done * batch / (time.perf_counter() - start)


def row(size, name, build_s, index_bytes, times, qps, rec, rec96, note=""):
    return {"size": size, "index": name, "build_s": build_s,
            "index_mib": None if index_bytes is None else index_bytes / 2 ** 20,
            "p50_ms": float(np.percentile(times * 1000, 50)), "p99_ms": float(np.percentile(times * 1000, 99)),
            "queries_timed": int(len(times)), "batch64_qps": qps, "recall": rec, "recall_rescored": rec96,
            "note": note}


def brief(r: dict) -> str:
    return (f"{r['index']}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, recall@{K} {r['recall']:.3f}"
            + ("" if r["batch64_qps"] is None else f", {r['batch64_qps']:,.0f} q/s in batches of 64"))


def measure_size(n: int, args, mix: Mixture) -> list[dict]:
    import faiss

    rng = np.random.default_rng(args.seed + n)
    rows = []
    log(f"{n:,}: drawing {n:,} x {mix.dim} vectors into an exact index")
    flat, data, add_s = exact_gallery(mix, n, rng)
    style = np.where(rng.random(n) < 0.03, HARMFUL, 0).astype(np.int16)
    qrng = np.random.default_rng(args.seed + 1)
    queries = mix.draw(qrng, args.queries, more_spread=1.2)
    pool = mix.draw(qrng, 64 * args.batches, more_spread=1.2)
    safe = style != HARMFUL
    log(f"{n:,}: exact top {K} of {len(queries)} queries (numpy); RSS {rss_mib():,.0f} MiB")
    kth, kth_safe = true_top(data, queries, safe)

    # (a) exact
    log(f"{n:,}: (a) exact IndexFlatIP")
    times, found = single_queries(lambda q: flat.search(q, K)[1], queries, budget_s=args.flat_seconds)
    qps = batch_throughput(lambda q: flat.search(q, K), pool, budget_s=args.batch_seconds)
    rows.append(row(n, "exact IndexFlatIP", add_s, serialized_bytes(flat), times, qps,
                    recall(found, queries[:len(found)], data, kth[:len(found)]), None,
                    f"{len(times)} queries timed" if len(times) < len(queries) else ""))
    log(f"{n:,}: " + brief(rows[-1]))

    # (b) VectorIndex as the app builds it
    log(f"{n:,}: (b) VectorIndex.rebuild (exact_max {args.exact_max:,})")
    vi = VectorIndex(mix.dim, args.exact_max)
    t = time.perf_counter()
    vi.rebuild(data)
    build = time.perf_counter() - t
    nlist = int(vi.index.nlist) if vi.kind == "ivf" else 0
    name = f"VectorIndex: IVF{nlist},SQfp16 nprobe {vi.nprobe}" if nlist else "VectorIndex: exact"
    log(f"{n:,}: built {name} in {build:.1f} s; RSS {rss_mib():,.0f} MiB")
    times, found = single_queries(lambda q: vi.search(q, K)[1], queries)
    qps = batch_throughput(lambda q: vi.search(q, K), pool, budget_s=args.batch_seconds)
    cands = vi.search(queries, CANDIDATES)[1]
    rows.append(row(n, name, build, serialized_bytes(vi.index), times, qps, recall(found, queries, data, kth),
                    recall(rescore(cands, queries, data), queries, data, kth)))
    log(f"{n:,}: " + brief(rows[-1]))

    # (b') the same, as a chat retrieval calls it: safe-mode mask, 96 candidates, rescored
    def chat_call(q):
        allowed = style != HARMFUL
        return rescore(vi.search(q, CANDIDATES, allowed)[1], q, data)

    times, found = single_queries(chat_call, queries)
    raw = vi.search(queries, CANDIDATES, safe)[1]
    rows.append(row(n, f"{name}, safe mask, {CANDIDATES} cand. rescored", None, None, times, None,
                    recall(raw[:, :K], queries, data, kth_safe, safe),
                    recall(found, queries, data, kth_safe, safe),
                    "per query: mask over N + search + rescoring; recall vs exact over the allowed"))
    log(f"{n:,}: " + brief(rows[-1]))
    del vi, cands, raw
    gc.collect()

    # (c) IVF-PQ, same coarse size
    if args.pq_m:
        nl = nlist or int(2 ** round(math.log2(4 * math.sqrt(n))))
        log(f"{n:,}: (c) IndexIVFPQ nlist {nl}, m {args.pq_m}, {args.pq_nbits} bits")
        quantizer = faiss.IndexFlatIP(mix.dim)
        pq = faiss.IndexIVFPQ(quantizer, mix.dim, nl, args.pq_m, args.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        pq.train(data[np.random.default_rng(0).choice(n, size=min(n, nl * 40), replace=False)])
        pq.add(data)
        build = time.perf_counter() - t
        log(f"{n:,}: built in {build:.1f} s; RSS {rss_mib():,.0f} MiB")
        params = faiss.SearchParametersIVF(nprobe=NPROBE)
        times, found = single_queries(lambda q: pq.search(q, K, params=params)[1], queries)
        qps = batch_throughput(lambda q: pq.search(q, K, params=params), pool, budget_s=args.batch_seconds)
        cands = pq.search(queries, CANDIDATES, params=params)[1]
        rows.append(row(n, f"IVF{nl},PQ{args.pq_m}x{args.pq_nbits} nprobe {NPROBE}", build, serialized_bytes(pq),
                        times, qps, recall(found, queries, data, kth),
                        recall(rescore(cands, queries, data), queries, data, kth)))
        log(f"{n:,}: " + brief(rows[-1]))
        del pq, quantizer, cands
        gc.collect()

    # (d) HNSW, small sizes only
    if n <= args.hnsw_max:
        log(f"{n:,}: (d) IndexHNSWFlat M {args.hnsw_m}, efConstruction 40")
        hnsw = faiss.IndexHNSWFlat(mix.dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        t = time.perf_counter()
        hnsw.add(data)
        build = time.perf_counter() - t
        hnsw.hnsw.efSearch = 64
        log(f"{n:,}: built in {build:.1f} s; RSS {rss_mib():,.0f} MiB")
        times, found = single_queries(lambda q: hnsw.search(q, K)[1], queries)
        qps = batch_throughput(lambda q: hnsw.search(q, K), pool, budget_s=args.batch_seconds)
        cands = hnsw.search(queries, CANDIDATES)[1]
        rows.append(row(n, f"HNSW{args.hnsw_m},Flat efSearch 64", build, serialized_bytes(hnsw), times, qps,
                        recall(found, queries, data, kth),
                        recall(rescore(cands, queries, data), queries, data, kth)))
        log(f"{n:,}: " + brief(rows[-1]))
        del hnsw, cands
    del data, flat
    gc.collect()
    log(f"{n:,}: done; RSS {rss_mib():,.0f} MiB, peak {peak_rss_mib():,.0f} MiB")
    return rows


def table(rows: list[dict]) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    out = ["| vectors | index | build s | index MiB | p50 ms | p99 ms | q/s, batch 64 | recall@8 "
           f"| recall@8, {CANDIDATES} rescored | note |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['size']:,} | {r['index']} | {f(r['build_s'], '.1f')} | {f(r['index_mib'], ',.0f')} "
                   f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {f(r['batch64_qps'], ',.0f')} "
                   f"| {r['recall']:.3f} | {f(r['recall_rescored'], '.3f')} | {r['note']} |")
    return "\n".join(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="comma-separated vector counts (default 1000000,5000000)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=20_000)
    ap.add_argument("--topics", type=int, default=256)
    ap.add_argument("--queries", type=int, default=200, help="queries timed one at a time and for recall")
    ap.add_argument("--batches", type=int, default=10, help="most batches of 64 for throughput")
    ap.add_argument("--batch-seconds", type=float, default=3.0)
    ap.add_argument("--flat-seconds", type=float, default=20.0, help="time box of the exact row's single queries")
    ap.add_argument("--exact-max", type=int, default=EXACT_MAX, help="VectorIndex's largest exact index")
    ap.add_argument("--pq-m", type=int, default=32, help="IVF-PQ bytes per vector (0: no IVF-PQ row)")
    ap.add_argument("--pq-nbits", type=int, default=8)
    ap.add_argument("--hnsw-max", type=int, default=1_000_000, help="largest size given an HNSW row")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="faiss threads (default: faiss's own, as the app)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and dimension: a few seconds")
    args = ap.parse_args(argv)
    global T0
    T0 = time.perf_counter()
    if args.smoke:
        args.sizes = args.sizes or "2000,4000"
        args.dim, args.clusters, args.topics, args.queries, args.batches = 64, 100, 8, 40, 2
        args.batch_seconds, args.flat_seconds, args.exact_max = 0.2, 1.0, 1000
        args.pq_m, args.pq_nbits, args.hnsw_m = 8, 6, 16
        args.threads = args.threads or 1  # a busy machine makes 2 OpenMP threads on 2 cores erratic
    sizes = [int(s) for s in (args.sizes or "1000000,5000000").split(",") if s.strip()]
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    threads = faiss.omp_get_max_threads()
    load = os.getloadavg()
    log(f"faiss {faiss.__version__}, {threads} threads, {os.cpu_count()} CPUs, load {load[0]:.2f}; sizes {sizes}")
    mix = Mixture(args.dim, args.clusters, args.topics, args.seed)
    rows = []
    for n in sizes:
        rows += measure_size(n, args, mix)
    result = {"sizes": sizes, "dim": args.dim, "clusters": args.clusters, "queries": args.queries, "k": K,
              "faiss": faiss.__version__, "threads": threads, "cpus": os.cpu_count(),
              "peak_rss_mib": peak_rss_mib(), "seconds": time.perf_counter() - T0,
              "load_avg_1min": {"start": load[0], "end": os.getloadavg()[0]}, "rows": rows}
    print(f"\ngallery vector index, {args.dim}-d, faiss {faiss.__version__}, {threads} threads, "
          f"{args.queries} queries, k = {K}\n")
    print(table(rows))
    skipped = [n for n in sizes if n > args.hnsw_max]
    if skipped:
        print(f"\nHNSW not built at {', '.join(f'{n:,}' for n in skipped)} (over --hnsw-max {args.hnsw_max:,}).")
    print(f"\npeak RSS {result['peak_rss_mib']:,.0f} MiB, {result['seconds']:.0f} s in all; 1-min load average "
          f"{load[0]:.2f} at the start, {result['load_avg_1min']['end']:.2f} at the end")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
