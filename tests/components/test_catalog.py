"""Catalog reader, split and sample on the real catalog and on real shards with faults injected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from item_model import image_utils
from components import catalog as cat
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
    import io as _io

    from PIL import Image
    df = cat.read_catalog(CATALOG)
    modes = [Image.open(_io.BytesIO(b)).mode for b in df["image_bytes"]]
    grey = [i for i, m in enumerate(modes) if m == "L"][:50]
    assert len(grey) == 50                                        # the catalog's greyscale photos, wherever they lie
    chosen = df["image_bytes"].iloc[list(range(200)) + grey]
    arrays = [image_utils.decode_image(b, (80, 64)) for b in chosen]
    assert all(a.shape == (80, 64, 3) and a.dtype == np.uint8 for a in arrays)
    for a in arrays[200:]:                                        # grey stays grey: R = G = B
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


# ------------------------------------------------------------------ faults in catalog input (issue 14)
def _ids_as_float(t: pa.Table) -> pa.Table:
    """One null in the integer id column: the writer stores the column as float64."""
    ids = t.column("id").to_pylist()
    ids[-1] = None
    return t.set_column(t.schema.get_field_index("id"), "id", pa.array([None if i is None else float(i) for i in ids]))


def test_integer_ids_stored_as_float_read_as_integers(tmp_path):
    clean = cat.read_catalog(write_slice(tmp_path / "clean", n_plain=60, n_groups=5))
    df = cat.read_catalog(write_slice(tmp_path / "float", n_plain=60, n_groups=5, mutate=_ids_as_float))
    assert not df["product_id"].dropna().str.contains(r"\.").any()
    assert df["product_id"].iloc[:-1].tolist() == clean["product_id"].iloc[:-1].tolist()
    assert df["group_id"].notna().sum() == clean["group_id"].notna().sum() - int(pd.notna(clean["group_id"].iloc[-1]))
    assert pd.isna(df["product_id"].iloc[-1])


def test_fractional_float_ids_stop_naming_the_column(tmp_path):
    def frac(t):
        return t.set_column(t.schema.get_field_index("id"), "id", pa.array([i + 0.5 for i in t.column("id").to_pylist()]))
    with pytest.raises(cat.CatalogError, match=r"column 'id' holds non-integer numbers in rows \[0"):
        cat.read_catalog(write_slice(tmp_path / "c", n_plain=20, n_groups=0, mutate=frac))


def test_zero_row_shard_is_skipped_with_a_warning(tmp_path, caplog):
    catalog = write_slice(tmp_path / "c", n_plain=40, n_groups=3)
    table = pq.read_table(next((catalog / "data").glob("*.parquet")))
    pq.write_table(table.slice(0, 0), catalog / "data" / "train-00009-empty.parquet")
    df = cat.read_catalog(catalog)
    assert len(df) == table.num_rows
    assert "train-00009-empty.parquet holds no rows" in caplog.text


@pytest.mark.parametrize("kind", ["int", "bytes"])
def test_non_string_titles_stop_naming_the_column(tmp_path, kind):
    def titles(t):
        n = t.num_rows
        col = pa.array(list(range(n))) if kind == "int" else pa.array([f"t{i}".encode() for i in range(n)])
        return t.set_column(t.schema.get_field_index("productDisplayName"), "productDisplayName", col)
    with pytest.raises(cat.CatalogError, match=r"column .productDisplayName.*(int\w*|bytes) values"):
        cat.read_catalog(write_slice(tmp_path / "c", n_plain=20, n_groups=0, mutate=titles))


def test_group_with_one_member_left_is_dropped_at_validation(tmp_path, caplog):
    from components.steps import training as steps
    catalog = write_slice(tmp_path / "c", n_plain=80, n_groups=6)
    groups = pd.read_csv(catalog / "same_product_groups.csv")
    lone_group = int(groups["group_id"].iloc[0])
    members = groups.loc[groups["group_id"] == lone_group, "id"].astype(str).tolist()
    keep = set(members[1:])                                  # every member but one leaves the shard

    def drop(t):
        ids = [str(i) for i in t.column("id").to_pylist()]
        return t.filter(pa.array([i not in keep for i in ids]))
    write_slice(catalog, n_plain=80, n_groups=6, mutate=drop)
    out = tmp_path / "out"
    summary = steps.validate_step(str(catalog), str(out / "cat"), str(out / "q.parquet"), str(out / "r.json"),
                                  str(out / "docs"))
    assert summary["dropped_lone_groups"] == [lone_group]
    valid = pd.read_parquet(out / "cat" / "catalog.parquet")
    assert (valid["group_id"].value_counts() >= 2).all() and lone_group not in set(valid["group_id"].dropna())
    assert f"group_id [{lone_group}]" in caplog.text


# ------------------------------------------------------------------ the one image decoder (issue 14)
def _png(im) -> bytes:
    import io as _io
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_sixteen_bit_png_keeps_its_range():
    from PIL import Image
    ramp = (np.linspace(0, 65535, 64, dtype=np.uint16)[None, :].repeat(8, 0))
    im = Image.fromarray(ramp)
    assert im.mode == "I;16"
    arr = image_utils.decode_image(_png(im))
    assert arr.shape == (8, 64, 3) and arr[..., 0].min() == 0 and arr[..., 0].max() == 255
    assert len(np.unique(arr[..., 0])) > 50                                   # not clipped to a few greys


def test_transparency_is_flattened_on_white():
    from PIL import Image
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[2:8, 2:8] = (200, 30, 30, 255)                                          # an opaque red product
    arr = image_utils.decode_image(_png(Image.fromarray(rgba, "RGBA")))
    assert (arr[0, 0] == 255).all() and tuple(arr[5, 5]) == (200, 30, 30)


def test_exif_orientation_is_honoured():
    import io as _io

    from PIL import Image
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 20))                                    # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6                                                              # "rotate 90 CW to view"
    buf = _io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    arr = image_utils.decode_image(buf.getvalue())
    assert arr.shape[:2] == (40, 20)                                              # upright: now tall
    assert arr[:10].mean() > 200 and arr[-10:].mean() < 50                        # the strip is on top


def test_decompression_bomb_is_refused_from_its_header(monkeypatch):
    from PIL import Image, ImageFile
    bomb = _png(Image.new("L", (4096, 4096), 0))
    assert len(bomb) < 100_000                                                    # tens of KB on the wire
    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or original(self))
    with pytest.raises(image_utils.ImageTooLarge, match="4096 x 4096"):
        image_utils.decode_image(bomb)
    assert loads == []                                                            # no pixel data was decoded
    monkeypatch.undo()
    assert image_utils.decode_image(bomb, (8, 8), max_pixels=None).shape == (8, 8, 3)   # an explicit opt-out


def _image_paths(paths):
    """Replace the image column by ``{"bytes": None, "path": p}`` structs."""
    def mutate(t: pa.Table) -> pa.Table:
        n = t.num_rows
        col = pa.array([{"bytes": None, "path": paths(i)} for i in range(n)],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        return t.set_column(t.schema.get_field_index("image"), "image", col)
    return mutate


def test_image_paths_outside_the_catalog_are_refused(tmp_path, monkeypatch):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"not for you")
    catalog = write_slice(tmp_path / "c", n_plain=10, n_groups=0,
                          mutate=_image_paths(lambda i: str(outside) if i == 3 else f"images/{i}.jpg"))
    with pytest.raises(cat.CatalogError, match=r"column 'image.path' names images outside the catalog.*rows \[3\]"):
        cat.read_catalog(catalog)
    monkeypatch.setenv(cat.FOREIGN_IMAGES_ENV, "1")                  # the explicit opt-in
    df = cat.read_catalog(catalog)
    assert df["image_uri"].iloc[3] == str(outside)


def test_relative_image_paths_resolve_inside_the_catalog(tmp_path):
    src = cat.read_catalog(write_slice(tmp_path / "src", n_plain=5, n_groups=0))
    catalog = write_slice(tmp_path / "c", n_plain=5, n_groups=0, mutate=_image_paths(lambda i: f"images/{i}.jpg"))
    (catalog / "images").mkdir()
    for i, blob in enumerate(src["image_bytes"]):
        (catalog / "images" / f"{i}.jpg").write_bytes(blob)
    df = cat.read_catalog(catalog)
    assert df["image_uri"].iloc[0] == str((catalog / "images" / "0.jpg").resolve())
    assert image_utils.load_image_bytes(df.iloc[2]) == src["image_bytes"].iloc[2]
    escape = write_slice(tmp_path / "e", n_plain=5, n_groups=0, mutate=_image_paths(lambda i: "../../x.jpg"))
    with pytest.raises(cat.CatalogError, match="outside the catalog"):
        cat.read_catalog(escape)
