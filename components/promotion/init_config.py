"""``item gate init``: a gate file made for one catalog. It starts from the shipped gate (relative
floors, so the numbers need no editing) and fits what depends on the catalog: the slice column
(the first candidate with enough items per slice to be judged) and, from a run, the number every
floor resolves to and whether that run would pass, written as comments beside the file's own
explanations of its margins.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pandas as pd
import yaml

from components.promotion.config import check_gate_config, floors, lookup_metric, resolve_bound
from components.promotion.slices import slice_labels

#: slice candidates in order of preference: (column, level of category_path or None)
SLICE_CANDIDATES = (("category", None), ("category_path", 2), ("category_path", 1), ("gender", None),
                    ("usage", None), ("season", None), ("colour", None), ("year", None))


def slice_counts(df: pd.DataFrame, column: str, level: int | None = None) -> dict[str, dict[str, int]]:
    """Items per slice for each sliced metric: ``{"category_accuracy": {slice: test-split listings},
    "recall@1": {slice: same-product group members (the queries)}}``. ``df`` needs ``split`` and
    ``group_id``; the probe's test items are approximated by the test split (it drops only classes
    with fewer than 5 training listings)."""
    labels = pd.Series(slice_labels(df, column, level))
    test = labels[df["split"].to_numpy() == "test"].value_counts()
    queries = labels[df["group_id"].notna().to_numpy()].value_counts()
    return {"category_accuracy": {str(k): int(v) for k, v in test.items()},
            "recall@1": {str(k): int(v) for k, v in queries.items()}}


def choose_slice_column(df: pd.DataFrame, min_queries: int, column: str | None = None,
                        level: int | None = None) -> tuple[str, int | None, dict]:
    """The slice column for a catalog: ``column`` (and ``level``) when given, else the first of
    :data:`SLICE_CANDIDATES` with at least two slices of ``min_queries`` test listings (category
    slices that can be judged), else ``category``.

    Returns:
        (column, level, ``{"judged": {metric: n slices judged}, "slices": n slices, "items": counts}``).

    Raises:
        KeyError: ``column`` is not a column of the catalog.
    """
    candidates = [(column, level)] if column else [c for c in SLICE_CANDIDATES if c[0] in df.columns]
    chosen = None
    for col, lev in candidates:
        counts = slice_counts(df, col, lev)
        judged = {m: sum(n >= min_queries for n in c.values()) for m, c in counts.items()}
        info = {"judged": judged, "slices": len(set(counts["category_accuracy"]) | set(counts["recall@1"])),
                "items": counts}
        if column or judged["category_accuracy"] >= 2:
            return col, lev, info
        chosen = chosen or (col, lev, info)
    return chosen


def _set_slice_column(template: str, column: str, level: int | None) -> str:
    """The template's ``slices:`` section with its ``column:`` (and ``level:``) lines set."""
    head, sep, tail = template.partition("\nslices:\n")
    if not sep:
        raise ValueError("the gate template has no top-level 'slices:' section")
    tail = re.sub(r"^(\s+)level: .*\n", "", tail, flags=re.M)
    new = rf"\g<1>column: {column}\n" + (rf"\g<1>level: {level}\n" if level else "")
    tail, n = re.subn(r"^(\s+)column: .*\n", new, tail, count=1, flags=re.M)
    if n != 1:
        raise ValueError("the gate template's 'slices:' section has no 'column:' line")
    return head + sep + tail


def run_comments(cfg: dict, eval_result: dict, blessing: dict | None, label: str) -> list[str]:
    """Comment lines: what each floor resolves to in a run and the served vector's value, the
    beats-baselines thresholds, and the verdict the file would give that run."""
    lines = [f"Measured in {label}:"]
    for c in floors(cfg):
        bound = "min" if "min" in c else "max"
        threshold, info = resolve_bound(c[bound], eval_result)
        value = lookup_metric(eval_result, c["metric"])
        shown = "missing" if threshold is None else f"{threshold:.4f}"
        got = "missing" if value is None else f"{float(value):.4f}"
        margin = "" if threshold is None or value is None else (
            f", margin {float(value) - threshold:+.4f}" if bound == "min" else f", margin {threshold - float(value):+.4f}")
        lines.append(f"  {c['metric']} {'>=' if bound == 'min' else '<='} {info['formula']} = {shown}; "
                     f"scored {got}{margin}")
    if blessing is not None:
        failed = [f"{r['criterion']} {r['metric']}" for r in blessing["criteria"] if not r["passed"]]
        lines.append("  verdict of this file on that run: " + ("BLESSED" if blessing["blessed"] else
                                                              "NOT BLESSED (" + "; ".join(failed) + ")"))
    return lines


def render_gate_file(template: str, df: pd.DataFrame, source: str, column: str | None = None,
                     level: int | None = None, eval_result: dict | None = None, blessing_of=None,
                     run_label: str = "") -> str:
    """The gate file for one catalog.

    Args:
        template: the shipped gate file's text (its comments are kept).
        df: the catalog (canonical columns with ``split`` and ``group_id``): the run's validated
            catalog, or the whole catalog read with a split assigned.
        source: the catalog's path, written in the header.
        column / level: the slice column to use; None: :func:`choose_slice_column`.
        eval_result: a run's eval.json; with it, the number each floor resolves to is written.
        blessing_of: ``callable(cfg) -> blessing`` applying the new file to that run (for the verdict line).

    Returns:
        the YAML text, checked by :func:`components.promotion.config.check_gate_config`.

    Raises:
        KeyError: ``column`` is not in the catalog. ValueError: the template lacks a slices section.
        GateConfigError: the result does not check (a broken template).
    """
    base = yaml.safe_load(template)
    min_queries = int(base.get("slices", {}).get("min_queries", 30))
    column, level, info = choose_slice_column(df, min_queries, column, level)
    text = _set_slice_column(template, column, level)
    cfg = yaml.safe_load(text)
    check_gate_config(cfg, source="generated gate file")
    name = column + (f" level {level}" if level else "")
    header = [f"Written by `item gate init` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC for the catalog {source}",
              f"({len(df)} listings, {int(df['group_id'].notna().sum())} in same-product groups, "
              f"{int((df['split'] == 'test').sum())} in the test split).",
              f"Slices by {name}: {info['slices']} slices; judged (>= {min_queries} items): "
              f"{info['judged']['category_accuracy']} for category accuracy, {info['judged']['recall@1']} for Recall@1."]
    if eval_result is not None:
        header += run_comments(cfg, eval_result, blessing_of(cfg) if blessing_of else None, run_label or "the run")
    return "".join(f"# {line}\n" for line in header) + "#\n" + text


def catalog_with_split(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the pipeline's hash split (:func:`components.catalog.assign_split`) when it has none."""
    if "split" in df.columns:
        return df
    from components.catalog import assign_split
    return df.assign(split=assign_split(df["product_id"].astype(str).to_numpy()))


__all__ = ["render_gate_file", "choose_slice_column", "slice_counts", "catalog_with_split", "SLICE_CANDIDATES"]
