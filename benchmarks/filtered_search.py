"""Filtered search and hybrid (keyword + vector) search over a catalog index (issue 33, docs/index.md).

    .venv/bin/python benchmarks/filtered_search.py --index item-storage/indexes/<version> \
        [--catalog ../shared/datasets/fashion-product-images-small] [--sizes 0,1000000] [--json out.json]

**Filtered search.** Filters at about 50 %, 10 %, 1 % and 0.1 % of the catalog, each a real condition
on the catalog's own attributes (the single-column equality or set whose share of the catalog is
nearest the target; the actual share is reported). For each catalog size (0 = the real index; larger
sizes grown from it as in ``benchmarks/index.py``: each synthetic vector a noisy copy of a real one,
carrying that listing's attributes, so that filters keep their real shares and correlations) and each
backend, three paths are timed for the same 200 queries: exact search over the matching rows
(the reference), the backend's own filtered search (faiss ``IDSelectorBitmap``; usearch: candidates
drawn then filtered), and the default rule (exact below ``SELECTIVE_FRACTION`` of the catalog,
components.index.filters). Latency is the whole query (filter -> mask, search) on one thread, the
serving worker's budget on this 2-core machine; Recall@10 is against exact filtered search.

**Hybrid search** (real index only; needs ``text`` vectors in the index). Three query sets from the
shared catalog, photos withheld:

* ``exact title``: listings whose title names one product (every catalog listing with that
  title is in the query's same-product group, or is the query itself); the query is the title;
  relevant = the listings with that title.
* ``seller rewrite``: the same listings, the title rewritten by ``item_model.titles_disagree.rewrite_title``
  (variant 1-3: brand abbreviated or dropped, words reordered, colour synonyms, seller noise) when
  ``--model`` is given to embed it; relevant the same.
* ``same-product``: the evaluation's same-product search (test-split listings in groups, the query's
  joint vector and title, itself excluded, relevant = its group's other members).

Recall@1 of vector (text index for title queries, joint for same-product), keyword (BM25 over titles)
and hybrid (RRF, keyword weight 0.1 / 0.25 / 0.5 / 1 / 2).
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
import pandas as pd  # noqa: E402

from benchmarks.index import noise_sigma  # noqa: E402
from components.index.filters import (EXACT_ROWS, SELECTIVE_FRACTION, ListingFilter,  # noqa: E402
                                      filtered_search)

TARGETS = (0.5, 0.1, 0.01, 0.001)
HYBRID_WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0)
FILTER_COLUMNS = ("gender", "masterCategory", "subCategory", "category", "colour", "season", "year", "usage")


def attributes(listings: pd.DataFrame, catalog: str | None) -> pd.DataFrame:
    """The listings with every filter column: from the index when it has them, else joined from the
    catalog by product_id (an index written before filters existed); the category path split in its
    levels (masterCategory, subCategory) so that broad filters exist."""
    need = {"gender", "colour", "season", "usage", "category_path"}
    if not need <= set(listings.columns):
        if not catalog:
            raise SystemExit(f"the index lacks {sorted(need - set(listings.columns))}; give --catalog")
        from components.catalog import iter_catalog
        parts = [df.drop(columns=["image_bytes", "image_uri"]) for df in iter_catalog(catalog)]
        cat = pd.concat(parts, ignore_index=True).set_index("product_id")
        listings = listings[["product_id", "title", "group_id", "split"] if "split" in listings else
                            ["product_id", "title", "group_id"]].join(
            cat[["category", "category_path", "gender", "colour", "season", "year", "usage"]], on="product_id")
    levels = listings["category_path"].astype(str).str.split(" > ", expand=True)
    listings = listings.assign(masterCategory=levels[0], subCategory=levels[1])
    return listings.reset_index(drop=True)


def choose_filters(listings: pd.DataFrame) -> list[dict]:
    """For each target share, the single-column condition (one value, or the most common values of a
    column taken together) whose share of the listings is nearest it."""
    n = len(listings)
    candidates = []
    for col in FILTER_COLUMNS:
        counts = listings[col].dropna().value_counts()
        values = [v.item() if hasattr(v, "item") else v for v in counts.index]
        for i, v in enumerate(values):
            candidates.append(({col: v}, counts.iloc[i] / n))
        running = 0
        for i in range(min(len(values), 12)):
            running += counts.iloc[i]
            candidates.append(({col: values[:i + 1]}, running / n))
    out = []
    for t in TARGETS:
        cond, share = min(candidates, key=lambda c: abs(np.log(max(c[1], 1e-9) / t)))
        out.append({"target": t, "filters": cond, "share": float(share)})
    return out


def grow_with_sources(real: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """``n`` synthetic vectors (benchmarks/index.py's recipe) and the real row each one copies."""
    rng = np.random.default_rng(seed)
    sigma = noise_sigma(real, rng)
    src = rng.integers(0, len(real), n)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for s in range(0, n, 100_000):
        block = real[src[s:s + 100_000]] + rng.normal(0.0, sigma, (len(src[s:s + 100_000]), real.shape[1])).astype(np.float32)
        out[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, src, sigma


def build(backend: str, vectors: np.ndarray, folder: Path):
    """The approximate index ``build_index`` writes, with its filtered-search cells."""
    from components.index.filters import CoarseCells
    index = _build(backend, vectors, folder)
    index.cells = CoarseCells.build(vectors)
    return index


def _build(backend: str, vectors: np.ndarray, folder: Path):
    from components.index.backends import (ANN_SETTINGS, FaissHNSWIndex, FaissIVFPQIndex, RerankedIndex,
                                           USearchHNSWIndex)
    if backend == "faiss-hnsw-sq8+rerank":
        s = dict(ANN_SETTINGS)
        factor = s.pop("rerank_factor")
        return RerankedIndex.build(FaissHNSWIndex.build(vectors, **s), vectors, folder / backend, factor)
    if backend == "faiss-ivfpq+rerank":
        return RerankedIndex.build(FaissIVFPQIndex.build(vectors), vectors, folder / backend, 20)
    if backend == "usearch-hnsw":
        return USearchHNSWIndex.build(vectors, dtype="f16")
    raise ValueError(backend)


def run_path(vectors, ann, queries, lf: ListingFilter, filters: dict, threshold: float, exact_rows: int,
             k: int = 10):
    """(rows (q, k), paths, p50 ms, p99 ms) of the whole query: filter -> mask, then the search."""
    rows, paths, times = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        mask = lf.match(filters).mask
        r, _, how = filtered_search(vectors, ann, q, k, mask, selective_fraction=threshold, exact_rows=exact_rows)
        times.append((time.perf_counter() - t0) * 1e3)
        rows.append(np.pad(r, (0, k - len(r)), constant_values=-1))
        paths.append(how)
    return np.stack(rows), paths, float(np.percentile(times, 50)), float(np.percentile(times, 99))


def recall(got: np.ndarray, want: np.ndarray, vectors: np.ndarray | None = None,
           queries: np.ndarray | None = None) -> float:
    """Recall@10 against exact filtered search: strict (|got ∩ want| / |want|), or with ``vectors`` tie-aware
    as in benchmarks/index.py (a row whose cosine is at least the exact 10th best's minus 1e-5 counts:
    the catalog lists some products twice with the same title and photo)."""
    if vectors is not None:
        from components.index.backends import recall_at_k
        return recall_at_k(got, want, 10, vectors=vectors, queries=queries)
    hits = [len(set(g[g >= 0]) & set(w[w >= 0])) / max(1, (w >= 0).sum()) for g, w in zip(got, want)]
    return float(np.mean(hits))


def bench_filtered(vectors, listings, filters, backends, n_queries, tmp: Path, label: str) -> list[dict]:
    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(len(vectors), n_queries, replace=False)]
    t0 = time.perf_counter()
    lf = ListingFilter(listings)
    print(f"[{label}] n={len(vectors):,}: filter columns prepared in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    exact = {}
    for f in filters:
        want, _, p50, p99 = run_path(vectors, None, queries, lf, f["filters"], 1.0, 0)
        exact[json.dumps(f["filters"])] = want
        rows.append({"size": len(vectors), "backend": "exact", "path": "exact", **f, "recall@10": 1.0,
                     "p50_ms": p50, "p99_ms": p99})
        print(f"  exact        {f['share']:7.2%} {json.dumps(f['filters'])[:60]:60s} p50 {p50:7.2f} ms p99 {p99:7.2f}",
              flush=True)
    for backend in backends:
        t0 = time.perf_counter()
        ann = build(backend, vectors, tmp)
        build_s = time.perf_counter() - t0
        print(f"  {backend}: built in {build_s:.0f} s", flush=True)
        for f in filters:
            want = exact[json.dumps(f["filters"])]
            for path, threshold, rows_max in (("ann", 0.0, 0), ("default", SELECTIVE_FRACTION, EXACT_ROWS)):
                got, paths, p50, p99 = run_path(vectors, ann, queries, lf, f["filters"], threshold, rows_max)
                r, strict = recall(got, want, vectors, queries), recall(got, want)
                taken = {p: paths.count(p) for p in sorted(set(paths))}
                rows.append({"size": len(vectors), "backend": backend, "path": path, "taken": taken, **f,
                             "recall@10": r, "recall@10_strict": strict, "p50_ms": p50, "p99_ms": p99,
                             "build_s": build_s})
                print(f"  {backend:22s} {path:7s} {f['share']:7.2%} Recall@10 {r:.4f} (strict {strict:.4f}) "
                      f"p50 {p50:7.2f} ms p99 {p99:7.2f}  {taken}", flush=True)
        del ann
    return rows


def bench_hybrid(listings: pd.DataFrame, emb: dict, model_dir: str | None, n_queries: int) -> list[dict]:
    from components.index.lexical import LexicalIndex
    from components.index.search import CatalogSearch
    cs = CatalogSearch(listings, emb, {}, LexicalIndex.build(listings["title"]))
    titles = listings["title"].astype(str).to_numpy()
    groups = listings["group_id"].to_numpy()
    rng = np.random.default_rng(0)
    out = []

    def score(name, queries, relevant, vector_kind, qvecs, texts, exclude):
        res = {}
        for mode, w in (("vector", 1.0), ("keyword", 1.0), *(("hybrid", w) for w in HYBRID_WEIGHTS)):
            hits = []
            for i, q in enumerate(queries):
                h = cs.search(1, mode, vector=qvecs[i], text=texts[i], kind=vector_kind,
                              exclude_row=q if exclude else None, keyword_weight=w)
                hits.append(len(h.rows) > 0 and int(h.rows[0]) in relevant[i])
            key = mode if mode != "hybrid" else f"hybrid(w={w})"
            res[key] = float(np.mean(hits))
        print(f"  {name:14s} ({len(queries)} queries) Recall@1 " + "  ".join(f"{k} {v:.4f}" for k, v in res.items()),
              flush=True)
        out.append({"query_set": name, "queries": len(queries), **{f"recall@1 {k}": v for k, v in res.items()}})

    # exact titles that name one product (titles compared normalised: case and spaces ignored)
    from item_model.title_decides import normalise_title
    norm = np.array([normalise_title(t) or "" for t in titles], dtype=object)
    by_norm = pd.Series(np.arange(len(titles))).groupby(norm).apply(list).to_dict()
    by_title = {titles[i]: by_norm[norm[i]] for i in range(len(titles))}
    test = np.flatnonzero((listings["split"] == "test").to_numpy()) if "split" in listings else np.arange(len(titles))
    named = []
    for i in test:
        same = by_title[titles[i]]
        g = groups[i]
        if len(same) == 1 or (pd.notna(g) and all(pd.notna(groups[j]) and groups[j] == g for j in same)):
            named.append(i)
    named = rng.choice(named, min(n_queries, len(named)), replace=False)
    rel = [set(by_title[titles[i]]) for i in named]
    score("exact title", named, rel, "text", [emb["text"][i] for i in named], [titles[i] for i in named], False)
    if model_dir:
        from item_model.titles_disagree import rewrite_title
        from item_model.inference import embed_listings
        from item_model.modeling_item import ItemModel
        from item_model.processing_item import ItemProcessor
        model = ItemModel.from_pretrained(model_dir).eval()
        proc = ItemProcessor.from_pretrained(model_dir, model.config)
        texts = [rewrite_title(titles[i], variant=1 + int(i) % 3) for i in named]
        qv = embed_listings(model, proc, texts, [None] * len(texts), batch_size=64)
        score("seller rewrite", named, rel, "text", list(qv), texts, False)
    # the evaluation's same-product search
    grouped = [i for i in test if pd.notna(groups[i]) and (groups == groups[i]).sum() > 1]
    grouped = rng.choice(grouped, min(n_queries, len(grouped)), replace=False)
    rel = [set(np.flatnonzero(groups == groups[i])) - {i} for i in grouped]
    score("same-product", grouped, rel, "joint", [emb["joint"][i] for i in grouped], [titles[i] for i in grouped], True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True, help="an index root (item-storage/indexes/<version>) or catalog_index")
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared" / "datasets" / "fashion-product-images-small"))
    ap.add_argument("--model", default="", help="model folder, to embed rewritten titles (hybrid)")
    ap.add_argument("--sizes", default="0,1000000", help="catalog sizes; 0 = the real index")
    ap.add_argument("--backends", default="faiss-hnsw-sq8+rerank,usearch-hnsw")
    ap.add_argument("--big-backends", default="faiss-hnsw-sq8+rerank", help="backends at synthetic sizes")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--tmp", default="/tmp/item-filtered-bench")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import faiss
    import torch
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    from components.index.layout import load_catalog_index
    root = Path(args.index)
    listings, emb, meta = load_catalog_index(root / "catalog_index" if (root / "catalog_index").is_dir() else root)
    listings = attributes(listings, args.catalog)
    filters = choose_filters(listings)
    print("filters: " + "; ".join(f"{f['target']:.1%} -> {json.dumps(f['filters'])} ({f['share']:.2%})"
                                  for f in filters), flush=True)
    result = {"index": str(root), "n": len(listings), "cpus": os.cpu_count(), "threads": 1,
              "selective_fraction": SELECTIVE_FRACTION, "exact_rows": EXACT_ROWS, "filters": filters, "filtered": [], "hybrid": []}
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    print("hybrid search (real index):", flush=True)
    result["hybrid"] = bench_hybrid(listings, emb, args.model or None, args.queries)
    for size in [int(s) for s in args.sizes.split(",") if s]:
        if size == 0:
            vectors, table, label = np.ascontiguousarray(emb["joint"]), listings, "real"
            backends = [b for b in args.backends.split(",") if b]
        else:
            vectors, src, sigma = grow_with_sources(np.ascontiguousarray(emb["joint"]), size)
            table = listings.iloc[src].reset_index(drop=True)
            table["product_id"] = [f"s{i}" for i in range(size)]
            label = f"synthetic, sigma {sigma:.4f}"
            backends = [b for b in args.big_backends.split(",") if b]
        result["filtered"] += bench_filtered(vectors, table, filters, backends, args.queries, tmp, label)
        del vectors, table
    if args.json:
        from item_model.io import write_json_atomic
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
