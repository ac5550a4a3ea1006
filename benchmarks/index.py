"""Approximate vs exact search over catalog embeddings: build time, memory per vector, p50/p99 query
latency at k = 10 and Recall@10 against exact search, for each :mod:`components.index.backends`
backend, on real catalog embeddings and on synthetic catalogs grown from them.

    .venv/bin/python benchmarks/index.py --index PATH/catalog_index [--sizes 0,1000000] [--json out.json]

``PATH/catalog_index`` is a catalog index folder (``components.index.layout``: ``embeddings.npz`` with
the joint vectors ``item``), e.g. a packaged model's in the BentoML store, or the ``evaluate`` step's
output of a full-profile run (all 44,441 listings).

Synthetic catalogs (size n > the real one): every synthetic vector is a real vector (drawn uniformly,
with replacement) plus isotropic Gaussian noise of standard deviation ``sigma`` per component,
re-normalised. ``sigma`` is set so that a synthetic vector's cosine to the real vector it came from
equals the real catalog's median cosine between a listing and its nearest other listing: copies
of one listing then sit as close to each other as real near neighbours do, so the neighbourhood
structure (clusters of near-duplicates around real products) is realistic rather than uniform.

Queries: 500 real vectors (not removed from the index, as ``/similar`` by listing). Exact search is
the reference for Recall@10; its own latency is measured the same way (one query at a time, one
thread). Each ANN backend is built once per size and queried at several ``ef`` values; the table
shows every ef and the script reports the cheapest setting with Recall@10 >= ``--target-recall``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from components.index.backends import (ExactIndex, FaissHNSWIndex, USearchHNSWIndex,  # noqa: E402
                                               recall_at_k)


def rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 1e6


def noise_sigma(real: np.ndarray, rng: np.random.Generator) -> float:
    """The noise level of the synthetic copies (module docstring): the catalog's median cosine between
    a listing and its nearest other listing, from 2,000 sampled listings."""
    sample = real[rng.choice(len(real), size=min(2000, len(real)), replace=False)]
    sims = sample @ real.T
    sims[sims > 0.99999] = -1.0                       # the listing itself (and exact duplicates)
    nn_cos = float(np.median(sims.max(axis=1)))
    # E[cos(x, normalize(x + e))] ~ 1 / sqrt(1 + sigma^2 D) for unit x and e ~ N(0, sigma^2 I)
    return float(np.sqrt(max(1.0 / nn_cos ** 2 - 1.0, 1e-6) / real.shape[1]))


def grow_chunks(real: np.ndarray, n: int, seed: int = 0, chunk: int = 100_000):
    """Yield ``sigma`` once, then the ``n`` synthetic vectors of :func:`grow` as float32 blocks of
    ``chunk`` rows (the same vectors for the same seed), so that 10^7 of them never sit in memory."""
    rng = np.random.default_rng(seed)
    sigma = noise_sigma(real, rng)
    yield sigma
    dim = real.shape[1]
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = real[rng.integers(0, len(real), m)] + rng.normal(0.0, sigma, (m, dim)).astype(np.float32)
        yield (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float32)


def grow(real: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """``n`` synthetic vectors from ``real`` (see the module docstring); returns (vectors, sigma)."""
    chunks = grow_chunks(real, n, seed)
    sigma = next(chunks)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    start = 0
    for block in chunks:
        out[start:start + len(block)] = block
        start += len(block)
    return out, sigma


def latencies(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, dict]:
    rows, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        r, _ = index.search(q[None, :], k)
        times.append((time.perf_counter() - t0) * 1e3)
        rows.append(r[0])
    return np.stack(rows), {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def bench_size(vectors: np.ndarray, queries: np.ndarray, efs: list[int], backends: list[str]) -> list[dict]:
    import torch
    torch.set_num_threads(1)
    n = len(vectors)
    out = []
    t0 = time.perf_counter()
    exact = ExactIndex(vectors)
    exact_rows, exact_lat = latencies(exact, queries)
    out.append({"n": n, "backend": "exact", "build_s": time.perf_counter() - t0, "ef": None,
                "bytes_per_vector": exact.memory_bytes() / n, "recall@10": 1.0, **exact_lat})
    print(f"n={n:>9,} exact: p50 {exact_lat['p50_ms']:.2f} ms, p99 {exact_lat['p99_ms']:.2f} ms, "
          f"{exact.memory_bytes() / n:.0f} B/vector", flush=True)
    for name in backends:
        before = rss_mb()
        t0 = time.perf_counter()
        if name == "usearch-hnsw":
            index = USearchHNSWIndex.build(vectors, connectivity=32, expansion_add=128, dtype="f16")
        elif name == "faiss-hnsw-sq8+rerank":   # SQ8 candidates re-scored from float16 vectors mapped from disk
            import tempfile
            from components.index.backends import RerankedIndex
            index = RerankedIndex.build(FaissHNSWIndex.build(vectors, m=32, ef_construction=128), vectors,
                                        tempfile.mkdtemp(prefix="bench-rerank-"), factor=5)
        elif name == "milvus":            # Milvus Lite in this process: its memory is this process's growth
            import tempfile
            from components.index.backends import MilvusIndex
            index = MilvusIndex.build(vectors, str(Path(tempfile.mkdtemp(prefix="bench-milvus-")) / "bench.db"),
                                      "bench", M=32, efConstruction=128)
        else:
            index = FaissHNSWIndex.build(vectors, m=32, ef_construction=128)
        build = time.perf_counter() - t0
        mem = index.memory_bytes() if name != "milvus" else max(0.0, (rss_mb() - before) * 2 ** 20)
        for ef in efs:
            index.set_ef(ef)
            rows, lat = latencies(index, queries)
            rec = recall_at_k(rows, exact_rows, 10, vectors, queries)
            out.append({"n": n, "backend": name, "build_s": build, "ef": ef, "bytes_per_vector": mem / n,
                        "rss_growth_mb": rss_mb() - before, "recall@10": rec, **lat})
            print(f"n={n:>9,} {name} ef={ef:4d}: Recall@10 {rec:.4f}, p50 {lat['p50_ms']:.2f} ms, p99 "
                  f"{lat['p99_ms']:.2f} ms, build {build:.1f} s, {mem / n:.0f} B/vector", flush=True)
        del index
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="a catalog index folder (embeddings.npz with 'item')")
    ap.add_argument("--sizes", default="0", help="comma-separated catalog sizes; 0 = the real catalog as it is")
    ap.add_argument("--efs", default="16,32,64,128")
    ap.add_argument("--backends", default="usearch-hnsw,faiss-hnsw-sq8", help="also: milvus (Milvus Lite)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from components.index.layout import load_catalog_index
    real = np.ascontiguousarray(load_catalog_index(args.index)[1]["joint"], dtype=np.float32)   # any index's kinds
    rng = np.random.default_rng(1)
    queries = real[rng.choice(len(real), size=min(args.queries, len(real)), replace=False)]
    efs = [int(x) for x in args.efs.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    rows, sigmas = [], {}
    for size in [int(x) for x in args.sizes.split(",")]:
        if size and size > len(real):
            vectors, sigmas[size] = grow(real, size)
            print(f"synthetic catalog of {size:,} from {len(real):,} real vectors, sigma {sigmas[size]:.4f}", flush=True)
        else:
            vectors = real
        rows += bench_size(vectors, queries, efs, backends)
        del vectors
    chosen = {}
    for size in sorted({r["n"] for r in rows}):
        ok = [r for r in rows if r["n"] == size and r["backend"] != "exact" and r["recall@10"] >= args.target_recall]
        if ok:
            best = min(ok, key=lambda r: r["p50_ms"])
            chosen[size] = {k: best[k] for k in ("backend", "ef", "p50_ms", "p99_ms", "recall@10", "bytes_per_vector")}
    print("\n| n | backend | ef | build s | bytes / vector | p50 ms | p99 ms | Recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['backend']} | {r['ef'] or '-'} | {r['build_s']:.1f} | {r['bytes_per_vector']:.0f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall@10']:.4f} |")
    print(f"\nfastest setting with Recall@10 >= {args.target_recall}: {json.dumps(chosen, indent=1)}")
    result = {"index": str(args.index), "real_n": len(real), "dim": real.shape[1], "queries": len(queries),
              "cpus": os.cpu_count(), "sigma": sigmas, "rows": rows, "chosen": chosen}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
