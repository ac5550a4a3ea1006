"""Catalog reader, split and sample on the real catalog and on real shards with faults injected."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from item_model import image_utils
from item_model.data import catalog as cat
from tests.conftest import CATALOG, write_slice


def test_iter_catalog_streams_shard_by_shard_in_canonical_schema():
    frames = cat.iter_catalog(CATALOG)
    first = next(frames)                                  # one shard, not the whole catalog
    assert 5_000 < len(first) < 20_000
    assert list(first.columns) == cat.CANONICAL_COLUMNS
    row = first.iloc[0]
    assert isinstance(row["product_id"], str) and isinstance(row["image_bytes"], bytes)
    assert row["image_bytes"][:2] == b"\xff\xd8"          # still encoded JPEG
    assert row["category_path"].endswith(row["category"])
    assert row["category_path"].count(" > ") == 2


def test_read_catalog_counts_and_groups():
    df = cat.read_catalog(CATALOG)
    assert len(df) == 44_441 and df["product_id"].is_unique
    assert df["group_id"].notna().sum() == 1_100
    assert df["title"].isna().sum() == 7
    assert df["category"].nunique() == 142


def test_split_is_deterministic_independent_of_other_rows_and_near_fractions():
    ids = [str(i) for i in range(20_000)]
    split = cat.assign_split(ids)
    again = cat.assign_split(ids[::-1])[::-1]
    assert (split == again).all()
    assert (cat.assign_split(ids[:100]) == split[:100]).all()
    share = {s: float(np.mean(split == s)) for s in cat.SPLITS}
    assert abs(share["train"] - 0.8) < 0.02 and abs(share["test"] - 0.1) < 0.01
    with pytest.raises(ValueError, match="sum to 1"):
        cat.assign_split(ids, cat.SplitSpec(0.5, 0.2, 0.2))


def test_sample_keeps_groups_whole_and_is_deterministic(slice_catalog):
    df = cat.read_catalog(slice_catalog)
    a = cat.sample_catalog(df, 200)
    b = cat.sample_catalog(df.sample(frac=1.0, random_state=1).reset_index(drop=True), 200)
    assert len(a) == 200 and set(a["product_id"]) == set(b["product_id"])
    sizes = df["group_id"].value_counts()
    kept = a["group_id"].value_counts()
    assert len(kept) > 0 and (kept == sizes[kept.index]).all()


def test_fingerprint_changes_with_content_not_order(slice_catalog):
    df = cat.read_catalog(slice_catalog)
    fp = cat.fingerprint(df)
    assert fp == cat.fingerprint(df.iloc[::-1].reset_index(drop=True))
    changed = df.copy()
    changed.loc[0, "title"] = changed.loc[0, "title"] + " v2"
    assert cat.fingerprint(changed) != fp


def test_missing_folder(tmp_path):
    with pytest.raises(cat.CatalogError, match="does not exist"):
        cat.read_catalog(tmp_path / "nope")


def test_unreadable_shard_is_named(tmp_path):
    write_slice(tmp_path, n_plain=20, n_groups=2)
    bad = tmp_path / "data" / "train-00001-of-00001.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(cat.CatalogError, match="train-00001-of-00001.parquet.*unreadable"):
        cat.read_catalog(tmp_path)


def test_missing_required_column_is_named(tmp_path):
    write_slice(tmp_path, n_plain=20, n_groups=2, mutate=lambda t: t.drop(["productDisplayName"]))
    with pytest.raises(cat.CatalogError, match="productDisplayName"):
        cat.read_catalog(tmp_path)


def test_catalog_without_optional_attributes_reads(tmp_path):
    write_slice(tmp_path, n_plain=20, n_groups=2,
                mutate=lambda t: t.drop(["gender", "baseColour", "season", "year", "usage"]))
    df = cat.read_catalog(tmp_path)
    assert df["gender"].isna().all() and df["year"].isna().all() and len(df) > 20


def test_bad_group_file_is_named(tmp_path):
    write_slice(tmp_path, n_plain=20, n_groups=2)
    (tmp_path / "same_product_groups.csv").write_text("id,group_id\n1,a\n")
    with pytest.raises(cat.CatalogError, match="group_id"):
        cat.read_catalog(tmp_path)


def test_decode_image_resizes_and_converts_greyscale():
    df = cat.read_catalog(CATALOG).iloc[:2000]
    arrays = [image_utils.decode_image(b, (80, 64)) for b in df["image_bytes"]]
    assert all(a.shape == (80, 64, 3) and a.dtype == np.uint8 for a in arrays)
