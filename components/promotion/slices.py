"""Sliced gate criteria: the challenger against the champion inside each slice of the catalog (a
leaf category, a gender, a level of the category path), so that a model that loses one category
badly while gaining elsewhere is stopped although its average passes.

Each slice's difference (challenger - champion) is tested with the paired bootstrap of
:mod:`components.promotion.bootstrap` over that slice's items only: same-product queries for the
search metrics, probe test listings for category accuracy. A slice blocks when it has at least
``min_queries`` items, its point estimate drops by more than ``tolerance`` and its whole interval
lies below zero (TFMA's sliced ``GenericChangeThreshold`` is the reference; the interval guards
against the noise of small slices). Slices below ``min_queries`` are counted and named as not
judged, never silently passed.

Many slices are tested at once, so the default confidence is 0.99, not 0.95: with ~40 judged
slices per metric and no real change, a 95 % one-sided test would block about one run in two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.promotion.config import SLICE_ALIASES, SLICE_METRICS
from components.promotion.bootstrap import RETRIEVAL_METRICS, paired_bootstrap

DEFAULTS = {"metrics": ["recall@1", "category_accuracy"], "min_queries": 30, "tolerance": 0.02,
            "confidence": 0.99, "bootstrap_resamples": 1000}


def slice_labels(catalog: pd.DataFrame, column: str, level: int | None = None) -> np.ndarray:
    """Each catalog row's slice: the column's value as a string, ``level`` (1-based) of
    ``category_path`` (levels joined by ``" > "``), ``"(missing)"`` for null. (n,) object.

    ``column`` may also be a source column of the fashion layout (:data:`SLICE_ALIASES`:
    ``masterCategory`` = level 1 of ``category_path``, ``subCategory`` = level 2, ``articleType`` =
    ``category``, ``baseColour`` = ``colour``).

    Raises:
        KeyError: the catalog has no such column (the message names the column and the catalog's columns).
    """
    if column in SLICE_ALIASES and level is None:
        column, level = SLICE_ALIASES[column]
    if column not in catalog.columns:
        raise KeyError(f"slice column {column!r} is not in the validated catalog (columns: "
                       f"{[c for c in catalog.columns if c not in ('image_bytes',)]})")
    values = catalog[column]
    if level is not None:
        values = values.map(lambda p: p.split(" > ")[level - 1] if isinstance(p, str)
                            and len(p.split(" > ")) >= level else None)
    return values.map(lambda v: "(missing)" if v is None or (isinstance(v, float) and np.isnan(v))
                      else str(v)).to_numpy(dtype=object)


def _subset(details: dict, metric: str, mask: np.ndarray) -> dict:
    if metric in RETRIEVAL_METRICS:
        return {"retrieval": {m: np.asarray(details["retrieval"][m])[mask] for m in RETRIEVAL_METRICS}}
    return {"probe": {k: np.asarray(details["probe"][k])[mask] for k in ("y_true", "y_pred")}}


def item_slices(details: dict, metric: str, labels: np.ndarray) -> np.ndarray:
    """The slice of each item of ``metric``: its query's row (search) or test listing's row (probe), looked up
    in ``labels`` ((n_catalog,) object, :func:`slice_labels`). Returns (n_items,) object."""
    rows = details["retrieval"]["query_index"] if metric in RETRIEVAL_METRICS else details["probe"]["test_index"]
    return labels[np.asarray(rows, dtype=np.int64)]


def compare_slices(challenger: dict, champion: dict, labels: np.ndarray, metric: str, min_queries: int,
                   tolerance: float, confidence: float, n_resamples: int) -> list[dict]:
    """Challenger vs champion in every slice of one metric, worst judged slice first.

    Args:
        challenger / champion: per-item details of one model each (eval_details.npz), scored on the
            same queries and test listings.
        labels: (n_catalog,) object, each catalog row's slice (:func:`slice_labels`).
        metric: one of :data:`components.promotion.config.SLICE_METRICS`.

    Returns:
        one dict per slice: ``slice``, ``metric``, ``n`` (items), ``challenger``, ``champion``,
        ``delta`` (challenger - champion, absolute), ``ci_low``/``ci_high`` (paired bootstrap at
        ``confidence``; None when not judged), ``judged`` (n >= min_queries), ``regressed`` (judged,
        delta < -tolerance and ci_high < 0). Judged slices come first, by delta ascending.

    Raises:
        ValueError: the two models' items differ (not the same split).
    """
    per_item = item_slices(challenger, metric, labels)
    if len(per_item) != len(item_slices(champion, metric, labels)):
        raise ValueError(f"{metric}: challenger and champion were scored on different items")
    out = []
    for value in pd.unique(per_item):
        mask = per_item == value
        a, b = _subset(challenger, metric, mask), _subset(champion, metric, mask)
        n = int(mask.sum())
        champ, judged = _value(b, metric), n >= min_queries
        if judged:
            bs = paired_bootstrap(a, b, metric, n_resamples, confidence)
            delta, lo, hi = bs["delta"], bs["ci_low"], bs["ci_high"]
        else:
            delta, lo, hi = _value(a, metric) - champ, None, None
        out.append({"slice": str(value), "metric": metric, "n": n, "challenger": champ + delta, "champion": champ,
                    "delta": delta, "ci_low": lo, "ci_high": hi, "judged": judged,
                    "regressed": bool(judged and delta < -tolerance and hi < 0)})
    out.sort(key=lambda r: (not r["judged"], r["delta"], -r["n"]))
    return out


def _value(details: dict, metric: str) -> float:
    if metric in RETRIEVAL_METRICS:
        return float(np.mean(details["retrieval"][metric]))
    return float(np.mean(details["probe"]["y_true"] == details["probe"]["y_pred"]))


def metrics_worst_first(slices: dict) -> list[tuple[str, list[dict]]]:
    """``(metric, slice comparisons)`` of a blessing's ``slices``, metrics with a regressed slice first."""
    return sorted(slices["by_metric"].items(), key=lambda kv: not any(r["regressed"] for r in kv[1]))


def _row(metric: str, value, threshold, passed: bool, reason: str, message: str, **extra) -> dict:
    return {"criterion": "slice-regression", "metric": metric, "value": value, "threshold": threshold,
            "comparison": "slice delta >=", "passed": bool(passed), "reason": reason, "message": message, **extra}


def slice_rows(eval_result: dict, cfg: dict, details: dict | None, catalog: pd.DataFrame | None
               ) -> tuple[list[dict], dict]:
    """The gate's ``slices`` section: one ``slice-regression`` row per metric, and every slice's comparison.

    Args:
        eval_result: eval.json's content (tells whether a champion was re-scored).
        cfg: ``{"column", ["level"], ["metrics"], ["min_queries"], ["tolerance"], ["confidence"],
            ["bootstrap_resamples"], ["reason"]}`` (:data:`DEFAULTS` for the absent ones).
        details: eval_details (``item`` and ``champion`` per-item outcomes).
        catalog: the validated catalog, rows in eval order.

    Returns:
        (rows, ``{"column", "level", "min_queries", "tolerance", "confidence", "by_metric": {metric:
        [slice dicts, worst first]}}``). A row fails when a judged slice regressed, and also when the
        details, the catalog or its column are missing (never a silent pass); it passes with a note
        when there is no champion yet or when no slice has ``min_queries`` items.
    """
    c = {**DEFAULTS, **cfg}
    column, level = c["column"], c.get("level")
    name = f"{column}{f' level {level}' if level else ''}"
    summary = {"column": column, "level": level, "min_queries": int(c["min_queries"]), "tolerance": float(c["tolerance"]),
               "confidence": float(c["confidence"]), "by_metric": {}}
    metrics = [m for m in c["metrics"] if m in SLICE_METRICS]
    reason = c.get("reason") or (f"per-{name} challenger - champion, paired bootstrap at {c['confidence']:g}; "
                                 f"blocks when a slice of >= {c['min_queries']} items drops by more than "
                                 f"{c['tolerance']:g} with its interval below 0")
    if "champion" not in eval_result.get("models", {}):
        return [_row(f"item.{m}@{name}", None, None, True, reason, "no champion yet: no slice to regress against, passes")
                for m in metrics], summary
    if details is None or "item" not in details or "champion" not in details:
        return [_row(f"item.{m}@{name}", None, None, False, reason,
                     "per-item details (eval_details.npz) are missing: cannot compare slices") for m in metrics], summary
    if catalog is None:
        return [_row(f"item.{m}@{name}", None, None, False, reason,
                     "the validated catalog is missing: cannot tell the slices") for m in metrics], summary
    try:
        labels = slice_labels(catalog, column, level)
    except KeyError as exc:
        return [_row(f"item.{m}@{name}", None, None, False, reason, str(exc.args[0])) for m in metrics], summary
    rows = []
    for m in metrics:
        comp = compare_slices(details["item"], details["champion"], labels, m, int(c["min_queries"]),
                              float(c["tolerance"]), float(c["confidence"]), int(c["bootstrap_resamples"]))
        summary["by_metric"][m] = comp
        judged = [r for r in comp if r["judged"]]
        skipped = len(comp) - len(judged)
        note = f"; {skipped} slice(s) with < {c['min_queries']} items not judged" if skipped else ""
        if not judged:
            rows.append(_row(f"item.{m}@{name}", None, -float(c["tolerance"]), True, reason,
                             f"no slice has >= {c['min_queries']} items: not judged{note}"))
            continue
        worst = judged[0]
        bad = [r for r in judged if r["regressed"]]
        if bad:
            named = "; ".join(f"{name}={r['slice']} {r['delta']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
                              f"(n={r['n']})" for r in bad[:5])
            message = f"{len(bad)} of {len(judged)} slices regressed significantly: {named}{note}"
        else:
            message = (f"pass: {len(judged)} slices judged, worst {name}={worst['slice']} {worst['delta']:+.4f} "
                       f"[{worst['ci_low']:+.4f}, {worst['ci_high']:+.4f}] (n={worst['n']}){note}")
        rows.append(_row(f"item.{m}@{name}", worst["delta"], -float(c["tolerance"]), not bad, reason, message,
                         regressed_slices=[r["slice"] for r in bad]))
    return rows, summary
