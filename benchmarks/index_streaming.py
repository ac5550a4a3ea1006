"""A catalog index of 10^7 vectors on this 24 GB machine, built without ever holding the catalog as
float32: faiss IVF-PQ (``components.index.backends.FaissIVFPQIndex``, ``--m``-byte codes) whose
candidates are re-ranked from a float16 copy mapped from disk (``RerankedIndex``), the backend
``faiss-ivfpq+rerank`` of ``item index --ann-backend``.

    .venv/bin/python benchmarks/index_streaming.py --index PATH/catalog_index --n 10000000 \\
        --workdir /big/disk --json benchmarks/results/index_10m_<date>.json

The synthetic catalog is the one ``benchmarks/index.py`` grows (real joint vectors of the catalog
index plus Gaussian noise set from the catalog's own nearest-neighbour cosine; ``grow_chunks`` yields
the same vectors as ``grow`` for the same seed), streamed in blocks of 100,000: the first
``--train-size`` vectors (a uniform sample, since every vector is an independent draw) train the
coarse and product quantisers, then every block is written to the float16 copy on disk and added to
the index. Exact search, the reference of Recall@10 (ANN-Benchmarks' distance-threshold recall, as in
``benchmarks/index.py``), scans that float16 copy block by block for all queries at once; its
one-query latency is measured on a few queries with one thread. Queries: ``--queries`` real vectors,
not removed from the index (as ``/similar`` by listing). Latency: one query at a time, one thread.

Prints a table per (nprobe, re-rank factor) and the cheapest setting with Recall@10 >= the target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.index import grow_chunks, latencies  # noqa: E402
from components.index.backends import FaissIVFPQIndex, RerankedIndex, recall_at_k  # noqa: E402


def peak_rss_gb() -> float:
    """Peak resident set, GiB: includes the pages of the float16 copy mapped while writing it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20      # KiB on Linux


def anon_rss_gb() -> float:
    """Resident anonymous memory now, GiB (Linux ``RssAnon``): the index and the process, without
    the file-backed pages of the mapped copy, which the kernel can drop and re-read."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


def exact_top_k(copy: np.ndarray, queries: np.ndarray, k: int = 10, block: int = 250_000) -> np.ndarray:
    """(q, k) rows of the exact top-k of every query over the float16 ``copy``, one pass of blocks."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_r = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(copy), block):
        scores = queries @ np.asarray(copy[start:start + block], dtype=np.float32).T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        cand_r = np.concatenate([best_r, top + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_r, keep, axis=1)
    return best_r


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="a catalog index folder (embeddings.npz with 'item')")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--workdir", required=True, help="where the float16 copy goes (2 D bytes a vector on disk)")
    ap.add_argument("--m", type=int, default=192, help="PQ sub-quantisers (bytes a code)")
    ap.add_argument("--nlist", type=int, default=0, help="coarse cells (0 = the power of two nearest sqrt(n))")
    ap.add_argument("--train-size", type=int, default=262_144)
    ap.add_argument("--nprobes", default="8,16,32")
    ap.add_argument("--factors", default="10,20,50,100", help="re-rank candidates per result")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--exact-latency-queries", type=int, default=3)
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def _stream_build(chunks, copy: np.ndarray, n: int, args: argparse.Namespace):
    """Write the synthetic blocks into the float16 copy and the IVF-PQ index: trained on the first
    ``--train-size`` vectors, then added block by block. Returns ``(index, train_s, add_s, generate_s)``."""
    t_gen = t_add = 0.0
    sample, row, index, t_train = [], 0, None, 0.0
    t0 = time.perf_counter()
    for block in chunks:
        t_gen += time.perf_counter() - t0
        copy[row:row + len(block)] = block
        if index is None:
            sample.append(block)
            if sum(len(s) for s in sample) >= min(args.train_size, n):
                t1 = time.perf_counter()
                train = np.concatenate(sample)[:args.train_size]
                index = FaissIVFPQIndex.trained(train, n, nlist=args.nlist, m=args.m, model_version="synthetic")
                t_train = time.perf_counter() - t1
                print(f"trained nlist {index.settings['nlist']}, m {args.m}, nbits {index.settings['nbits']} on "
                      f"{len(train):,} vectors in {t_train:.0f} s", flush=True)
                t1 = time.perf_counter()
                for s in sample:
                    index.add(s)
                t_add += time.perf_counter() - t1
                sample = []
        else:
            t1 = time.perf_counter()
            index.add(block)
            t_add += time.perf_counter() - t1
        row += len(block)
        if row % 1_000_000 == 0:
            print(f"  {row:,} / {n:,} added ({t_add:.0f} s adding, {t_gen:.0f} s generating, peak RSS "
                  f"{peak_rss_gb():.1f} GiB, anonymous {anon_rss_gb():.1f} GiB)", flush=True)
        t0 = time.perf_counter()
    return index, t_train, t_add, t_gen


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    import faiss
    import torch
    torch.set_num_threads(1)

    from components.index.layout import load_catalog_index
    real = np.ascontiguousarray(load_catalog_index(args.index)[1]["joint"], dtype=np.float32)   # any index's kinds
    queries = real[np.random.default_rng(1).choice(len(real), size=min(args.queries, len(real)), replace=False)]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    n, dim = args.n, real.shape[1]
    copy = np.lib.format.open_memmap(workdir / "rerank.f16.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    chunks = grow_chunks(real, n)
    sigma = next(chunks)
    print(f"synthetic catalog of {n:,} from {len(real):,} real vectors (D = {dim}), sigma {sigma:.4f}, "
          f"{faiss.omp_get_max_threads()} faiss threads", flush=True)

    index, t_train, t_add, t_gen = _stream_build(chunks, copy, n, args)
    copy.flush()
    del copy
    copy = np.load(workdir / "rerank.f16.npy", mmap_mode="r")
    build = {"train_s": t_train, "add_s": t_add, "build_s": t_train + t_add, "generate_s": t_gen}
    mem = index.memory_bytes()
    print(f"built in {t_train + t_add:.0f} s (train {t_train:.0f}, add {t_add:.0f}); index {mem / 2 ** 30:.2f} GiB "
          f"= {mem / n:.1f} B/vector in memory; float16 copy {n * dim * 2 / 2 ** 30:.2f} GiB on disk", flush=True)

    t1 = time.perf_counter()
    exact_rows = exact_top_k(copy, queries)
    t_exact_all = time.perf_counter() - t1
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    lat = []
    for q in queries[:args.exact_latency_queries]:
        t1 = time.perf_counter()
        exact_top_k(copy, q[None, :])
        lat.append((time.perf_counter() - t1) * 1e3)
    print(f"exact over the float16 copy: {len(queries)} queries in {t_exact_all:.0f} s ({threads} threads); one query, "
          f"one thread: {np.median(lat):.0f} ms", flush=True)

    rows = [{"n": n, "backend": "exact (float16 scan)", "p50_ms": float(np.median(lat)), "p99_ms": float(np.max(lat)),
             "recall@10": 1.0, "bytes_per_vector": 2.0 * dim, "nprobe": None, "rerank_factor": None}]
    for nprobe in [int(x) for x in args.nprobes.split(",")]:
        index.set_ef(nprobe)
        found, stat = latencies(index, queries)
        rec = recall_at_k(found, exact_rows, 10, copy, queries)
        rows.append({"n": n, "backend": "faiss-ivfpq", "nprobe": nprobe, "rerank_factor": None, "recall@10": rec,
                     "bytes_per_vector": mem / n, **stat})
        print(f"ivfpq nprobe {nprobe:4d}:            Recall@10 {rec:.4f}, p50 {stat['p50_ms']:.2f} ms, "
              f"p99 {stat['p99_ms']:.2f} ms", flush=True)
        for factor in [int(x) for x in args.factors.split(",")]:
            reranked = RerankedIndex(index, copy, factor)
            found, stat = latencies(reranked, queries)
            rec = recall_at_k(found, exact_rows, 10, copy, queries)
            rows.append({"n": n, "backend": "faiss-ivfpq+rerank", "nprobe": nprobe, "rerank_factor": factor,
                         "recall@10": rec, "bytes_per_vector": mem / n, **stat})
            print(f"ivfpq nprobe {nprobe:4d} + rerank x{factor:<3d}: Recall@10 {rec:.4f}, p50 {stat['p50_ms']:.2f} ms, "
                  f"p99 {stat['p99_ms']:.2f} ms", flush=True)
    ok = [r for r in rows if r["backend"] != "exact (float16 scan)" and r["recall@10"] >= args.target_recall]
    chosen = min(ok, key=lambda r: r["p50_ms"]) if ok else None
    print(f"\nfastest setting with Recall@10 >= {args.target_recall}: {json.dumps(chosen)}; peak RSS "
          f"{peak_rss_gb():.1f} GiB (with the mapped copy's pages), anonymous now {anon_rss_gb():.1f} GiB")
    result = {"index": str(args.index), "n": n, "real_n": len(real), "dim": dim, "sigma": sigma,
              "queries": len(queries), "cpus": os.cpu_count(), "settings": index.settings, **build,
              "index_bytes": mem, "disk_bytes": n * dim * 2, "peak_rss_gb": peak_rss_gb(),
              "anon_rss_gb_end": anon_rss_gb(),
              "exact_all_queries_s": t_exact_all, "rows": rows, "chosen": chosen}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
