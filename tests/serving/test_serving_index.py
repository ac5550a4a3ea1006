"""A served model searches the whole catalog's index that ``item index`` built for its registry
version, not only the training sample packaged with it; above the exact-search threshold through the
approximate (HNSW) index, and ``/similar`` says which. A real ``bentoml serve`` on loopback, a real
registry and store, an index built from real catalog rows none of which is in the packaged sample."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import write_slice
from tests.serving.test_serving import QUIET_ENV, ROOT, Server
from tests.serving.test_serving_champion import _save


def test_server_searches_the_whole_catalog_index_of_its_version_approximately(packaged_model, tmp_path):
    from components.index.build import build_index, embed_shard, index_root_of
    from components.index.layout import load_catalog_index
    from components.registry import ModelRegistry
    from components.index.backends import recall_at_k

    m = packaged_model
    version = ModelRegistry(str(tmp_path / "registry")).register(m["model_dir"], {"eval.json": m["eval_path"]},
                                                                 {"blessed": True})
    home = tmp_path / "bentoml"
    tag = _save(m, home, version)
    storage_root = tmp_path / "storage"
    # the "whole catalog": 40 real listings after the first 300 of shard 0 (the packaged sample's rows)
    catalog = write_slice(tmp_path / "catalog", n_plain=340, n_groups=1, mutate=lambda t: t.slice(300, 40))
    root = index_root_of(version, storage_root)
    for shard in range(2):
        embed_shard(catalog, shard, 2, m["model_dir"], version, root)
    # 40 > exact_max: the default approximate index is built too (HNSW-SQ8 re-ranked from float16)
    built = build_index(root, version, 2, exact_max=10,
                        ann={"m": 16, "ef_construction": 64, "ef_search": 64, "rerank_factor": 5})
    assert built["search"] == "faiss-hnsw-sq8+rerank" and built["n"] == 40
    listings, emb, _ = load_catalog_index(Path(root) / "catalog_index")
    packaged_ids = set(load_catalog_index(m["index_dir"])[0]["product_id"])
    outside = [p for p in listings["product_id"] if p not in packaged_ids]
    assert len(outside) >= 30

    # filtered search: exact over the matching rows at most for the rarest category's count, so that a
    # broad filter goes through the approximate index even in a 40-listing catalog
    common = listings["category"].value_counts()
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(home), "ITEM_MODEL_TAG": tag,
           "ITEM_STORAGE_ROOT": str(storage_root), "ITEM_FILTER_EXACT_ROWS": str(int(common.iloc[-1]))}
    srv = Server("serving.service:ItemService", env, ROOT, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            got, exact = [], []
            for pid in outside[:20]:
                r = client.post("/similar", json={"product_id": pid, "k": 10})
                assert r.status_code == 200, r.text
                body = r.json()
                assert (body["search"], body["index_source"], body["catalog_size"]) == ("faiss-hnsw-sq8+rerank", "catalog", 40)
                assert body["note"] is None and pid not in [n["product_id"] for n in body["results"]]
                rows = [list(listings["product_id"]).index(n["product_id"]) for n in body["results"]]
                q = emb["joint"][list(listings["product_id"]).index(pid)]
                # scores are the cosine up to the float16 re-rank copy
                np.testing.assert_allclose([n["score"] for n in body["results"]], emb["joint"][rows] @ q, atol=2e-3)
                scores = emb["joint"] @ q
                scores[list(listings["product_id"]).index(pid)] = -np.inf
                got.append(rows)
                exact.append(np.argsort(-scores)[:10])
            queries = np.stack([emb["joint"][list(listings["product_id"]).index(p)] for p in outside[:20]])
            # Recall@10 against exact search, tie-aware to the index's float16 resolution: the tiny test
            # model's vectors lie within ~1e-3 cosine of each other, so float16 reorders near-ties
            assert recall_at_k(np.array(got), np.array(exact), 10, vectors=emb["joint"], queries=queries,
                               eps=2e-3) >= 0.95

            r = client.post("/similar", json={"listing": {"title": listings["title"].iloc[0]}, "k": 5})
            assert r.status_code == 200, r.text
            assert (r.json()["index"], r.json()["search"]) == ("text", "faiss-hnsw-sq8+rerank")
            # filtered (issue 33): a broad filter through the approximate index, a selective one by exact
            # search over its matching rows; either says which
            for category, path in ((common.index[0], "faiss-hnsw-sq8+rerank"), (common.index[-1], "exact")):
                r = client.post("/similar", json={"product_id": outside[1], "k": 3, "filters": {"category": category}})
                assert r.status_code == 200, r.text
                assert r.json()["search"] == path and r.json()["matching"] == common[category]
                assert r.json()["results"] and all(n["category"] == category for n in r.json()["results"])
            # k above the index size: clipped, and the answer says so
            r = client.post("/similar", json={"product_id": outside[0], "k": 60})
            assert r.status_code == 200, r.text
            assert len(r.json()["results"]) == 39 and "k=60 clipped to 39" in r.json()["note"]
    finally:
        srv.stop()
    assert "catalog index of" in srv.log() and "(the storage root's)" in srv.log()
