"""One interface for searching a catalog's embeddings, with an exact and approximate backends.

:class:`VectorIndex` is what serving and the pipeline search through: ``search(queries, k)`` returns
row numbers and cosine scores, best first, for L2-normalised float32 vectors. Backends:

=================  ===============================================  =======================================
kind               what                                             memory per vector (D = 384)
=================  ===============================================  =======================================
``exact``          a float32 matrix and one matrix product (torch)  4 D bytes = 1,536 B
``usearch-hnsw``   HNSW graph (usearch), vectors quantised to int8  D + ~2 M x 4 bytes of links ≈ 640 B
``faiss-hnsw-sq8`` HNSW graph over 8-bit scalar-quantised vectors   D + 2 M x 4 ≈ 640 B
                   (faiss ``IndexHNSWSQ``, inner product)
``faiss-ivfpq``    inverted file, product-quantised residuals       m + 8 bytes = 200 B at m = 192
                   (faiss ``IndexIVFPQ``, inner product), with a
                   float16 re-rank copy on disk
``milvus``         a Milvus collection (HNSW, inner product): Milvus   held by the engine, not this process
                   Lite in-process on a ``.db`` file, or a Milvus
                   cluster through the same client
=================  ===============================================  =======================================

The first four are embedded (in the serving process); ``milvus`` is the distributed kind, for
catalogs that outgrow one machine (docs/scale.md).

HNSW: Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", arXiv:1603.09320; ``M`` links per node,
``ef_construction`` / ``ef_search`` candidate-list sizes at build / query time (larger = better
recall, slower). Which approximate backend serves, and with which settings, is chosen by
``benchmarks/index.py`` (docs/index.md).

Every index remembers the model version whose vectors it holds (``model_version``); :func:`load_index`
refuses an index of another version than the caller expects, so an index never mixes two models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.index.base import META_FILE, IndexVersionMismatch, VectorIndex, _check  # noqa: F401
from components.index.faiss_backends import FaissHNSWIndex, FaissIVFPQIndex, _FaissIndex  # noqa: F401
from components.index.milvus import MilvusIndex, _is_server  # noqa: F401
from item_model.io import write_json_atomic


class ExactIndex:
    """Exact search: one (q, D) x (D, n) float32 product (torch, the process's thread pool) and top-k."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, model_version: str = ""):
        self.vectors = _check(vectors)
        self.model_version = model_version

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch
        q = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32))
        scores = q @ torch.from_numpy(self.vectors).T
        top = torch.topk(scores, min(k, len(self)), dim=1)
        return top.indices.numpy().astype(np.int64), top.values.numpy()

    def memory_bytes(self) -> int:
        return int(self.vectors.nbytes)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", self.vectors)
        write_json_atomic(folder / META_FILE, {"kind": self.kind, "n": len(self), "dim": self.vectors.shape[1],
                                               "model_version": self.model_version})

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> "ExactIndex":
        return cls(np.load(Path(folder) / "vectors.npy", allow_pickle=False), meta.get("model_version", ""))


class USearchHNSWIndex:
    """HNSW over int8-quantised vectors with usearch (inner product on L2-normalised vectors).

    Args:
        connectivity: M, links per node.
        expansion_add / expansion_search: ef at build and at query time.
        dtype: ``"i8"`` (default, D bytes a vector), ``"f16"`` or ``"f32"``.
        threads: build threads (0 = all cores).
    """

    kind = "usearch-hnsw"

    def __init__(self, dim: int, connectivity: int = 32, expansion_add: int = 128, expansion_search: int = 64,
                 dtype: str = "i8", model_version: str = ""):
        from usearch.index import Index
        self.dim, self.model_version = int(dim), model_version
        self.settings = {"connectivity": connectivity, "expansion_add": expansion_add,
                         "expansion_search": expansion_search, "dtype": dtype}
        self.index = Index(ndim=self.dim, metric="ip", dtype=dtype, connectivity=connectivity,
                           expansion_add=expansion_add, expansion_search=expansion_search)

    @classmethod
    def build(cls, vectors: np.ndarray, threads: int = 0, **settings) -> "USearchHNSWIndex":
        vectors = _check(vectors)
        out = cls(vectors.shape[1], **settings)
        out.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads, log=False)
        return out

    def __len__(self) -> int:
        return len(self.index)

    def set_ef(self, ef: int) -> None:
        """The query-time candidate list size (recall / latency trade-off)."""
        self.index.expansion_search = int(ef)
        self.settings["expansion_search"] = int(ef)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        found = self.index.search(q, min(k, len(self)), threads=1, log=False)
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(q), -1)
        scores = (1.0 - np.asarray(found.distances, dtype=np.float32)).reshape(len(q), -1)   # ip distance = 1 - dot
        return keys, scores

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.index.save(str(folder / "usearch.index"))
        write_json_atomic(folder / META_FILE, {"kind": self.kind, "n": len(self), "dim": self.dim,
                                               "model_version": self.model_version, **self.settings})

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> "USearchHNSWIndex":
        out = cls(meta["dim"], meta["connectivity"], meta["expansion_add"], meta["expansion_search"], meta["dtype"],
                  meta.get("model_version", ""))
        out.index.load(str(Path(folder) / "usearch.index"))
        return out


class RerankedIndex:
    """An approximate index whose candidates are re-scored exactly: the inner index returns
    ``factor * k`` candidates, their float16 vectors are read from a memory-mapped ``.npy`` file on disk
    (the page cache holds the rows queries touch, not the index's memory) and re-ranked by their
    cosine to the query. With 8-bit scalar-quantised HNSW (faiss) this keeps the memory of SQ8
    and removes its quantisation error from the final order (the IVFADC re-ranking idea of
    Jégou et al., "Searching in one billion vectors: re-rank with source coding", ICASSP 2011).

    Args:
        inner: the approximate index (e.g. :class:`FaissHNSWIndex`).
        vectors: (n, D) float16, rows aligned with the inner index's row numbers (a ``np.memmap``).
        factor: candidates per result.
    """

    def __init__(self, inner, vectors: np.ndarray, factor: int = 5):
        self.inner, self.vectors, self.factor = inner, vectors, int(factor)
        self.kind = f"{inner.kind}+rerank"
        self.model_version = inner.model_version
        self.settings = {**getattr(inner, "settings", {}), "rerank_factor": self.factor}

    @classmethod
    def build(cls, inner, vectors: np.ndarray, folder: str | Path, factor: int = 5) -> "RerankedIndex":
        """Write ``vectors`` as float16 to ``folder/rerank.f16.npy`` and map it back read-only."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "rerank.f16.npy", np.asarray(vectors, dtype=np.float16))
        return cls(inner, np.load(folder / "rerank.f16.npy", mmap_mode="r"), factor)

    def __len__(self) -> int:
        return len(self.inner)

    def set_ef(self, ef: int) -> None:
        self.inner.set_ef(ef)

    @property
    def supports_mask(self) -> bool:
        """Whether :meth:`search` takes ``mask`` (when the inner index does)."""
        return bool(getattr(self.inner, "supports_mask", False))

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None,
               widen: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`VectorIndex.search`; ``mask`` ((n,) bool) and ``widen`` are passed to the inner index's
        filtered search."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(int(k), len(self))
        extra = {} if mask is None else {"mask": mask, "widen": widen}
        cand, _ = self.inner.search(q, min(len(self), self.factor * k), **extra)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        for i, c in enumerate(cand):
            c = np.sort(c[c >= 0])                             # ascending rows: sequential reads of the map
            exact = np.asarray(self.vectors[c], dtype=np.float32) @ q[i]
            top = np.argsort(-exact, kind="stable")[:k]
            rows[i, :len(top)], scores[i, :len(top)] = c[top], exact[top]
        return rows, scores

    def memory_bytes(self) -> int:
        """The inner index's memory (the float16 vectors stay on disk, mapped)."""
        return self.inner.memory_bytes()

    def save(self, folder: str | Path) -> None:
        """The inner index's files, ``rerank.f16.npy`` (unless already there) and ``vector_index.json``
        naming this kind."""
        folder = Path(folder)
        self.inner.save(folder)
        if not (folder / "rerank.f16.npy").is_file():
            np.save(folder / "rerank.f16.npy", np.asarray(self.vectors, dtype=np.float16))
        meta = json.loads((folder / META_FILE).read_text())
        write_json_atomic(folder / META_FILE, {**meta, "kind": self.kind, "inner": self.inner.kind,
                                               "rerank_factor": self.factor})

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> "RerankedIndex":
        inner = BACKENDS[meta["inner"]].load(folder, meta)
        return cls(inner, np.load(Path(folder) / "rerank.f16.npy", mmap_mode="r", allow_pickle=False),
                   int(meta.get("rerank_factor", 5)))


BACKENDS = {c.kind: c for c in (ExactIndex, USearchHNSWIndex, FaissHNSWIndex, FaissIVFPQIndex, MilvusIndex)}
BACKENDS["faiss-hnsw-sq8+rerank"] = RerankedIndex
BACKENDS["faiss-ivfpq+rerank"] = RerankedIndex


def load_index(folder: str | Path, model_version: str | None = None) -> VectorIndex:
    """Read an index saved by a backend's ``save``, with the k-means cells of filtered search
    (``cells``: :class:`components.index.filters.CoarseCells`, None when the folder has none).

    Raises:
        FileNotFoundError: no ``vector_index.json`` in ``folder``. ValueError: an unknown kind.
        IndexVersionMismatch: ``model_version`` is given and the index holds another model's vectors.
    """
    meta = json.loads((Path(folder) / META_FILE).read_text())
    if meta.get("kind") not in BACKENDS:
        raise ValueError(f"{folder}/{META_FILE}: field 'kind' is {meta.get('kind')!r}, expected one of {sorted(BACKENDS)}")
    if model_version is not None and meta.get("model_version") != model_version:
        raise IndexVersionMismatch(f"{folder}: field 'model_version' is {meta.get('model_version')!r}, but the vectors "
                                   f"of {model_version!r} were asked for; an index never mixes two models")
    index = BACKENDS[meta["kind"]].load(folder, meta)
    from components.index.filters import CoarseCells
    index.cells = CoarseCells.load(folder)      # filtered search's cells (components.index.filters), if built
    return index


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int = 10, vectors: np.ndarray | None = None,
                queries: np.ndarray | None = None, eps: float = 1e-5) -> float:
    """Recall@k of an approximate search against exact search, averaged over queries.

    Without ``vectors``: |approx top-k ∩ exact top-k| / k. With ``vectors`` and ``queries`` (the
    index's (n, D) and the (q, D) queries): a returned row counts when its exact cosine to the query
    is at least the exact k-th best cosine minus ``eps``, so that among tied candidates (a catalog
    holds exact duplicates: the same title and photo listed twice) any choice is right
    (ANN-Benchmarks' distance-threshold recall, Aumüller et al., arXiv:1807.05614).
    """
    if vectors is None or queries is None:
        hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) for a, e in zip(approx_rows, exact_rows)]
        return float(np.mean(hits)) / k
    hits = []
    for a, e, q in zip(approx_rows, exact_rows, queries):
        kth = float(np.min(vectors[e[:k]] @ q))
        got = vectors[a[:k][a[:k] >= 0]] @ q
        hits.append(int(np.sum(got >= kth - eps)))
    return float(np.mean(hits)) / k


#: the approximate index the pipeline measures search through: what ``item index`` builds above its
#: exact-search threshold by default (pipelines/cli/index.py, docs/index.md): faiss HNSW-SQ8 (M = 32),
#: 5 x k candidates re-ranked from float16 vectors
ANN_SETTINGS = {"m": 32, "ef_construction": 128, "ef_search": 64, "rerank_factor": 5}

#: ``faiss-ivfpq+rerank``'s settings (nlist 0 = the power of two nearest sqrt(n)), chosen at 10^6 and
#: 10^7 by ``benchmarks/index_streaming.py`` (docs/index.md): Recall@10 0.999 at 10^7, p50 2.7 ms
IVFPQ_SETTINGS = {"nlist": 0, "m": 192, "nbits": 8, "nprobe": 8, "rerank_factor": 20}


def ann_search_metrics(emb: np.ndarray, group_ids: np.ndarray, settings: dict | None = None) -> dict[str, float]:
    """Same-product Recall@1 and Recall@10 measured through the approximate (HNSW) index serving uses
    above its exact-search threshold, instead of exact search.

    Every same-product group member queries the index of all n listings (faiss HNSW-SQ8 re-ranked
    from float16 vectors, :data:`ANN_SETTINGS`), itself excluded; a hit is a same-group listing among
    the first 1 / 10 the index returns. Compare with the exact ``recall@1`` / ``recall@10`` of
    :func:`item_model.evaluation.score_embeddings` (ties: exact search breaks them at random, the index in its own order).

    Args:
        emb: (n, D) float32, L2-normalised. group_ids: (n,) int64, -1 for no group.

    Returns:
        ``{"ann_recall@1", "ann_recall@10"}`` in [0, 1], and ``"ann_n_queries"``.

    Raises:
        ValueError: no listing is in a group.
    """
    import tempfile

    groups = np.asarray(group_ids, dtype=np.int64)
    queries = np.flatnonzero(groups >= 0)
    if len(queries) == 0:
        raise ValueError("group_id: no listing is in a same-product group; nothing to search for")
    settings = dict(settings or ANN_SETTINGS)
    factor = int(settings.pop("rerank_factor", 5))
    with tempfile.TemporaryDirectory(prefix="item-ann-") as tmp:
        index = RerankedIndex.build(FaissHNSWIndex.build(emb, **settings), emb, tmp, factor=factor)
        rows, _ = index.search(emb[queries], min(11, len(emb)))
        del index                                        # release the mapped file before the folder goes
    hits = {1: 0, 10: 0}
    for q, found in zip(queries, rows):
        found = found[(found != q) & (found >= 0)][:10]
        same = groups[found] == groups[q]
        hits[1] += bool(same[:1].any())
        hits[10] += bool(same.any())
    return {"ann_recall@1": hits[1] / len(queries), "ann_recall@10": hits[10] / len(queries),
            "ann_n_queries": int(len(queries))}
