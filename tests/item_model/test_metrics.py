"""Recall@k and mAP against hand-computed cases; the category probe on real embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from item_model.metrics import probe_metrics, retrieval_metrics, retrieval_ranks


def _unit(*angles_deg):
    a = np.deg2rad(np.array(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_hand_computed_recall_and_map():
    # listings on a circle; cosine falls with angular distance
    emb = _unit(0, 10, 20, 100, 5, 180)
    groups = np.array([0, 0, -1, -1, 1, 1])
    # query 0 (0 deg): others by score: 4(5) 1(10) 2(20) 3(100) 5(180) -> relevant 1 at rank 2
    # query 1 (10 deg): 4(5 deg away) 0(10) 2(10)... ties broken at random -> relevant 0 at rank 2 or 3
    # query 4 (5 deg): 0(5) 1(5) 2(15) 3(95) 5(175) -> relevant 5 at rank 5
    # query 5 (180): 3(80) 2(160) 1(170) 4(175) 0(180) -> relevant 4 at rank 4
    ranks = retrieval_ranks(emb, groups)
    assert ranks[0, 0] == 2 and ranks[1, 0] in (2, 3) and ranks[2, 0] == 5 and ranks[3, 0] == 4
    m = retrieval_metrics(emb, groups, ks=(1, 2, 5))
    assert m["recall@1"] == 0.0
    assert m["recall@5"] == 1.0
    r1 = ranks[1, 0]
    assert m["recall@2"] == pytest.approx((1 + (r1 == 2)) / 4)
    assert m["mAP"] == pytest.approx(np.mean([1 / 2, 1 / r1, 1 / 5, 1 / 4]))
    assert m["n_queries"] == 4


def test_map_with_several_relevant_items():
    emb = _unit(0, 1, 50, 2, 90)
    groups = np.array([7, 7, 7, -1, -1])
    # query 0: 1(1) 3(2) 2(50) 4(90): relevant at ranks 1, 3 -> AP = (1/1 + 2/3) / 2
    m = retrieval_metrics(emb, groups, query_index=np.array([0]))
    assert m["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["recall@1"] == 1.0


def test_ties_are_not_broken_in_the_relevant_items_favour():
    # 20 identical vectors (identical titles), one pair is the same product
    emb = np.ones((20, 4), dtype=np.float32) / 2
    groups = -np.ones(20, dtype=int)
    groups[:2] = 0
    m = retrieval_metrics(emb, groups)
    assert m["recall@1"] < 1.0                    # an optimistic tie-break would give 1.0
    assert 0.0 < m["mAP"] < 1.0


def test_query_without_partner_is_an_error():
    emb = _unit(0, 10, 20)
    with pytest.raises(ValueError, match="no other member"):
        retrieval_metrics(emb, np.array([0, -1, -1]))


def test_probe_on_separable_and_random_features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["a", "b", "c"], dtype=object), 60)
    centers = rng.normal(size=(3, 16)) * 5
    x = centers[np.repeat(np.arange(3), 60)] + rng.normal(size=(180, 16))
    idx = rng.permutation(180)
    tr, te = idx[:120], idx[120:]
    good = probe_metrics(x[tr], y[tr], x[te], y[te])
    assert good["category_accuracy"] > 0.95 and good["n_classes"] == 3
    noise = rng.normal(size=(180, 16))
    bad = probe_metrics(noise[tr], y[tr], noise[te], y[te])
    assert bad["category_accuracy"] < 0.7


def test_probe_drops_classes_rare_in_training():
    x = np.eye(12, dtype=np.float32).repeat(5, axis=0)
    y = np.array(["a"] * 30 + ["b"] * 26 + ["rare"] * 4, dtype=object)
    m = probe_metrics(x, y, x, y, min_train_per_class=5)
    assert m["n_classes"] == 2 and m["n_test"] == 56


def test_search_metrics_at_catalog_scale_match_a_per_query_reference():
    """Same-product search over the whole real catalog (44,441 ids, the real 496 groups): the
    vectorised ranks equal a plain per-query reference on a sample of queries, in one pass over all
    1,100 queries (no Python loop over queries in the metric itself)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from tests.conftest import CATALOG

    ids = np.concatenate([pq.read_table(p, columns=["id"]).column("id").to_numpy()
                          for p in sorted((CATALOG / "data").glob("*.parquet"))])
    assert len(ids) == 44441
    pairs = pd.read_csv(CATALOG / "same_product_groups.csv")
    groups = pd.Series(pairs["group_id"].to_numpy(), index=pairs["id"]).reindex(ids).fillna(-1).astype(np.int64).to_numpy()
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(ids), 64)).astype(np.float32)
    # plant near-duplicates for most groups, so ranks spread from 1 to the thousands
    members = np.flatnonzero(groups >= 0)
    for g in np.unique(groups[members])[::2]:
        rows = np.flatnonzero(groups == g)
        emb[rows[1:]] = emb[rows[0]] + 0.3 * rng.standard_normal((len(rows) - 1, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    ranks = retrieval_ranks(emb, groups)
    assert ranks.shape[0] == 1100 == len(members)
    for qi in rng.choice(len(members), 25, replace=False):
        q = members[qi]
        scores = emb @ emb[q]
        scores[q] = -np.inf
        rel = [r for r in np.flatnonzero(groups == groups[q]) if r != q]
        expected = sorted(int((scores > scores[r]).sum()) + 1 for r in rel)    # no ties among random floats
        assert ranks[qi, :len(rel)].tolist() == expected
    m = retrieval_metrics(emb, groups)
    assert 0.3 < m["recall@1"] < 0.7 and m["n_queries"] == 1100
