"""Filtered search over a catalog index: conditions on the listings' columns (``/similar``'s
``filters`` and ``exclude_ids``, the Python API's :func:`filtered_search`).

A filter is a JSON object ``{column: condition}``, every condition must hold (AND):

==========================  ==============================================================
condition                   matches
==========================  ==============================================================
``"Tshirts"`` / ``2012``    equality (a string column takes a string, ``year`` a number)
``["Men", "Unisex"]``       any of the values (a set); an empty list is an error
``{"in": [...]}``           the same; ``{"not_in": [...]}`` none of them; ``{"ne": v}`` not v
``{"gte": 2012, "lt": 2015}``  a range; ``gt`` / ``gte`` / ``lt`` / ``lte`` (numbers, or strings
                            compared in Unicode order)
==========================  ==============================================================

A listing whose value is missing (null) matches no condition except ``ne`` / ``not_in``. Columns: the
ones :data:`components.index.layout.FILTER_COLUMNS` names, plus any scalar column a catalog adds
(kept in the index by :func:`components.catalog.to_canonical`).

Search under a filter (:func:`filtered_search`): an exact index scores only the matching rows. With an
approximate index, a selective filter (few matching rows) is answered by exact search over them; a
broad one first by an ordinary approximate query whose non-matching results are dropped, and when
that leaves fewer than k (the filter removed the query's neighbourhood) by the backend's own filtered
search (faiss: an ``IDSelectorBitmap`` in the HNSW / IVF search parameters, its candidate list
widened), or by more candidates filtered (usearch, Milvus). HNSW's recall collapses when the filter
removes the query's neighbourhood (the walk starts among rows it may not return); measured in
``benchmarks/filtered_search.py`` (docs/index.md), which chose the thresholds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import pandas as pd

#: below this fraction of matching listings a filtered query is answered by exact search over the
#: matching rows (benchmarks/filtered_search.py, docs/index.md)
SELECTIVE_FRACTION = 0.05
#: ... or at most this many (exact search over 20,000 float32 rows of D = 384: ~2.5 ms on one core here);
#: ``ITEM_FILTER_EXACT_ROWS`` overrides it in the service
EXACT_ROWS = int(os.environ.get("ITEM_FILTER_EXACT_ROWS", "20000"))
#: candidates of the unfiltered probe that decides between post-filtering and a filtered search
PROBE = 100
#: matching rows gathered from the nearest k-means cells (:class:`CoarseCells`) and scored exactly
#: when a filter removed the query's neighbourhood (benchmarks/filtered_search.py)
CELL_ROWS = int(os.environ.get("ITEM_FILTER_CELL_ROWS", "4000"))
#: ... from at least this many cells holding matching rows (at 10^6 listings, 1,000 cells: Recall@10 of
#: those queries 0.89 -> 0.97 for a 50 % filter, 0.94 -> 0.995 for a 10 % one, 5-14 ms)
CELL_PROBES = int(os.environ.get("ITEM_FILTER_CELL_PROBES", "32"))
#: the path name of that search in answers (``/similar``'s ``search``)
CELLS_PATH = "filtered-cells"
#: ``exclude_ids`` longer than this is refused (a request is not a bulk job)
MAX_EXCLUDE_IDS = 10_000
OPERATORS = ("in", "not_in", "ne", "gt", "gte", "lt", "lte")
#: columns of the index that are not attributes to filter on
NOT_FILTERABLE = {"product_id", "title", "split", "group_id", "content_hash", "model_version",
                  "image_bytes", "image_uri"}


class FilterError(ValueError):
    """A bad filter; ``field`` names it (``filters.colour``, ``exclude_ids[3]``), the message says why."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass
class FilterMatch:
    """The rows a filter keeps: ``mask`` (n,) bool (None = no filter: every row), ``matching`` its count,
    and ``notes`` for the answer (a value that matches nothing, excluded ids not in the catalog)."""

    mask: np.ndarray | None
    matching: int
    notes: list[str] = field(default_factory=list)


class _Column:
    """One filterable column: numbers as float64 with NaN for null, strings as category codes."""

    def __init__(self, name: str, values: pd.Series):
        self.name = name
        self.boolean = pd.api.types.is_bool_dtype(values.dtype)       # held as 0 / 1, compared as numbers
        self.numeric = pd.api.types.is_numeric_dtype(values.dtype) or self.boolean
        if self.boolean:
            values = values.astype("float64")
        if self.numeric:
            self.values = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            cat = pd.Categorical(values.astype(object).where(values.notna(), None).map(
                lambda v: None if v is None else str(v)))
            self.levels = np.asarray(cat.categories, dtype=object)
            self.codes = np.asarray(cat.codes, dtype=np.int32)              # -1 = null
            self.level_of = {v: i for i, v in enumerate(self.levels)}

    def _value(self, value, field_name: str):
        if self.boolean:
            if not isinstance(value, bool):
                raise FilterError(field_name, f"{value!r} is a {type(value).__name__}; column {self.name!r} "
                                              f"holds true / false")
            return float(value)
        if self.numeric:
            if isinstance(value, bool) or not isinstance(value, Real):
                raise FilterError(field_name, f"{value!r} is a {type(value).__name__}; column {self.name!r} "
                                              f"holds numbers")
            return float(value)
        if not isinstance(value, str):
            raise FilterError(field_name, f"{value!r} is a {type(value).__name__}; column {self.name!r} "
                                          f"holds strings")
        return value

    def _isin(self, values: list, field_name: str) -> tuple[np.ndarray, list]:
        if not isinstance(values, list) or not values:
            raise FilterError(field_name, "a set of values must be a non-empty list")
        vals = [self._value(v, f"{field_name}[{i}]") for i, v in enumerate(values)]
        if self.numeric:
            return np.isin(self.values, np.asarray(vals, dtype=np.float64)), []
        codes = [self.level_of[v] for v in vals if v in self.level_of]
        return np.isin(self.codes, np.asarray(codes, dtype=np.int32)), [v for v in vals if v not in self.level_of]

    def _compare(self, op: str, value, field_name: str) -> np.ndarray:
        v = self._value(value, field_name)
        if self.numeric:
            x, ok = self.values, ~np.isnan(self.values)
        else:       # compare the (few) levels, then look the codes up
            x, ok = self.levels, None
        out = {"gt": x > v, "gte": x >= v, "lt": x < v, "lte": x <= v}[op] if len(x) else np.zeros(0, bool)
        if self.numeric:
            return out & ok
        level_ok = np.append(np.asarray(out, dtype=bool), False)               # code -1 (null) -> False
        return level_ok[self.codes]

    def mask(self, condition, field_name: str) -> tuple[np.ndarray, list]:
        """(n,) bool of the rows meeting ``condition``, and the values asked for that no row holds."""
        if isinstance(condition, list):
            return self._isin(condition, field_name)
        if not isinstance(condition, dict):
            v = self._value(condition, field_name)
            if self.numeric:
                return self.values == v, []
            code = self.level_of.get(v)
            return (self.codes == code if code is not None else np.zeros(len(self.codes), bool)), \
                ([] if code is not None else [v])
        if not condition:
            raise FilterError(field_name, f"an empty condition; use a value, a list or operators {list(OPERATORS)}")
        out, missing = None, []
        for op, value in condition.items():
            sub = f"{field_name}.{op}"
            if op == "in":
                m, miss = self._isin(value, sub)
                missing += miss
            elif op == "not_in":
                m = ~self._isin(value, sub)[0]
            elif op == "ne":
                m = ~self.mask(value, sub)[0] if not isinstance(value, (list, dict)) else None
                if m is None:
                    raise FilterError(sub, "takes one value")
            elif op in ("gt", "gte", "lt", "lte"):
                m = self._compare(op, value, sub)
            else:
                raise FilterError(sub, f"unknown operator; use one of {list(OPERATORS)}")
            out = m if out is None else out & m
        return out, missing


class ListingFilter:
    """The filterable columns of a catalog index's listings, prepared once (at load) so that a filter
    costs a few vectorised comparisons per query (about 1 ms per condition at 10^6 listings).

    Args:
        listings: the index's listings (:func:`components.index.layout.load_catalog_index`), rows
            aligned with its embeddings; ``product_id`` for ``exclude_ids``.
    """

    def __init__(self, listings: pd.DataFrame):
        self.n = len(listings)
        self.columns = {c: _Column(c, listings[c]) for c in listings.columns if c not in NOT_FILTERABLE
                        and _scalar(listings[c])}
        ids = listings["product_id"].astype(str).to_numpy() if "product_id" in listings else np.empty(0, object)
        self.row_of = {pid: i for i, pid in enumerate(ids)}

    def match(self, filters: dict | None = None, exclude_ids: list | None = None) -> FilterMatch:
        """The rows meeting every condition of ``filters`` and not named by ``exclude_ids``.

        Args:
            filters: ``{column: condition}`` (module docstring); None or {} = no condition.
            exclude_ids: product ids never returned; ids not in the catalog give a note.

        Returns:
            :class:`FilterMatch`; ``mask`` None when neither argument restricts anything.

        Raises:
            FilterError: an unknown column (listing the filterable ones), a value of the wrong type, an
                unknown operator, an empty set, or ``exclude_ids`` not a list of strings.
        """
        mask, notes = None, []
        for column, condition in (filters or {}).items():
            name = f"filters.{column}"
            if column not in self.columns:
                raise FilterError(name, f"unknown column; the index's filterable columns are {sorted(self.columns)}")
            m, missing = self.columns[column].mask(condition, name)
            if missing:
                notes.append(f"{name}: no listing has {', '.join(repr(v) for v in missing[:5])}")
            mask = m if mask is None else mask & m
        if exclude_ids:
            if not isinstance(exclude_ids, list) or len(exclude_ids) > MAX_EXCLUDE_IDS:
                raise FilterError("exclude_ids", f"must be a list of at most {MAX_EXCLUDE_IDS} product ids")
            rows, unknown = [], 0
            for i, pid in enumerate(exclude_ids):
                if not isinstance(pid, str):
                    raise FilterError(f"exclude_ids[{i}]", f"{pid!r} is a {type(pid).__name__}, expected a string")
                row = self.row_of.get(pid)
                unknown += row is None
                if row is not None:
                    rows.append(row)
            if unknown:
                notes.append(f"exclude_ids: {unknown} of {len(exclude_ids)} id(s) are not in the catalog")
            keep = np.ones(self.n, dtype=bool) if mask is None else mask.copy()
            keep[np.asarray(rows, dtype=np.int64)] = False
            mask = keep
        matching = self.n if mask is None else int(mask.sum())
        if mask is not None and matching == 0:
            notes.append("the filters match no listing")
        return FilterMatch(mask, matching, notes)


def _scalar(values: pd.Series) -> bool:
    """Whether a column holds scalars (numbers, strings, booleans), not bytes, lists or dicts."""
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        return True
    sample = values.dropna().head(100)
    return all(isinstance(v, (str, int, float, bool, np.integer, np.floating)) for v in sample)


def exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product among the rows ``mask`` keeps.

    Args:
        vectors: (n, D) float32 or float16 (e.g. the re-rank copy mapped from disk), L2-normalised.
        query: (D,) float32, L2-normalised.
        mask: (n,) bool or None (every row). Only the matching rows are read when they are under half
            of the catalog; otherwise every row is scored and the others set to -inf.

    Returns:
        (rows (k',) int64, cosine scores (k',) float32), best first, k' = min(k, matching rows).
    """
    q = np.asarray(query, dtype=np.float32)
    if mask is None:
        rows = None
        scores = np.asarray(vectors @ q.astype(vectors.dtype), dtype=np.float32)
    else:
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if len(rows) * 2 < len(vectors):
            scores = np.asarray(np.asarray(vectors[rows], dtype=np.float32) @ q, dtype=np.float32)
        else:
            scores = np.asarray(vectors @ q.astype(vectors.dtype), dtype=np.float32)[rows]
    k = min(int(k), len(scores))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return (top if rows is None else rows[top]).astype(np.int64), scores[top]


def filtered_search(vectors: np.ndarray, ann, query: np.ndarray, k: int, mask: np.ndarray | None = None,
                    selective_fraction: float = SELECTIVE_FRACTION, exact_rows: int = EXACT_ROWS
                    ) -> tuple[np.ndarray, np.ndarray, str]:
    """Top-k of a catalog index under a filter, by the path the module docstring describes:

    1. no approximate index, or at most ``max(exact_rows, selective_fraction * n)`` matching rows:
       exact search over the matching rows;
    2. else a probe: the unfiltered approximate top-:data:`PROBE` (one ordinary ANN query). When at least
       k of them match, they are the answer (the filter is broad around this query: post-filtering);
    3. else the filter removed the query's neighbourhood (a filter correlated with the query, e.g.
       ``gender: Men`` for a women's dress): when the index has :class:`CoarseCells` (built with every
       embedded index), the matching rows of the cells nearest the query, at least :data:`CELL_ROWS`
       from :data:`CELL_PROBES` cells, scored exactly (path :data:`CELLS_PATH`); otherwise the backend's own filtered search with
       its candidate list widened by 1 / the probe's matching share (faiss;
       :data:`components.index.faiss_backends.FILTERED_EF_MAX` at most), or for backends without
       one ``k / share`` candidates filtered;
    4. fewer than k found: exact search over the matching rows.

    Args:
        vectors: (n, D) float32/float16 catalog vectors (exact search, and the fallback).
        ann: the approximate index (:mod:`components.index.backends`) or None (exact search).
        query: (D,) float32, L2-normalised.
        mask: (n,) bool of the rows that may be returned, or None.
        selective_fraction / exact_rows: the exact-search thresholds of step 1.

    Returns:
        (rows (k',) int64, cosine scores (k',) float32, path): path is ``"exact"`` or the approximate
        index's kind, the one that produced the answer.
    """
    n = len(vectors)
    matching = n if mask is None else int(mask.sum())
    if ann is None or (mask is not None and matching <= max(exact_rows, selective_fraction * n)):
        rows, scores = exact_top_k(vectors, query, k, mask)
        return rows, scores, "exact"
    want = min(int(k), matching)
    q = np.asarray(query, dtype=np.float32)[None, :]
    if mask is None:
        rows, scores = ann.search(q, want)
        return rows[0].astype(np.int64), scores[0].astype(np.float32), ann.kind
    rows, scores = ann.search(q, min(len(ann), max(PROBE, want)))
    rows, scores = rows[0], scores[0]
    valid = rows >= 0
    hit = valid & mask[np.clip(rows, 0, n - 1)]
    if hit.sum() >= want:
        return rows[hit][:want].astype(np.int64), scores[hit][:want].astype(np.float32), ann.kind
    cells = getattr(ann, "cells", None)
    if cells is not None:                    # the matching rows of the nearest cells, scored exactly
        cand = np.sort(cells.candidates(query, mask, max(CELL_ROWS, 20 * want), CELL_PROBES))
        scores = np.asarray(np.asarray(vectors[cand], dtype=np.float32) @ q[0], dtype=np.float32)
        top = np.argsort(-scores, kind="stable")[:want]
        if len(top) == want:
            return cand[top].astype(np.int64), scores[top], CELLS_PATH
    share = max(float(hit.sum()) / max(int(valid.sum()), 1), 1.0 / 64)
    if getattr(ann, "supports_mask", False):
        rows, scores = ann.search(q, want, mask=mask, widen=1.0 / share)
    else:
        rows, scores = ann.search(q, min(len(ann), int(np.ceil(2 * want / share))))
    rows, scores = rows[0], scores[0]
    keep = (rows >= 0) & mask[np.clip(rows, 0, n - 1)]
    rows, scores = rows[keep][:want], scores[keep][:want]
    if len(rows) < want:                     # the approximate search ran dry: answer exactly
        rows, scores = exact_top_k(vectors, query, k, mask)
        return rows, scores, "exact"
    return rows.astype(np.int64), scores.astype(np.float32), ann.kind


class CoarseCells:
    """k-means cells of a catalog's vectors, for filtered search when a filter removes the query's
    neighbourhood: the cells are visited nearest centroid first, and only their matching rows are
    gathered, until ``target`` of them (or every matching row) are in hand; those are scored exactly.
    An inverted file (IVF, Jégou et al., TPAMI 2011) whose probe depth adapts to the filter, with no
    codes of its own: row ids only (4-8 bytes a row) and the centroids; scoring reads the index's own
    vectors (the float16 re-rank copy).

    Args:
        centroids: (c, D) float32, L2-normalised. order: (n,) int64 rows sorted by cell. offsets:
            (c + 1,) int64, cell i's rows are ``order[offsets[i]:offsets[i + 1]]``.
    """

    FILE = "filter_cells.npz"

    def __init__(self, centroids: np.ndarray, order: np.ndarray, offsets: np.ndarray):
        self.centroids, self.order, self.offsets = centroids, order, offsets

    @classmethod
    def build(cls, vectors: np.ndarray, cells: int = 0, seed: int = 0, sample: int = 65_536) -> "CoarseCells":
        """k-means (spherical, faiss) on at most ``sample`` rows of (n, D) ``vectors``; ``cells`` 0 =
        about sqrt(n) (1,000 at 10^6), at least 1."""
        import faiss
        n, dim = vectors.shape
        cells = int(cells) or int(max(1, min(round(np.sqrt(n)), n // 39 or 1)))
        rng = np.random.default_rng(seed)
        train = vectors if n <= sample else vectors[np.sort(rng.choice(n, sample, replace=False))]
        km = faiss.Kmeans(dim, cells, niter=10, seed=seed, spherical=True, verbose=False)
        km.train(np.ascontiguousarray(train, dtype=np.float32))
        flat = faiss.IndexFlatIP(dim)
        flat.add(km.centroids)
        assign = np.empty(n, dtype=np.int64)
        for s in range(0, n, 65_536):
            _, a = flat.search(np.ascontiguousarray(vectors[s:s + 65_536], dtype=np.float32), 1)
            assign[s:s + len(a)] = a[:, 0]
        order = np.argsort(assign, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=cells))]).astype(np.int64)
        return cls(np.ascontiguousarray(km.centroids, dtype=np.float32), order, offsets)

    def save(self, folder) -> None:
        """``filter_cells.npz`` in ``folder`` (numpy arrays, read back without pickle)."""
        from pathlib import Path

        from item_model.io import atomic_path
        with atomic_path(Path(folder) / self.FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, centroids=self.centroids, order=self.order, offsets=self.offsets)

    @classmethod
    def load(cls, folder) -> "CoarseCells | None":
        """The cells saved in ``folder``, or None when it has none (an index built before them)."""
        from pathlib import Path
        path = Path(folder) / cls.FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            return cls(z["centroids"], z["order"], z["offsets"])

    def candidates(self, query: np.ndarray, mask: np.ndarray, target: int, min_cells: int = 0) -> np.ndarray:
        """The matching rows of the cells nearest ``query`` ((D,) float32), cell by cell, until at least
        ``target`` rows from at least ``min_cells`` cells holding matching rows are gathered, or every
        cell is visited: (m,) int64."""
        ranked = np.argsort(-(self.centroids @ np.asarray(query, dtype=np.float32)))
        found, count = [], 0
        for c in ranked:
            rows = self.order[self.offsets[c]:self.offsets[c + 1]]
            rows = rows[mask[rows]]
            if len(rows):
                found.append(rows)
                count += len(rows)
                if count >= target and len(found) >= min_cells:
                    break
        return np.concatenate(found) if found else np.empty(0, dtype=np.int64)
