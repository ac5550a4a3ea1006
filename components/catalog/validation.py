"""Catalog data validation with Great Expectations 1.x: stop, quarantine or warn.

:func:`validate_catalog` checks a canonical catalog DataFrame (see :mod:`components.catalog`) in
three Great Expectations suites, run on an ephemeral GX context against a pandas dataframe asset
(``batch_parameters={"dataframe": ...}``):

``catalog_table`` (stop)
    required columns present (``product_id``, ``title``, ``category`` and ``image_bytes`` or
    ``image_uri``), a non-empty table, ``product_id`` not null and unique. Any failure raises
    :class:`CatalogValidationError`; nothing is quarantined.
``catalog_rows`` (quarantine)
    title not null and ``title_min_chars`` to ``title_max_chars`` long (after stripping
    whitespace), category not null/non-empty, image decodable to RGB, image width and height within
    ``image_min_side`` to ``image_max_side``. Failing rows are moved to a quarantine table with a
    reason; when more than ``max_quarantine_fraction`` of the rows fail, the run stops instead.
``catalog_attributes`` (warn)
    optional attributes (``gender``, ``colour``, ``season``, ``usage``: non-empty; ``year``: a
    number in ``year_min`` to ``year_max``), only for the columns the catalog has and only on
    non-null values. Failures are recorded as warnings in the result; they never quarantine or stop.

GX cannot look inside images, so the image checks run on columns derived first from the encoded
bytes (``image_decodes``, ``image_width``, ``image_height``, ``image_error``). The frame handed to
GX is a slim working copy: the image bytes are replaced by their length, and titles, categories
and string attributes are whitespace-stripped strings. The caller's frame is never modified.
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before great_expectations is imported

import io
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from item_model.image_utils import load_image_bytes
from item_model.io import PROGRESS_INTERVAL, write_json_atomic

logger = logging.getLogger(__name__)

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


class CatalogValidationError(ValueError):
    """Validation stopped the run.

    The message names the failed expectation(s), the column, and up to 5 example rows
    (``product_id`` values, or ``"row N"`` where the id itself is null).

    Attributes:
        expectation: GX expectation type of the (main) failure, e.g. ``"expect_column_values_to_be_unique"``.
        column: the column it checks, or ``None`` for table-level expectations without one.
        examples: up to 5 example ``product_id`` values (str) of failing rows.
        result: the JSON-serialisable result dict of the run (see :class:`ValidationOutcome`), if any.
    """

    def __init__(self, message: str, expectation: str = "", column: str | None = None,
                 examples: list[str] | tuple[str, ...] = (), result: dict | None = None) -> None:
        super().__init__(message)
        self.expectation = expectation
        self.column = column
        self.examples = [str(e) for e in examples][:MAX_EXAMPLES]
        self.result = result

    def __reduce__(self):  # keep the attributes through pickling (multiprocessing, KFP executors)
        return (self.__class__, (str(self), self.expectation, self.column, self.examples, self.result))


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
class ValidationOutcome:
    """What :func:`validate_catalog` returns.

    Attributes:
        validated: the canonical rows that passed every row-level check: same columns and dtypes as
            the input, a fresh RangeIndex.
        quarantine: one row per failing listing: ``product_id``, ``title``, ``reason`` (str, ``"; "``-joined,
            e.g. ``"title: empty or missing; image: not decodable (cannot identify image file)"``),
            ``row`` (int64, position in the input frame). No image bytes.
        result: JSON-serialisable: ``{"suites": {suite_name: GX result .to_json_dict()}, "summary": {...}}``
            with summary keys ``n_rows, n_valid, n_quarantined, quarantine_fraction,
            max_quarantine_fraction, success, failed_expectations, warnings, ...``.
        data_docs_index: the GX Data Docs ``index.html`` under ``out_dir/data_docs``, or ``None``.
    """

    validated: pd.DataFrame
    quarantine: pd.DataFrame
    result: dict
    data_docs_index: Path | None = None


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


class _GX:
    """One ephemeral GX context with a pandas dataframe asset; runs one suite per call."""

    def __init__(self, out_dir: Path | None) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        for site in list(self.context.list_data_docs_sites()):  # the default temp-dir site
            self.context.delete_data_docs_site(site)
        datasource = self.context.data_sources.add_pandas("catalog")
        asset = datasource.add_dataframe_asset("listings")
        self.batch = asset.add_batch_definition_whole_dataframe("whole_catalog")
        self.docs_dir: Path | None = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.docs_dir = Path(tempfile.mkdtemp(prefix=f".{DATA_DOCS_DIR}.", dir=out_dir))
            self.docs_dir.chmod(0o755)  # mkdtemp makes it private; the docs are meant to be read
            self.context.add_data_docs_site(DATA_DOCS_SITE, {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(self.docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })

    def run(self, suite_name: str, checks: list[_Check], frame: pd.DataFrame,
            result_format: dict) -> tuple[dict, dict[str, dict]]:
        """Run ``checks`` as suite ``suite_name`` on ``frame``: (result.to_json_dict(), check name -> its result)."""
        suite = self.context.suites.add(self.gx.ExpectationSuite(name=suite_name))
        for check in checks:
            check.expectation.meta = {**(check.expectation.meta or {}), _CHECK: check.name}
            suite.add_expectation(check.expectation)
        definition = self.context.validation_definitions.add(
            self.gx.ValidationDefinition(name=f"{suite_name}_validation", data=self.batch, suite=suite))
        res = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
        as_dict = _plain_json(res.to_json_dict())
        by_check = {}
        for r in as_dict.get("results", []):
            name = ((r.get("expectation_config") or {}).get("meta") or {}).get(_CHECK)
            if name:
                by_check[name] = r
        return as_dict, by_check

    def build_docs(self, out_dir: Path) -> Path | None:
        """Build Data Docs into a temporary folder and swap it in as ``out_dir/data_docs``."""
        if self.docs_dir is None:
            return None
        self.context.build_data_docs(site_names=[DATA_DOCS_SITE])
        final = out_dir / DATA_DOCS_DIR
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{DATA_DOCS_DIR}.old.", dir=out_dir))
            os.replace(final, old / DATA_DOCS_DIR)
        os.replace(self.docs_dir, final)
        self.docs_dir = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        index = final / "index.html"
        return index if index.exists() else None

    def discard(self) -> None:
        if self.docs_dir is not None:
            shutil.rmtree(self.docs_dir, ignore_errors=True)
            self.docs_dir = None


# --------------------------------------------------------------------------------------------------
# result helpers


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _plain_json(obj: Any) -> Any:
    """Round-trip through JSON so the result holds only plain JSON types (NaN becomes null)."""
    text = json.dumps(obj, default=_json_default)
    return json.loads(text, parse_constant=lambda _: None)


def _truncate_lists(suite_result: dict) -> None:
    for r in suite_result.get("results", []):
        res = r.get("result") or {}
        for key in ("unexpected_list", "unexpected_index_list"):
            values = res.get(key)
            if isinstance(values, list) and len(values) > MAX_LISTED:
                res[key] = values[:MAX_LISTED]
                res[f"{key}_truncated_from"] = len(values)


def _exception_message(r: dict) -> str | None:
    info = r.get("exception_info") or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _failed_rows(r: dict) -> list[int]:
    return [int(i) for i in (r.get("result") or {}).get("unexpected_index_list") or []]


def _id_examples(product_ids: np.ndarray, rows: list[int]) -> list[str]:
    out: list[str] = []
    for i in rows:
        pid = product_ids[i] if product_ids is not None else None
        label = f"row {i}" if pid is None or (np.ndim(pid) == 0 and pd.isna(pid)) else str(pid)
        if label not in out:
            out.append(label)
        if len(out) == MAX_EXAMPLES:
            break
    return out


def _entry(check: _Check, severity: str, count: int | None, examples: list[str],
           message: str) -> dict:
    return {"suite": check.suite, "check": check.name,
            "expectation": check.expectation.expectation_type, "column": check.column,
            "severity": severity, "unexpected_count": count, "examples": examples, "message": message}


def _quarantine_frame(df: pd.DataFrame, reasons: dict[int, list[str]]) -> pd.DataFrame:
    rows = sorted(reasons)
    return pd.DataFrame({
        "product_id": (df["product_id"].iloc[rows].to_numpy() if "product_id" in df.columns
                       else np.full(len(rows), None, dtype=object)),
        "title": (df["title"].iloc[rows].to_numpy() if "title" in df.columns
                  else np.full(len(rows), None, dtype=object)),
        "reason": pd.Series(["; ".join(dict.fromkeys(reasons[r])) for r in rows], dtype=object).to_numpy(),
        "row": np.asarray(rows, dtype=np.int64),
    })


# --------------------------------------------------------------------------------------------------
# public entry point


def validate_catalog(df: pd.DataFrame, config: ValidationConfig = ValidationConfig(),
                     out_dir: str | Path | None = None) -> ValidationOutcome:
    """Validate a canonical catalog with Great Expectations; quarantine bad rows or stop the run.

    Args:
        df: canonical catalog (see :mod:`components.catalog`): ``product_id`` (str), ``title`` (str),
            ``category`` (str), ``image_bytes`` (bytes) and/or ``image_uri`` (str), optional
            ``gender``/``colour``/``season``/``usage`` (str) and ``year`` (Int64); other columns pass
            through. Any index; it is not modified.
        config: thresholds, see :class:`ValidationConfig`.
        out_dir: if given, ``out_dir/validation_result.json`` (atomic write) and the GX Data Docs
            site ``out_dir/data_docs/index.html`` are written, also when the run stops.

    Returns:
        :class:`ValidationOutcome`: ``validated`` (input columns, RangeIndex, rows that passed),
        ``quarantine`` (``product_id, title, reason, row``), ``result`` (JSON-serialisable GX results
        per suite and a summary) and ``data_docs_index``.

    Raises:
        TypeError: ``df`` is not a pandas DataFrame.
        CatalogValidationError: a table-level expectation failed (missing required column, empty
            table, null or duplicated ``product_id``), a row-level expectation could not be evaluated,
            or more than ``config.max_quarantine_fraction`` of the rows fail row-level checks. The
            error names the expectation, the column and up to 5 example ``product_id`` values.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"validate_catalog expects a pandas DataFrame, got {type(df).__name__}")
    t_start = time.perf_counter()
    out_path = Path(out_dir) if out_dir is not None else None
    n_rows = len(df)
    product_ids = df["product_id"].to_numpy() if "product_id" in df.columns else None
    summary: dict[str, Any] = {
        "n_rows": n_rows, "n_valid": 0, "n_quarantined": 0, "quarantine_fraction": 0.0,
        "max_quarantine_fraction": config.max_quarantine_fraction, "success": False,
        "failed_expectations": [], "warnings": [], "config": dict(vars(config)),
        "attributes_checked": [], "seconds": {},
    }
    result: dict[str, Any] = {"suites": {}, "summary": summary}
    failed: list[dict] = summary["failed_expectations"]

    gxr = _GX(out_path)
    data_docs_index: Path | None = None
    try:
        # ---- table-level: any failure stops the run -------------------------------------------
        work, bad_years = _working_frame(df)
        t0 = time.perf_counter()
        checks = _table_checks(df)
        table_res, by_check = gxr.run(SUITE_TABLE, checks, work, {
            "result_format": "COMPLETE", "partial_unexpected_count": 20,
            "return_unexpected_index_query": False})
        _truncate_lists(table_res)
        result["suites"][SUITE_TABLE] = table_res
        for check in checks:
            r = by_check.get(check.name)
            if r is None or r.get("success"):
                continue
            exc = _exception_message(r)
            res = r.get("result") or {}
            examples: list[str] = []
            column = check.column
            if exc:
                message = f"could not be evaluated: {exc}"
            elif check.name == "columns":
                missing = ((res.get("details") or {}).get("mismatched") or {}).get("missing") or []
                column = ", ".join(str(m) for m in missing) or None
                if IMAGE_COLUMNS[0] in missing:
                    missing = [*[m for m in missing if m != IMAGE_COLUMNS[0]], " or ".join(IMAGE_COLUMNS)]
                message = (f"required column(s) {missing} missing; found {list(df.columns)}")
            elif check.name == "row_count":
                message = f"the catalog is empty ({res.get('observed_value')} rows)"
            elif check.name == "product_id_not_null":
                rows = _failed_rows(r)
                examples = [f"row {i}" for i in rows[:MAX_EXAMPLES]]
                message = f"{res.get('unexpected_count')} row(s) have a null product_id, e.g. {examples}"
            else:  # product_id_unique
                rows = _failed_rows(r)
                examples = _id_examples(product_ids, rows)
                message = (f"{res.get('unexpected_count')} row(s) share a product_id; "
                           f"duplicated ids e.g. {examples} (rows {rows[:MAX_EXAMPLES]})")
            entry = _entry(check, "stop", res.get("unexpected_count"), examples, message)
            entry["column"] = column
            failed.append(entry)
        summary["seconds"]["table_checks"] = round(time.perf_counter() - t0, 3)
        if failed:
            first = failed[0]
            text = "; ".join(f"{f['expectation']} ({'column ' + repr(f['column']) if f['column'] else 'table'}): "
                             f"{f['message']}" for f in failed)
            raise CatalogValidationError(
                f"catalog validation stopped by table-level expectation(s): {text}",
                first["expectation"], first["column"], first["examples"], result)

        # ---- row-level: quarantine, or stop above max_quarantine_fraction -----------------------
        t0 = time.perf_counter()
        images = _inspect_images(df)
        summary["seconds"]["image_decode"] = round(time.perf_counter() - t0, 3)
        for col in DERIVED_IMAGE_COLUMNS:
            work[col] = images[col].array  # positional; keeps Int64 (no float upcast)
        t0 = time.perf_counter()
        checks = _row_checks(work, config)
        rows_res, by_check = gxr.run(SUITE_ROWS, checks, work, {
            "result_format": "COMPLETE", "partial_unexpected_count": 20,
            "return_unexpected_index_query": False})
        reasons: dict[int, list[str]] = {}
        row_failures: list[dict] = []
        for check in checks:
            r = by_check.get(check.name)
            if r is None:
                raise CatalogValidationError(
                    f"catalog validation stopped: GX returned no result for {check.name!r} "
                    f"({check.expectation.expectation_type} on column {check.column!r})",
                    check.expectation.expectation_type, check.column, [], result)
            if r.get("success"):
                continue
            exc = _exception_message(r)
            if exc:
                failed.append(_entry(check, "stop", None, [], f"could not be evaluated: {exc}"))
                continue
            rows = _failed_rows(r)
            for i in rows:
                reasons.setdefault(i, []).append(check.reason(i))
            examples = _id_examples(product_ids, rows)
            entry = _entry(check, "quarantine", len(rows), examples,
                           f"{len(rows)} row(s) fail, e.g. product_id {examples}")
            row_failures.append(entry)
            failed.append(entry)
        _truncate_lists(rows_res)
        result["suites"][SUITE_ROWS] = rows_res
        summary["seconds"]["row_checks"] = round(time.perf_counter() - t0, 3)
        errored = [f for f in failed if f["severity"] == "stop"]
        if errored:
            first = errored[0]
            raise CatalogValidationError(
                "catalog validation stopped: row-level expectation(s) could not be evaluated: "
                + "; ".join(f"{f['expectation']} on column {f['column']!r}: {f['message']}" for f in errored),
                first["expectation"], first["column"], [], result)

        n_quarantined = len(reasons)
        fraction = n_quarantined / n_rows if n_rows else 0.0
        summary.update(n_quarantined=n_quarantined, n_valid=n_rows - n_quarantined,
                       quarantine_fraction=fraction)
        if fraction > config.max_quarantine_fraction:
            worst = sorted(row_failures, key=lambda f: -f["unexpected_count"])
            top_count = worst[0]["unexpected_count"]
            top = [f for f in worst if f["unexpected_count"] == top_count]
            for f in failed:
                f["severity"] = "stop"

            def describe(f: dict) -> str:
                return (f"{f['expectation']} on column {f['column']!r} ({f['unexpected_count']} row(s), "
                        f"e.g. product_id {f['examples']})")
            others = [f for f in worst if f not in top]
            raise CatalogValidationError(
                f"catalog validation stopped: {n_quarantined} of {n_rows} rows ({fraction:.2%}) fail "
                f"row-level expectations, above max_quarantine_fraction={config.max_quarantine_fraction:.2%}; "
                f"most failures: {'; '.join(describe(f) for f in top)}"
                + (f"; also: {'; '.join(describe(f) for f in others)}" if others else ""),
                top[0]["expectation"], top[0]["column"], top[0]["examples"], result)

        # ---- optional attributes: warnings only -------------------------------------------------
        t0 = time.perf_counter()
        checks = _attribute_checks(work, config)
        summary["attributes_checked"] = [c.column for c in checks]
        warnings: list[dict] = summary["warnings"]
        if checks:
            attr_res, by_check = gxr.run(SUITE_ATTRIBUTES, checks, work, {
                "result_format": "SUMMARY", "partial_unexpected_count": 20,
                "return_unexpected_index_query": False})
            result["suites"][SUITE_ATTRIBUTES] = attr_res
            for check in checks:
                r = by_check.get(check.name)
                if r is None or r.get("success"):
                    continue
                res = r.get("result") or {}
                exc = _exception_message(r)
                rows = [int(i) for i in res.get("partial_unexpected_index_list") or []]
                examples = _id_examples(product_ids, rows)
                message = (f"could not be evaluated: {exc}" if exc else
                           f"{res.get('unexpected_count')} non-null value(s) fail, e.g. product_id "
                           f"{examples}, values {res.get('partial_unexpected_list', [])[:MAX_EXAMPLES]}")
                warnings.append(_entry(check, "warning", res.get("unexpected_count"), examples, message))
        if bad_years:
            examples = _id_examples(product_ids, bad_years)
            warnings.append({"suite": None, "check": "year_numeric", "expectation": None,
                             "column": YEAR_ATTRIBUTE, "severity": "warning",
                             "unexpected_count": len(bad_years), "examples": examples,
                             "message": f"{len(bad_years)} non-null year value(s) are not numbers, "
                                        f"e.g. product_id {examples}"})
        failed.extend(warnings)
        summary["seconds"]["attribute_checks"] = round(time.perf_counter() - t0, 3)
        for w in warnings:
            logger.warning("catalog attribute warning: %s on column %r: %s",
                           w["expectation"], w["column"], w["message"])

        # ---- outcome ----------------------------------------------------------------------------
        bad = np.zeros(n_rows, dtype=bool)
        bad[list(reasons)] = True
        validated = df.iloc[np.flatnonzero(~bad)].reset_index(drop=True)
        quarantine = _quarantine_frame(df, reasons)
        summary["success"] = True
        summary["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
        if n_quarantined:
            logger.warning("quarantined %d of %d listings (%.3f%%): %s", n_quarantined, n_rows,
                           100 * fraction, "; ".join(f"{f['column']}: {f['unexpected_count']}"
                                                      for f in row_failures))
        logger.info("catalog validated: %d rows, %d valid, %d quarantined, %d warning(s) in %.1f s",
                    n_rows, n_rows - n_quarantined, n_quarantined, len(warnings),
                    summary["seconds"]["total"])
        if out_path is not None:
            t0 = time.perf_counter()
            data_docs_index = gxr.build_docs(out_path)
            summary["seconds"]["data_docs"] = round(time.perf_counter() - t0, 3)
            summary["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
            summary["data_docs_index"] = str(data_docs_index) if data_docs_index else None
            write_json_atomic(out_path / RESULT_FILE, result)
        return ValidationOutcome(validated=validated, quarantine=quarantine, result=result,
                                 data_docs_index=data_docs_index)
    except CatalogValidationError as err:
        summary["success"] = False
        summary["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
        summary["error"] = str(err)
        logger.error("%s", err)
        if out_path is not None:
            try:
                index = gxr.build_docs(out_path)
                summary["data_docs_index"] = str(index) if index else None
            except Exception:  # the docs are a convenience; the validation error is what matters
                logger.exception("could not build Data Docs for the failed validation")
            write_json_atomic(out_path / RESULT_FILE, result)
        raise
    finally:
        gxr.discard()
