"""Paired bootstrap confidence intervals for metric differences between two models evaluated on the
same queries and test listings (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13
percentile intervals; the paired design follows Koehn, "Statistical Significance Tests for Machine
Translation Evaluation", EMNLP 2004).

Inputs are the per-item outcomes written by :func:`item_model.evaluation.score_embeddings`:
``retrieval`` arrays (one value per query: ``recall@1``, ``recall@10``, ``mAP``) and ``probe``
arrays (``y_true``, ``y_pred`` per test listing).
"""

from __future__ import annotations

import numpy as np

from item_model.metrics import macro_f1

RETRIEVAL_METRICS = ("recall@1", "recall@10", "mAP")
PROBE_METRICS = ("category_accuracy", "category_macro_f1")


def _weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(B, n) float64 resample counts: each row a multinomial draw of n items with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)


def resampled_metric(details: dict, metric: str, weights: np.ndarray) -> np.ndarray:
    """The metric under each resample. (B,) float64.

    Args:
        details: ``{"retrieval": {...}, "probe": {...}}`` of one model.
        weights: (B, n) resample counts over the metric's items (queries or test listings).

    Raises:
        KeyError: unknown metric or missing details.
    """
    n = weights.shape[1]
    if metric in RETRIEVAL_METRICS:
        return weights @ np.asarray(details["retrieval"][metric], dtype=np.float64) / n
    if metric == "category_accuracy":
        correct = (np.asarray(details["probe"]["y_true"]) == np.asarray(details["probe"]["y_pred"]))
        return weights @ correct.astype(np.float64) / n
    if metric == "category_macro_f1":
        return macro_f1(details["probe"]["y_true"], details["probe"]["y_pred"], weights)
    raise KeyError(f"no bootstrap for metric {metric!r}; known: {RETRIEVAL_METRICS + PROBE_METRICS}")


def n_items(details: dict, metric: str) -> int:
    """Number of resampled items of a metric: queries for search metrics, test listings for the probe."""
    return len(details["retrieval"]["mAP"]) if metric in RETRIEVAL_METRICS else len(details["probe"]["y_true"])


def bootstrap_ci(details: dict, metric: str, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of one model's metric. Returns (low, high)."""
    w = _weights(n_items(details, metric), n_resamples, seed)
    values = resampled_metric(details, metric, w)
    a = (1 - confidence) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def paired_bootstrap(challenger: dict, champion: dict, metric: str, n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired bootstrap of ``metric(challenger) - metric(champion)``: the same resample of items is
    applied to both models, so per-item correlation is kept.

    Returns:
        ``{"metric", "delta", "ci_low", "ci_high", "confidence", "n_items", "n_resamples",
        "significant_improvement": ci_low > 0, "significant_regression": ci_high < 0}``.

    Raises:
        ValueError: the two models were scored on different numbers of items (not the same split).
    """
    n = n_items(challenger, metric)
    if n != n_items(champion, metric):
        raise ValueError(f"{metric}: challenger has {n} items, champion {n_items(champion, metric)}; "
                         f"they must be evaluated on the same split and gallery")
    w = _weights(n, n_resamples, seed)
    full = np.ones((1, n))
    delta = float(resampled_metric(challenger, metric, full)[0] - resampled_metric(champion, metric, full)[0])
    diffs = resampled_metric(challenger, metric, w) - resampled_metric(champion, metric, w)
    a = (1 - confidence) / 2
    lo, hi = float(np.quantile(diffs, a)), float(np.quantile(diffs, 1 - a))
    return {"metric": metric, "delta": delta, "ci_low": lo, "ci_high": hi, "confidence": confidence,
            "n_items": n, "n_resamples": n_resamples,
            "significant_improvement": lo > 0, "significant_regression": hi < 0}


def save_details(path, details: dict[str, dict]) -> None:
    """Write ``{model: {"retrieval": {...}, "probe": {...}}}`` to one ``.npz`` (no pickling: labels
    are stored as unicode arrays). Keys are ``<model>/<part>/<name>``."""
    from item_model.io import atomic_path
    flat = {}
    for model, parts in details.items():
        for part, arrays in parts.items():
            for name, arr in arrays.items():
                a = np.asarray(arr)
                flat[f"{model}/{part}/{name}"] = a.astype(str) if a.dtype == object else a
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **flat)


def load_details(path) -> dict[str, dict]:
    """Inverse of :func:`save_details`."""
    out: dict[str, dict] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            model, part, name = key.split("/", 2)
            out.setdefault(model, {}).setdefault(part, {})[name] = z[key]
    return out
