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

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.catalog.checks import (DATA_DOCS_DIR, DATA_DOCS_SITE, DERIVED_IMAGE_COLUMNS,  # noqa: F401
                                       IMAGE_COLUMNS, MAX_EXAMPLES, MAX_LISTED, REQUIRED_COLUMNS, RESULT_FILE,
                                       STRING_ATTRIBUTES, SUITE_ATTRIBUTES, SUITE_ROWS, SUITE_TABLE,
                                       YEAR_ATTRIBUTE, ValidationConfig, _attribute_checks, _Check,
                                       _inspect_images, _row_checks, _table_checks, _working_frame)
from components.catalog.gx_suites import (_GX, _entry, _exception_message, _failed_rows, _id_examples,
                                          _quarantine_frame, _truncate_lists)
from item_model.io import write_json_atomic

logger = logging.getLogger(__name__)


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

    gxr = _GX(out_path)
    data_docs_index: Path | None = None
    try:
        work, bad_years = _working_frame(df)
        _table_phase(df, work, product_ids, gxr, result)
        reasons, row_failures = _row_phase(df, work, product_ids, gxr, config, result)
        n_quarantined, fraction = _quarantine_phase(reasons, row_failures, n_rows, config, result)
        warnings = _attribute_phase(work, bad_years, product_ids, gxr, config, result)

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


# --------------------------------------------------------------------------------------------------
# the phases of validate_catalog, in the order it runs them


_COMPLETE = {"result_format": "COMPLETE", "partial_unexpected_count": 20, "return_unexpected_index_query": False}


def _table_failure(check: _Check, r: dict, df: pd.DataFrame, product_ids: np.ndarray | None) -> dict:
    """The ``stop`` entry of a failed table-level check, worded for its kind of check."""
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
    return entry


def _table_phase(df: pd.DataFrame, work: pd.DataFrame, product_ids: np.ndarray | None, gxr: _GX,
                 result: dict) -> None:
    """Table-level suite: any failure stops the run (raises CatalogValidationError)."""
    summary = result["summary"]
    failed: list[dict] = summary["failed_expectations"]
    t0 = time.perf_counter()
    checks = _table_checks(df)
    table_res, by_check = gxr.run(SUITE_TABLE, checks, work, dict(_COMPLETE))
    _truncate_lists(table_res)
    result["suites"][SUITE_TABLE] = table_res
    for check in checks:
        r = by_check.get(check.name)
        if r is None or r.get("success"):
            continue
        failed.append(_table_failure(check, r, df, product_ids))
    summary["seconds"]["table_checks"] = round(time.perf_counter() - t0, 3)
    if failed:
        first = failed[0]
        text = "; ".join(f"{f['expectation']} ({'column ' + repr(f['column']) if f['column'] else 'table'}): "
                         f"{f['message']}" for f in failed)
        raise CatalogValidationError(
            f"catalog validation stopped by table-level expectation(s): {text}",
            first["expectation"], first["column"], first["examples"], result)


def _row_phase(df: pd.DataFrame, work: pd.DataFrame, product_ids: np.ndarray | None, gxr: _GX,
               config: ValidationConfig, result: dict) -> tuple[dict[int, list[str]], list[dict]]:
    """Row-level suite on the decoded images' columns: ``(row -> quarantine reasons, failure entries)``;
    raises CatalogValidationError when a check could not be evaluated."""
    summary = result["summary"]
    failed: list[dict] = summary["failed_expectations"]
    t0 = time.perf_counter()
    images = _inspect_images(df)
    summary["seconds"]["image_decode"] = round(time.perf_counter() - t0, 3)
    for col in DERIVED_IMAGE_COLUMNS:
        work[col] = images[col].array  # positional; keeps Int64 (no float upcast)
    t0 = time.perf_counter()
    checks = _row_checks(work, config)
    rows_res, by_check = gxr.run(SUITE_ROWS, checks, work, dict(_COMPLETE))
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
    return reasons, row_failures


def _quarantine_phase(reasons: dict[int, list[str]], row_failures: list[dict], n_rows: int,
                      config: ValidationConfig, result: dict) -> tuple[int, float]:
    """Count the quarantined rows: ``(n_quarantined, fraction)``; raises CatalogValidationError above
    ``config.max_quarantine_fraction``, naming the checks that failed most rows."""
    summary = result["summary"]
    failed: list[dict] = summary["failed_expectations"]
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
    return n_quarantined, fraction


def _attribute_phase(work: pd.DataFrame, bad_years: list[int], product_ids: np.ndarray | None, gxr: _GX,
                     config: ValidationConfig, result: dict) -> list[dict]:
    """Optional-attribute suite: warnings only (returned, and added to the failed expectations)."""
    summary = result["summary"]
    failed: list[dict] = summary["failed_expectations"]
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
    return warnings
