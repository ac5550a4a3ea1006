"""One vocabulary for the catalog index's kinds (joint / text / image), and indexes written before it
(kinds "item" / "item_text_only" / "item_image_only") still read, as the kinds they stand for."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest


def _rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"product_id": [str(1000 + i) for i in range(n)], "title": [f"listing {i}" for i in range(n)],
                         "category": ["Tshirts"] * n, "split": ["test"] * n, "year": [2012] * n, "group_id": [None] * n})


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_an_index_written_with_the_legacy_kind_names_reads_as_joint_text_image(tmp_path):
    from components.index.layout import load_catalog_index, save_catalog_index

    vecs = {"joint": _vectors(6, 8, 0), "text": _vectors(6, 8, 1), "image": _vectors(6, 8, 2)}
    folder = save_catalog_index(tmp_path / "new", _rows(6), vecs, "fp")
    _, emb, meta = load_catalog_index(folder)
    assert sorted(emb) == sorted(meta["kinds"]) == ["image", "joint", "text"]

    # the same index as an older version wrote it: the evaluation's model names as keys
    old = tmp_path / "old"
    old.mkdir()
    (old / "listings.parquet").write_bytes((folder / "listings.parquet").read_bytes())
    np.savez(old / "embeddings.npz", item=vecs["joint"], item_text_only=vecs["text"], item_image_only=vecs["image"])
    (old / "index.json").write_text(json.dumps({"n": 6, "dim": 8, "kinds": ["item", "item_image_only", "item_text_only"],
                                                "catalog_fingerprint": "fp"}))
    _, emb_old, meta_old = load_catalog_index(old)
    assert sorted(emb_old) == meta_old["kinds"] == ["image", "joint", "text"]
    for kind in vecs:
        np.testing.assert_array_equal(emb_old[kind], vecs[kind])       # each matrix under the kind it stood for


def test_the_index_is_written_only_under_the_one_vocabulary(tmp_path):
    from components.index.layout import save_catalog_index
    from components.storage.layout import index_kind

    with pytest.raises(ValueError, match="must include 'joint'"):
        save_catalog_index(tmp_path / "a", _rows(3), {"item": _vectors(3, 4, 0)}, "fp")
    with pytest.raises(ValueError, match="only"):
        save_catalog_index(tmp_path / "b", _rows(3), {"joint": _vectors(3, 4, 0), "title": _vectors(3, 4, 1)}, "fp")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()       # refused before writing
    assert [index_kind(k) for k in ("item", "item_text_only", "item_image_only", "text")] == \
        ["joint", "text", "image", "text"]
    with pytest.raises(ValueError, match="'photo' is not one of"):
        index_kind("photo")


def test_a_shard_written_with_the_legacy_column_names_is_read_as_the_new_kinds(tmp_path):
    from components.index.build import _vectors_table, read_shard

    rows = _rows(5)[["product_id", "title"]].assign(content_hash="h", model_version="v1")
    joint, image = _vectors(5, 4, 0), _vectors(5, 4, 1)
    pq.write_table(_vectors_table(rows, {"item": joint, "item_image_only": image}), tmp_path / "shard.parquet")
    back, vectors = read_shard(str(tmp_path / "shard.parquet"))
    assert sorted(vectors) == ["image", "joint"] and "item" not in back.columns
    np.testing.assert_array_equal(vectors["joint"], joint)
    np.testing.assert_array_equal(vectors["image"], image)
