"""The "title-decides" same-product check: groups of listings where the title carries product
identity and the photo misleads, relabelled from the catalog itself (no new data).

Why: the shared catalog's own same-product groups (``same_product_groups.csv`` -> canonical
``group_id``) are listings with an identical title *and* a near-identical photo (equal 64-bit
difference hash, mean 8 x 8 RGB difference below 6; the catalog's README), so the photo decides
there and a pixel baseline already reaches Recall@1 ~0.94. Real retail catalogs also hold the
opposite kind of same-product group: the same style listed again in another colour, or
photographed again, where the title is identical but the photo differs. An embedding that follows
the photo fails those (``shared/docs/item-model.md``, "What the measurements taught"). This module
builds such groups from the shared catalog:

* a group is every listing with one normalised title (:func:`normalise_title`: lower-cased,
  whitespace runs collapsed to one space, stripped);
* the title qualifies when all the evaluated catalog's listings with it share one leaf
  ``category``, there are between ``min_size`` and ``max_size`` of them (default 2..6, the size
  range of the real groups; bigger generic clusters such as the 82 "Lucera Women Silver Earrings"
  are different products under one generic title and are left out), and none of them is a member
  of a real same-product group (so no two photos are near-duplicates of each other);
* queries: every member; gallery: the whole evaluated catalog (itself excluded); metrics
  Recall@1, Recall@10, mAP (:func:`item_model.metrics.retrieval_details`).

It measures whether the embedding lets the title decide when the photo misleads (same style,
another photo): a title-only model ranks the identically titled listings first by construction,
a photo-only model finds them only when the photos happen to look alike. The groups are relabelled
with a rule, not checked by hand: a few qualifying titles may still name different products.

Qualification is decided on the catalog passed in (the evaluated one), unless a ``reference``
catalog is given: on a sample, a title whose full-catalog cluster is larger than ``max_size`` (or
spans two categories) can qualify with the listings the sample kept. On the 12,000-listing default
sample 303 of its 890 groups (954 of 2,230 queries) are such titles; pass the full catalog as
``reference`` to keep only titles that qualify on it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: metric keys added to each model's metrics in eval.json
METRIC_KEYS = ("title_decides_recall@1", "title_decides_recall@10", "title_decides_mAP",
               "title_decides_n_queries")


def normalise_title(title: object) -> str | None:
    """``" Lucera  Women Silver Earrings "`` -> ``"lucera women silver earrings"``; None for a
    missing (None/NaN) or blank title."""
    if not isinstance(title, str):
        return None
    t = " ".join(title.lower().split())
    return t or None


def title_decides_groups(df: pd.DataFrame, min_size: int = 2, max_size: int = 6,
                         reference: pd.DataFrame | None = None) -> np.ndarray:
    """Relabel a canonical catalog into title-decides same-product groups (see the module docstring).

    Args:
        df: canonical catalog rows (:mod:`components.catalog`): ``title`` (str, may be null),
            ``category`` (leaf, str), ``group_id`` (Int64 / float, null for listings in no real
            same-product group; a missing column counts as all null).
        min_size, max_size: inclusive bounds on the number of listings that carry a qualifying
            normalised title (``2 <= min_size <= max_size``).
        reference: None (default): titles qualify on ``df`` itself. Else a larger catalog ``df``
            was sampled from (same columns): titles qualify on ``reference`` (its counts,
            categories and real groups), the groups are the ``df`` rows with a qualifying title,
            and a title with fewer than two rows in ``df`` is dropped (no query would have a match).

    Returns:
        (len(df),) int64 aligned with ``df`` rows: a title-decides group id ``0..G-1`` (groups
        numbered in order of their normalised title) for each member, ``-1`` for every other
        listing. Pass it as ``group_ids`` to :func:`item_model.metrics.retrieval_details`; every
        member has at least one other member, so every member is a valid query.

    Raises:
        KeyError: ``title`` or ``category`` is missing.
        ValueError: the size bounds are not ``2 <= min_size <= max_size``.
    """
    if not 2 <= min_size <= max_size:
        raise ValueError(f"title-decides groups need 2 <= min_size <= max_size, got {min_size}, {max_size}")

    def frame(rows: pd.DataFrame) -> pd.DataFrame:
        in_real = (pd.Series(rows["group_id"].to_numpy()).notna().to_numpy(dtype=bool)
                   if "group_id" in rows.columns else np.zeros(len(rows), dtype=bool))
        return pd.DataFrame({"title": pd.Series([normalise_title(t) for t in rows["title"].tolist()], dtype=object),
                             "category": pd.Series(rows["category"].to_numpy(dtype=object)), "in_real": in_real})

    own = frame(df)
    ref = own if reference is None else frame(reference)
    stats = ref[ref["title"].notna()].groupby("title", sort=True).agg(
        n=("category", "size"), n_categories=("category", lambda c: c.nunique(dropna=False)),
        any_real=("in_real", "any"))
    ok = stats[(stats["n"] >= min_size) & (stats["n"] <= max_size) & (stats["n_categories"] == 1)
               & ~stats["any_real"]].index
    has = own["title"].isin(ok).to_numpy()
    if reference is not None:
        counts = own.loc[has, "title"].value_counts()
        has &= own["title"].isin(counts.index[counts >= 2]).to_numpy()
    out = np.full(len(df), -1, dtype=np.int64)
    out[has] = np.unique(own.loc[has, "title"].to_numpy(dtype=str), return_inverse=True)[1]
    return out


def describe_groups(groups: np.ndarray) -> dict:
    """``{"n_groups", "n_queries", "size_counts": {size: n_groups}}`` of a group-id array
    (-1 = no group), for eval.json and reports."""
    g = np.asarray(groups)
    sizes = np.unique(g[g >= 0], return_counts=True)[1]
    counts = np.unique(sizes, return_counts=True)
    return {"n_groups": int(len(sizes)), "n_queries": int(sizes.sum()),
            "size_counts": {int(s): int(c) for s, c in zip(*counts)}}
