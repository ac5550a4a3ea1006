"""The checks of catalog validation (:mod:`components.catalog.validation`): the column names and suite
names, the thresholds (:class:`ValidationConfig`), the image inspection that derives the columns GX can
check, the slim working frame handed to GX, and the Great Expectations expectations of each suite.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from item_model.image_utils import load_image_bytes
from item_model.io import PROGRESS_INTERVAL

REQUIRED_COLUMNS = ("product_id", "title", "category")
IMAGE_COLUMNS = ("image_bytes", "image_uri")  # at least one is required
STRING_ATTRIBUTES = ("gender", "colour", "season", "usage")
YEAR_ATTRIBUTE = "year"
DERIVED_IMAGE_COLUMNS = ("image_decodes", "image_width", "image_height", "image_error")

SUITE_TABLE = "catalog_table"
SUITE_ROWS = "catalog_rows"
SUITE_ATTRIBUTES = "catalog_attributes"
RESULT_FILE = "validation_result.json"
DATA_DOCS_DIR = "data_docs"
DATA_DOCS_SITE = "item_catalog"

MAX_EXAMPLES = 5
#: longest ``unexpected_list`` / ``unexpected_index_list`` kept per expectation in ``result``
MAX_LISTED = 1000

_CHECK = "item_check"  # key in each expectation's ``meta`` naming the check, to map results back
_BYTESIO_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


@dataclass
class ValidationConfig:
    """Thresholds of :func:`validate_catalog`.

    Attributes:
        max_quarantine_fraction: rows failing row-level checks are quarantined while they are at most
            this share of the catalog; above it the run stops.
        title_min_chars, title_max_chars: allowed title length (characters, whitespace stripped).
        image_min_side, image_max_side: allowed image width and height (pixels).
        year_min, year_max: allowed ``year`` (optional attribute; warning only).
    """

    max_quarantine_fraction: float = 0.01
    title_min_chars: int = 1
    title_max_chars: int = 200
    image_min_side: int = 16
    image_max_side: int = 4096
    year_min: int = 1900
    year_max: int = 2100

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise ValueError(f"max_quarantine_fraction must be in [0, 1], got {self.max_quarantine_fraction}")
        for lo, hi in (("title_min_chars", "title_max_chars"), ("image_min_side", "image_max_side"),
                       ("year_min", "year_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}={getattr(self, lo)} exceeds {hi}={getattr(self, hi)}")
        if self.title_min_chars < 0 or self.image_min_side < 0:
            raise ValueError("title_min_chars and image_min_side must be >= 0")


@dataclass
class _Check:
    """One expectation of ours: its suite, the GX expectation, the column and how to word a row failure."""

    name: str
    suite: str
    expectation: Any
    column: str | None
    reason: Callable[[int], str] | None = None  # row position -> quarantine reason


# --------------------------------------------------------------------------------------------------
# image inspection


def _inspect_image(product_id: Any, data: Any, uri: Any) -> tuple[bool, int | None, int | None, str | None]:
    from PIL import Image
    try:
        raw = load_image_bytes({"product_id": product_id, "image_bytes": data, "image_uri": uri})
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()  # structural check; the image must be reopened afterwards
        with Image.open(io.BytesIO(raw)) as im:
            width, height = im.size
            im.convert("RGB").close()  # full decode; the pixels are dropped at once
        return True, int(width), int(height), None
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
        message = _BYTESIO_REPR.sub("", str(exc)).strip() or type(exc).__name__
        return False, None, None, message


def _inspect_images(df: pd.DataFrame) -> pd.DataFrame:
    """Derived image columns of ``df`` (same index): ``image_decodes`` bool, ``image_width`` /
    ``image_height`` Int64 (null where not decodable), ``image_error`` object (str or None)."""
    n = len(df)
    ids = df["product_id"] if "product_id" in df.columns else pd.Series([None] * n)
    data = df["image_bytes"] if "image_bytes" in df.columns else pd.Series([None] * n)
    uris = df["image_uri"] if "image_uri" in df.columns else pd.Series([None] * n)
    decodes = np.zeros(n, dtype=bool)
    width = np.zeros(n, dtype=np.int64)
    height = np.zeros(n, dtype=np.int64)
    errors: list[str | None] = [None] * n
    with tqdm(total=n, desc="validate: decode images", unit="img", mininterval=PROGRESS_INTERVAL,
              leave=False) as bar:
        for i, (pid, raw, uri) in enumerate(zip(ids.to_numpy(), data.to_numpy(), uris.to_numpy())):
            ok, w, h, err = _inspect_image(pid, raw, uri)
            decodes[i] = ok
            if ok:
                width[i], height[i] = w, h
            errors[i] = err
            if i % 512 == 511:
                bar.update(512)
        bar.update(n - bar.n)
    return pd.DataFrame({
        "image_decodes": decodes,
        "image_width": pd.arrays.IntegerArray(width, ~decodes),  # Int64, null where not decodable
        "image_height": pd.arrays.IntegerArray(height, ~decodes),
        "image_error": pd.Series(errors, dtype=object).to_numpy(),
    }, index=df.index)


# --------------------------------------------------------------------------------------------------
# working frame and suites


def _clean_text(s: pd.Series) -> pd.Series:
    """Non-null values as whitespace-stripped str (object dtype); nulls stay None."""
    out = pd.Series(None, index=s.index, dtype=object)
    mask = s.notna().to_numpy()
    out[mask] = [str(v).strip() for v in s.to_numpy()[mask]]
    return out


def _working_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """Slim frame for GX (RangeIndex) and the positions of non-numeric, non-null ``year`` values."""
    w = pd.DataFrame(index=pd.RangeIndex(len(df)))
    if "product_id" in df.columns:
        w["product_id"] = df["product_id"].to_numpy()
    for col in ("title", "category", *STRING_ATTRIBUTES):
        if col in df.columns:
            w[col] = _clean_text(df[col]).to_numpy()
    if "image_bytes" in df.columns:  # the bytes stay out of GX; their length keeps the column visible
        w["image_bytes"] = pd.array([len(b) if isinstance(b, (bytes, bytearray)) else None
                                     for b in df["image_bytes"].to_numpy()], dtype="Int64")
    if "image_uri" in df.columns:
        w["image_uri"] = _clean_text(df["image_uri"]).to_numpy()
    bad_years: list[int] = []
    if YEAR_ATTRIBUTE in df.columns:
        raw = df[YEAR_ATTRIBUTE]
        year = pd.to_numeric(raw, errors="coerce")
        bad_years = np.flatnonzero(raw.notna().to_numpy() & year.isna().to_numpy()).tolist()
        w[YEAR_ATTRIBUTE] = year.astype("Float64").array  # nullable; positional
    return w, bad_years


def _table_checks(df: pd.DataFrame) -> list[_Check]:
    import great_expectations.expectations as gxe
    image_col = next((c for c in IMAGE_COLUMNS if c in df.columns), IMAGE_COLUMNS[0])
    checks = [
        _Check("columns", SUITE_TABLE, gxe.ExpectTableColumnsToMatchSet(
            column_set=[*REQUIRED_COLUMNS, image_col], exact_match=False,
            notes=f"Required columns: {', '.join(REQUIRED_COLUMNS)} and one of "
                  f"{' / '.join(IMAGE_COLUMNS)} (image_bytes are replaced by their length here)."),
            None),
        _Check("row_count", SUITE_TABLE, gxe.ExpectTableRowCountToBeBetween(min_value=1), None),
    ]
    if "product_id" in df.columns:
        checks += [
            _Check("product_id_not_null", SUITE_TABLE,
                   gxe.ExpectColumnValuesToNotBeNull(column="product_id"), "product_id"),
            _Check("product_id_unique", SUITE_TABLE,
                   gxe.ExpectColumnValuesToBeUnique(column="product_id"), "product_id"),
        ]
    return checks


def _row_checks(work: pd.DataFrame, cfg: ValidationConfig) -> list[_Check]:
    import great_expectations.expectations as gxe
    titles = work["title"].to_numpy()
    errors = work["image_error"].to_numpy()
    widths, heights = work["image_width"], work["image_height"]

    def title_length_reason(i: int) -> str:
        t = titles[i]
        if not t:
            return "title: empty or missing"
        if len(t) < cfg.title_min_chars:
            return f"title: shorter than {cfg.title_min_chars} chars"
        return f"title: longer than {cfg.title_max_chars} chars ({len(t)})"

    def side_reason(name: str, values: pd.Series) -> Callable[[int], str]:
        return lambda i: (f"image: {name} {values.iloc[i]} px outside "
                          f"[{cfg.image_min_side}, {cfg.image_max_side}]")

    return [
        _Check("title_not_null", SUITE_ROWS, gxe.ExpectColumnValuesToNotBeNull(column="title"),
               "title", lambda i: "title: empty or missing"),
        _Check("title_length", SUITE_ROWS, gxe.ExpectColumnValueLengthsToBeBetween(
            column="title", min_value=cfg.title_min_chars, max_value=cfg.title_max_chars,
            notes="Length after stripping whitespace."), "title", title_length_reason),
        _Check("category_not_null", SUITE_ROWS, gxe.ExpectColumnValuesToNotBeNull(column="category"),
               "category", lambda i: "category: empty or missing"),
        _Check("category_non_empty", SUITE_ROWS, gxe.ExpectColumnValueLengthsToBeBetween(
            column="category", min_value=1, notes="Length after stripping whitespace."),
            "category", lambda i: "category: empty or missing"),
        _Check("image_decodes", SUITE_ROWS, gxe.ExpectColumnValuesToBeInSet(
            column="image_decodes", value_set=[True],
            notes="Derived: image_bytes (or the file at image_uri) opens, verifies and converts to RGB "
                  "with PIL."), "image_decodes",
            lambda i: f"image: not decodable ({errors[i]})"),
        _Check("image_width", SUITE_ROWS, gxe.ExpectColumnValuesToBeBetween(
            column="image_width", min_value=cfg.image_min_side, max_value=cfg.image_max_side),
            "image_width", side_reason("width", widths)),
        _Check("image_height", SUITE_ROWS, gxe.ExpectColumnValuesToBeBetween(
            column="image_height", min_value=cfg.image_min_side, max_value=cfg.image_max_side),
            "image_height", side_reason("height", heights)),
    ]


def _attribute_checks(work: pd.DataFrame, cfg: ValidationConfig) -> list[_Check]:
    import great_expectations.expectations as gxe
    checks = [
        _Check(f"{col}_non_empty", SUITE_ATTRIBUTES, gxe.ExpectColumnValueLengthsToBeBetween(
            column=col, min_value=1, notes="Optional attribute: non-null values must be non-empty."),
            col)
        for col in STRING_ATTRIBUTES if col in work.columns
    ]
    if YEAR_ATTRIBUTE in work.columns:
        checks.append(_Check("year_range", SUITE_ATTRIBUTES, gxe.ExpectColumnValuesToBeBetween(
            column=YEAR_ATTRIBUTE, min_value=cfg.year_min, max_value=cfg.year_max,
            notes="Optional attribute: non-null years must lie in the range."), YEAR_ATTRIBUTE))
    return checks
