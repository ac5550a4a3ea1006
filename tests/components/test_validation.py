"""Tests of components.catalog.validation on a real slice of the fashion catalog (GX 1.x, no mocks)."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.catalog import OPTIONAL_ATTRIBUTES, read_catalog
from components.catalog.validation import (
    CatalogValidationError,
    ValidationConfig,
    ValidationOutcome,
    validate_catalog,
)

from tests.conftest import CATALOG

QUARANTINE_COLUMNS = ["product_id", "title", "reason", "row"]


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    return read_catalog(CATALOG)


@pytest.fixture(scope="module")
def real_slice(catalog) -> pd.DataFrame:
    """First 1000 listings plus every listing with a missing title (7 of 1007 rows: < 1 %)."""
    missing = np.flatnonzero(catalog["title"].isna().to_numpy())
    rows = np.union1d(np.arange(1000), missing)
    return catalog.iloc[rows].reset_index(drop=True)


@pytest.fixture()
def clean(catalog) -> pd.DataFrame:
    """400 listings that pass every check (a fresh copy per test)."""
    df = catalog.iloc[:400].reset_index(drop=True).copy()
    assert df["title"].notna().all()
    return df


def _jpeg(size: tuple[int, int], color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def test_real_slice_quarantines_missing_titles_and_writes_artifacts(real_slice, tmp_path):
    before = real_slice.copy()
    missing_ids = set(real_slice.loc[real_slice["title"].isna(), "product_id"])
    assert len(missing_ids) == 7

    out = validate_catalog(real_slice, out_dir=tmp_path)

    assert isinstance(out, ValidationOutcome)
    pd.testing.assert_frame_equal(real_slice, before)  # the caller's frame is untouched
    q = out.quarantine
    assert list(q.columns) == QUARANTINE_COLUMNS
    assert set(q["product_id"]) == missing_ids
    assert all("title" in r and "empty or missing" in r for r in q["reason"])
    assert q["row"].dtype == np.int64
    assert (real_slice["product_id"].to_numpy()[q["row"].to_numpy()] == q["product_id"].to_numpy()).all()

    v = out.validated
    assert list(v.columns) == list(real_slice.columns)
    assert isinstance(v.index, pd.RangeIndex)
    assert len(v) + len(q) == len(real_slice)
    assert set(v["product_id"]) | set(q["product_id"]) == set(real_slice["product_id"])
    assert v["title"].notna().all()
    assert "image_decodes" not in v.columns
    assert v["image_bytes"].map(lambda b: isinstance(b, bytes)).all()

    s = out.result["summary"]
    assert s["success"] is True
    assert (s["n_rows"], s["n_valid"], s["n_quarantined"]) == (len(real_slice), len(real_slice) - 7, 7)
    assert s["quarantine_fraction"] == pytest.approx(7 / len(real_slice))
    assert s["max_quarantine_fraction"] == 0.01
    assert [f["expectation"] for f in s["failed_expectations"]] == ["expect_column_values_to_not_be_null"]
    assert s["failed_expectations"][0]["column"] == "title"
    assert set(out.result["suites"]) == {"catalog_table", "catalog_rows", "catalog_attributes"}
    json.dumps(out.result, allow_nan=False)  # plain JSON

    assert out.data_docs_index == tmp_path / "data_docs" / "index.html"
    html = out.data_docs_index.read_text(encoding="utf-8")
    assert "<html" in html.lower() and "catalog_rows" in html
    written = json.loads((tmp_path / "validation_result.json").read_text(encoding="utf-8"))
    assert written["summary"]["n_quarantined"] == 7
    assert written["suites"]["catalog_rows"]["success"] is False

    # a second run into the same folder replaces the docs and the result
    out2 = validate_catalog(real_slice.iloc[:50], out_dir=tmp_path)
    assert out2.data_docs_index.exists()
    assert json.loads((tmp_path / "validation_result.json").read_text())["summary"]["n_rows"] == 50
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_duplicated_product_id_stops(clean, tmp_path):
    dup_id = clean["product_id"].iloc[17]
    df = pd.concat([clean, clean.iloc[[17]]], ignore_index=True)

    with pytest.raises(CatalogValidationError) as info:
        validate_catalog(df, out_dir=tmp_path)

    err = info.value
    assert "expect_column_values_to_be_unique" in str(err)
    assert dup_id in str(err)
    assert err.expectation == "expect_column_values_to_be_unique"
    assert err.column == "product_id"
    assert err.examples == [dup_id]
    written = json.loads((tmp_path / "validation_result.json").read_text())
    assert written["summary"]["success"] is False
    assert "catalog_rows" not in written["suites"]  # stopped before row-level checks
    restored = pickle.loads(pickle.dumps(err))
    assert (restored.expectation, restored.column, restored.examples) == (err.expectation, err.column, err.examples)


def test_null_product_id_stops(clean):
    clean.loc[3, "product_id"] = None
    with pytest.raises(CatalogValidationError, match="expect_column_values_to_not_be_null") as info:
        validate_catalog(clean)
    assert info.value.column == "product_id"
    assert info.value.examples == ["row 3"]


def test_broken_images_above_threshold_stop(clean):
    broken = clean.index[::40][:10]  # 10 of 400 rows = 2.5 % > 1 %
    broken_ids = set(clean.loc[broken, "product_id"])
    clean.loc[broken, "image_bytes"] = pd.Series([b"this is not an image"] * len(broken), index=broken)

    with pytest.raises(CatalogValidationError) as info:
        validate_catalog(clean)

    err = info.value
    assert err.expectation == "expect_column_values_to_be_in_set"
    assert err.column == "image_decodes"
    assert "image_decodes" in str(err) and "max_quarantine_fraction" in str(err)
    assert 1 <= len(err.examples) <= 5 and set(err.examples) <= broken_ids
    assert err.examples[0] in str(err)
    assert err.result["summary"]["success"] is False


def test_broken_images_below_threshold_are_quarantined(clean):
    garbage, truncated = 5, 250  # 2 of 400 rows = 0.5 % <= 1 %
    clean.at[garbage, "image_bytes"] = b"\x00\x01garbage"
    clean.at[truncated, "image_bytes"] = clean.at[truncated, "image_bytes"][:300]
    ids = {clean.at[garbage, "product_id"], clean.at[truncated, "product_id"]}

    out = validate_catalog(clean)

    assert set(out.quarantine["product_id"]) == ids
    assert all(r.startswith("image: not decodable (") for r in out.quarantine["reason"])
    reason = out.quarantine.set_index("row").at[garbage, "reason"]
    assert "cannot identify image file" in reason and "BytesIO" not in reason
    assert len(out.validated) == 398 and not ids & set(out.validated["product_id"])
    assert out.result["summary"]["failed_expectations"][0]["column"] == "image_decodes"


def test_image_size_and_uri_rows(clean, tmp_path):
    tiny = tmp_path / "tiny.jpg"
    tiny.write_bytes(_jpeg((8, 40)))
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg((60, 80)))
    clean["image_uri"] = None
    for row, uri in ((1, good), (2, tiny), (3, tmp_path / "missing.jpg")):
        clean.at[row, "image_bytes"] = None
        clean.at[row, "image_uri"] = str(uri)

    out = validate_catalog(clean)

    reasons = out.quarantine.set_index("row")["reason"].to_dict()
    assert set(reasons) == {2, 3}  # the good file validates through image_uri
    assert reasons[2] == "image: width 8 px outside [16, 4096]"
    assert reasons[3].startswith("image: not decodable (") and "missing.jpg" in reasons[3]


def test_missing_required_column_stops(clean):
    with pytest.raises(CatalogValidationError) as info:
        validate_catalog(clean.drop(columns=["category"]))
    err = info.value
    assert err.column == "category"
    assert err.expectation == "expect_table_columns_to_match_set"
    assert "'category'" in str(err)

    with pytest.raises(CatalogValidationError, match="image_bytes or image_uri"):
        validate_catalog(clean.drop(columns=["image_bytes", "image_uri"]))


def test_empty_catalog_stops(clean):
    with pytest.raises(CatalogValidationError, match="empty") as info:
        validate_catalog(clean.iloc[:0])
    assert info.value.expectation == "expect_table_row_count_to_be_between"


def test_catalog_without_optional_attributes_validates(clean):
    df = clean.drop(columns=OPTIONAL_ATTRIBUTES + ["group_id", "category_path"])
    out = validate_catalog(df)
    assert len(out.quarantine) == 0 and len(out.validated) == len(df)
    assert list(out.validated.columns) == list(df.columns)
    summary = out.result["summary"]
    assert summary["success"] is True and summary["attributes_checked"] == []
    assert "catalog_attributes" not in out.result["suites"]


def test_unusual_attribute_values_warn_but_do_not_quarantine(clean):
    clean.loc[:9, "gender"] = "Other"  # a value this catalog never uses: fine
    clean["year"] = clean["year"].astype(object)
    clean.loc[20, "year"] = 1850  # out of range: warning
    clean.loc[21, "year"] = "sometime"  # not a number: warning
    clean.loc[30, "colour"] = "  "  # empty: warning
    clean.loc[31, "season"] = None  # null: not checked

    out = validate_catalog(clean)

    assert len(out.quarantine) == 0 and len(out.validated) == len(clean)
    warnings = {w["check"]: w for w in out.result["summary"]["warnings"]}
    assert set(warnings) == {"year_range", "year_numeric", "colour_non_empty"}
    assert warnings["year_range"]["examples"] == [clean.at[20, "product_id"]]
    assert warnings["year_numeric"]["examples"] == [clean.at[21, "product_id"]]
    assert warnings["colour_non_empty"]["examples"] == [clean.at[30, "product_id"]]
    assert all(w["severity"] == "warning" for w in warnings.values())
    assert out.result["summary"]["success"] is True
    assert out.result["suites"]["catalog_attributes"]["success"] is False


def test_thresholds_come_from_config(clean):
    longest = int(clean["title"].str.strip().str.len().max())
    clean.at[7, "title"] = "x" * (longest + 5)
    out = validate_catalog(clean, ValidationConfig(title_max_chars=longest))
    assert out.quarantine["reason"].tolist() == [f"title: longer than {longest} chars ({longest + 5})"]
    with pytest.raises(ValueError):
        ValidationConfig(max_quarantine_fraction=1.5)
