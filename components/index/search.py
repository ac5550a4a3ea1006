"""Searching a catalog index from Python the way ``/similar`` does: vector, keyword or hybrid, under
filters and exclusions (:class:`CatalogSearch`). The service holds one per served model; a notebook
or a batch job loads one from an index folder::

    from components.index.search import CatalogSearch
    cs = CatalogSearch.load("item-storage/indexes/<version>")
    hits = cs.search(k=10, vector=cs.vector_of("15970"), exclude_ids=["15970"],
                     filters={"gender": ["Men", "Unisex"], "year": {"gte": 2012}})
    [cs.ids[r] for r in hits.rows], hits.search, hits.matching, hits.notes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.index.filters import FilterMatch, ListingFilter, exact_top_k, filtered_search
from components.index.lexical import LexicalIndex, reciprocal_rank_fusion

#: candidates each side of a hybrid query brings to reciprocal rank fusion (at least k)
HYBRID_CANDIDATES = 50
SEARCH_MODES = ("vector", "keyword", "hybrid")
#: the keyword list's weight in hybrid fusion (the vector list's is 1), chosen by
#: benchmarks/filtered_search.py on the shared catalog (docs/index.md): at 0.1 hybrid Recall@1 is 1.000
#: on exact titles (vector 1.000, keyword 0.964) and 0.982 on same-product search (vector 0.982), and
#: 0.506 on seller-rewritten titles (vector 0.452, keyword 0.538); 0.5-1 is better on rewritten
#: titles (0.562-0.568) and worse on same-product search (0.894-0.820)
DEFAULT_KEYWORD_WEIGHT = 0.1


@dataclass
class SearchHits:
    """One query's answer: ``rows`` (k',) int64 and ``scores`` (k',) float32, best first; ``search`` the
    path taken (``"exact"``, the approximate index's kind, or ``"bm25"``); ``matching`` the listings the
    filters keep; ``notes`` what the answer should tell its reader (a value no listing has, ...)."""

    rows: np.ndarray
    scores: np.ndarray
    search: str
    matching: int
    notes: list[str] = field(default_factory=list)


class CatalogSearch:
    """A catalog index ready to search: its listings, vectors per kind, approximate index per kind (when
    built), filterable columns and BM25 over the titles.

    Args:
        listings: the index's listings (rows aligned with every vector matrix).
        vectors: ``{kind: (n, D) float32 or float16}`` (the joint vectors at least).
        ann: ``{kind: approximate index}`` (:mod:`components.index.backends`), empty = exact search.
        lexical: BM25 over the titles (built from ``listings`` when None).
    """

    def __init__(self, listings: pd.DataFrame, vectors: dict[str, np.ndarray], ann: dict | None = None,
                 lexical: LexicalIndex | None = None):
        self.listings = listings.reset_index(drop=True)
        self.vectors, self.ann = vectors, dict(ann or {})
        self.ids = self.listings["product_id"].astype(str).to_numpy()
        self.row_of = {pid: i for i, pid in enumerate(self.ids)}
        self.filter = ListingFilter(self.listings)
        self.lexical = lexical if lexical is not None else LexicalIndex.build(self.listings["title"])

    @classmethod
    def load(cls, root: str | Path, model_version: str | None = None) -> "CatalogSearch":
        """An index root (``catalog_index/`` and, when built, ``vector_index/<kind>/``) or a
        ``catalog_index`` folder itself.

        Raises:
            FileNotFoundError: no ``index.json``. IndexVersionMismatch: an approximate index of another
                model version than ``model_version``.
        """
        from components.index.backends import load_index
        from components.index.layout import load_catalog_index
        from components.index.lexical import LEXICAL_DIR
        root = Path(root)
        folder = root / "catalog_index" if (root / "catalog_index").is_dir() else root
        listings, vectors, meta = load_catalog_index(folder)
        ann = {}
        if meta.get("search", "exact") != "exact":
            for kind in vectors:
                ann[kind] = load_index(folder.parent / "vector_index" / kind, model_version=model_version)
        return cls(listings, vectors, ann, LexicalIndex.load(folder / LEXICAL_DIR, listings["title"]))

    def __len__(self) -> int:
        return len(self.ids)

    def vector_of(self, product_id: str, kind: str = "joint") -> np.ndarray:
        """The stored (D,) float32 vector of a listing. Raises KeyError: not in the index."""
        return np.asarray(self.vectors[kind][self.row_of[str(product_id)]], dtype=np.float32)

    def vector_search(self, kind: str, query: np.ndarray, k: int, exclude: int | None = None,
                      mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """Top-k rows of the vectors ``kind`` for a (D,) float32 query: (rows, cosine scores, path).
        ``exclude`` a row never returned; ``mask`` (n,) bool the rows that may be
        (:func:`components.index.filters.filtered_search`)."""
        ann = self.ann.get(kind)
        if mask is not None:
            if exclude is not None:
                mask = mask.copy()
                mask[exclude] = False
            return filtered_search(self.vectors[kind], ann, query, k, mask)
        if ann is None:
            if self.vectors[kind].dtype == np.float32:
                from components.index.backends import ExactIndex
                rows, scores = top_k(self.vectors[kind], query, k, exclude)
                return rows, scores, ExactIndex.kind
            keep = None if exclude is None else np.arange(len(self)) != exclude
            rows, scores = exact_top_k(self.vectors[kind], query, k, keep)
            return rows, scores, "exact"
        rows, scores = ann.search(query[None, :], k + (exclude is not None))
        keep = (rows[0] >= 0) & (rows[0] != (-1 if exclude is None else exclude))
        return rows[0][keep][:k], scores[0][keep][:k], ann.kind

    def search(self, k: int, mode: str = "vector", vector: np.ndarray | None = None, text: str | None = None,
               kind: str = "joint", filters: dict | None = None, exclude_ids: list | None = None,
               exclude_row: int | None = None, keyword_weight: float = DEFAULT_KEYWORD_WEIGHT,
               match: FilterMatch | None = None
               ) -> SearchHits:
        """One query, in one of :data:`SEARCH_MODES`.

        Args:
            k: results wanted (fewer when fewer listings match).
            mode: ``"vector"`` (cosine over ``vector`` among the vectors ``kind``), ``"keyword"`` (BM25 of
                ``text`` over the titles) or ``"hybrid"`` (the top max(k, :data:`HYBRID_CANDIDATES`) of each,
                fused by reciprocal rank fusion, weights 1 for the vector list and ``keyword_weight`` for
                the keyword list: Cormack et al., SIGIR 2009).
            vector: (D,) float32, L2-normalised (vector, hybrid). text: the query text (keyword, hybrid).
            filters / exclude_ids: :meth:`components.index.filters.ListingFilter.match`.
            exclude_row: a row never returned (the queried listing's own).
            match: the filters already resolved (``self.filter.match(filters, exclude_ids)``), used instead
                of ``filters`` / ``exclude_ids``.

        Returns:
            :class:`SearchHits`; scores are cosine similarities (vector), BM25 scores (keyword) or fused
            RRF scores (hybrid).

        Raises:
            FilterError: a bad filter (naming its field). ValueError: an unknown mode, or a mode without
                the query it needs (``vector`` / ``text``).
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode: {mode!r} is not one of {SEARCH_MODES}")
        if mode != "keyword" and vector is None:
            raise ValueError(f"vector: mode {mode!r} needs a query vector")
        if mode != "vector" and not (text or "").strip():
            raise ValueError(f"text: mode {mode!r} needs a query text")
        if match is None:
            match = self.filter.match(filters, exclude_ids)
        if mode == "vector":
            rows, scores, how = self.vector_search(kind, vector, k, exclude_row, match.mask)
            return SearchHits(rows, scores, how, match.matching, match.notes)
        keep = match.mask
        if exclude_row is not None:
            keep = np.ones(len(self), dtype=bool) if keep is None else keep.copy()
            keep[exclude_row] = False
        if mode == "keyword":
            rows, scores = self.lexical.search(text, k, keep)
            return SearchHits(rows, scores, "bm25", match.matching, match.notes)
        wide = max(int(k), HYBRID_CANDIDATES)
        vrows, _, how = self.vector_search(kind, vector, wide, exclude_row, match.mask)
        krows, _ = self.lexical.search(text, wide, keep)
        rows, scores = reciprocal_rank_fusion([vrows, krows], [1.0, float(keyword_weight)], k)
        return SearchHits(rows, scores, how, match.matching, match.notes)


def top_k(index: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search: one float32 matrix-vector product over the whole index (torch,
    so it uses the worker's one thread pool) and ``np.argpartition`` for the top k.

    Args:
        index: (n, D) float32, C-contiguous, L2-normalised rows (so scores are cosine similarities).
        query: (D,) float32.
        k: results wanted (>= 1); fewer when the index is smaller.
        exclude: a row never returned (the query's own row), or None.

    Returns:
        (rows (k',) int64, scores (k',) float32), best first.
    """
    import torch
    scores = torch.mv(torch.from_numpy(index), torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))).numpy()
    if exclude is not None:
        scores[exclude] = -np.inf
    k = min(int(k), len(scores) - (exclude is not None))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return top.astype(np.int64), scores[top]
