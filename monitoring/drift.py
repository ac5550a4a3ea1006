"""Embedding drift of ITEm product embeddings: Evidently 0.7 ``EmbeddingsDrift`` with calibrated
thresholds, per modality (joint, text-only, image-only).

* Reference: the champion's catalog index, stored with the model at package time
  (``<BentoML model>/catalog_index``, :mod:`components.index.layout`): the embeddings of the catalog it was
  trained and validated on, joint and, when the model was evaluated with the modality ablation,
  text-only and image-only.
* Current: a new catalog batch (a folder in the catalog layout), embedded by the same model in each
  modality, or a window of the serving traffic log (``<storage root>/traffic/*.parquet``, one served
  embedding per row, each under its own modality).
* Score: Evidently's ``MMDDriftMethod`` by default (:class:`DriftConfig`): the unbiased squared
  maximum mean discrepancy, MMD^2_u, with a Gaussian (RBF) kernel whose bandwidth is the median
  pairwise distance between the two samples (Gretton et al., "A Kernel Two-Sample Test", JMLR 13,
  2012, eq. 3 and sec. 8), on the full L2-normalised D-dimensional embeddings.
* Threshold: calibrated, never Evidently's default: the conformal 99 % quantile of the score over
  K = 100 random reference-vs-reference splits of the same sizes as the test (:mod:`monitoring.calibration`),
  stored per model and reused.
* Sizes: the current window is tested at a size n from :attr:`DriftConfig.window_grid` (the largest
  grid size <= the rows available, <= ``max_window`` and <= half the reference pool), a seeded random
  subsample when more rows are available, so that calibrations are reused across windows; the
  reference side is a seeded random subsample of m = min(n_pool - n, ``max_reference``) rows.
* Verdict: a modality drifts when its score exceeds its threshold; the window drifts when any tested
  modality drifts (at most 3 x 0.99 % false alarms by the union bound).

This module is the scoring; :mod:`monitoring.inputs` reads the reference and the current window, and
:mod:`monitoring.steps` holds the step functions the monitoring pipeline's KFP components call.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Iterator

import numpy as np
import pandas as pd

from components.storage.embeddings import MODALITIES, check_embeddings, sample_rows

from .calibration import CalibrationStore, calibrate, pool_fingerprint

logger = logging.getLogger(__name__)

METHODS = ("mmd", "model", "distance", "ratio")


class DriftInputError(ValueError):
    """The drift monitor cannot run on this input: empty window, wrong embedding dimension, model
    version mismatch between reference and current, missing reference, unreadable traffic log.
    The message names the field (``embedding``, ``model_tag``, ``timestamp``...) and the file."""


@dataclass(frozen=True)
class DriftConfig:
    """How drift is scored, calibrated and sized. Every field is part of the calibration's identity.

    Attributes:
        method: Evidently embedding-drift method: ``"mmd"`` (MMD^2_u, RBF kernel, default),
            ``"model"`` (ROC AUC of a domain classifier), ``"distance"`` (euclidean distance of the
            means) or ``"ratio"`` (share of drifted components, Wasserstein per component).
        pca_components: 0 = score the full embeddings; k > 0 = Evidently's PCA to k components
            fitted on the reference side first.
        n_splits: K, reference-vs-reference splits per calibration.
        quantile: q, conformal quantile of the K null scores used as the threshold.
        max_reference: cap on m, the reference rows of each test (and of each calibration split).
        max_window: cap on n, the current rows of each test (one MMD call costs 0.13 s at
            n = m = 1,000 but 1.7 s at n = 2,000, m = 1,000 on a 2-core CPU; x K splits x 3 modalities).
        min_window: fewest current rows a modality needs to be tested.
        window_grid: the sizes n a window is tested (and calibrated) at.
        plot_sample: rows per side in the Evidently report's t-SNE picture (drawing only: the score
            uses every row).
        seed: seeds the subsamples (``seed`` current, ``seed + 1`` reference) and the calibration splits.
    """

    method: str = "mmd"
    pca_components: int = 0
    n_splits: int = 100
    quantile: float = 0.99
    max_reference: int = 1000
    max_window: int = 1000
    min_window: int = 50
    window_grid: tuple[int, ...] = (50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000)
    plot_sample: int = 300
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"drift_config field 'method' must be one of {METHODS}, got {self.method!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"drift_config field 'quantile' must be in (0, 1), got {self.quantile}")
        if self.n_splits < 1 or self.min_window < 2 or self.max_reference < 2:
            raise ValueError("drift_config fields 'n_splits' >= 1, 'min_window' >= 2, 'max_reference' >= 2")

    def settings_key(self) -> str:
        """The settings that change a score's null distribution, as a short string (calibration key)."""
        return f"{self.method}-pca{self.pca_components}-K{self.n_splits}-q{self.quantile:g}-seed{self.seed}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window_grid"] = list(self.window_grid)
        return d

    @classmethod
    def from_dict(cls, values: dict | None) -> "DriftConfig":
        """Build from a dict (e.g. a KFP parameter, where every number arrives as a float).

        Raises:
            ValueError: an unknown field, or a value out of range.
        """
        values = dict(values or {})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"drift_config has unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        out = {}
        for key, value in values.items():
            default = getattr(cls(), key)
            if key == "window_grid":
                value = tuple(sorted(int(v) for v in value))
            elif isinstance(default, int) and not isinstance(default, bool):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            out[key] = value
        return cls(**out)


# --------------------------------------------------------------------------------------------------
# scoring (Evidently's own drift-method objects, so calibration and report compute the same number)

def evidently_method(config: DriftConfig, threshold: float = math.inf):
    """The Evidently ``DriftMethod`` of ``config`` with a given threshold and no bootstrap.

    The same object is what :class:`evidently.metrics.EmbeddingsDrift` calls inside a ``Report``;
    calling it directly, as :func:`drift_score` does, returns the same score.
    """
    from evidently.metrics.embeddings import (DistanceDriftMethod, MMDDriftMethod, ModelDriftMethod,
                                              RatioDriftMethod)
    pca = config.pca_components or None
    thr = float(threshold) if math.isfinite(threshold) else 1e30  # "never": finite, fits float32
    if config.method == "mmd":
        return MMDDriftMethod(threshold=thr, bootstrap=False, pca_components=pca)
    if config.method == "model":
        return ModelDriftMethod(threshold=thr, bootstrap=False, pca_components=pca)
    if config.method == "distance":
        return DistanceDriftMethod(dist="euclidean", threshold=thr, bootstrap=False, pca_components=pca)
    return RatioDriftMethod(threshold=thr, pca_components=pca)


def embedding_columns(name: str, dim: int) -> list[str]:
    """Column names of a (n, dim) embedding in an Evidently dataset: ``<name>_0`` ... ``<name>_<dim-1>``."""
    return [f"{name}_{i}" for i in range(dim)]


def _frame(x: np.ndarray, name: str) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(x, dtype=np.float32), columns=embedding_columns(name, x.shape[1]))


def drift_score(reference: np.ndarray, current: np.ndarray, config: DriftConfig = DriftConfig()) -> float:
    """The drift score of ``current`` against ``reference`` by Evidently's method of ``config``.

    Args:
        reference: (m, D) float32. current: (n, D) float32.

    Returns:
        the score (MMD^2_u for ``"mmd"``, clipped at 0 by Evidently; ROC AUC for ``"model"``;
        larger = more drift). Deterministic for given inputs.
    """
    score, _, _ = evidently_method(config)(_frame(current, "e"), _frame(reference, "e"))
    return float(score)


def window_size(n_current: int, n_pool: int, config: DriftConfig = DriftConfig(), what: str = "window") -> int:
    """The size n a window of ``n_current`` rows is tested at: the largest grid size that is
    <= ``n_current``, <= ``config.max_window`` and <= ``n_pool // 2`` (so a calibration split keeps
    at least as many reference rows as current rows).

    Raises:
        DriftInputError: the window is empty or holds fewer than ``min_window`` rows, or the
            reference pool is smaller than 2 x ``min_window``.
    """
    if n_current == 0:
        raise DriftInputError(f"empty window: {what} holds no rows")
    if n_current < config.min_window:
        raise DriftInputError(f"{what} holds {n_current} rows; at least {config.min_window} are needed "
                              f"to test drift (drift_config.min_window)")
    if n_pool // 2 < config.min_window:
        raise DriftInputError(f"the reference holds {n_pool} rows; at least {2 * config.min_window} are needed")
    cap = min(n_current, config.max_window, n_pool // 2)
    sizes = [g for g in config.window_grid if config.min_window <= g <= cap]
    return max(sizes) if sizes else cap


def reference_size(n_pool: int, window: int, config: DriftConfig = DriftConfig()) -> int:
    """m = min(n_pool - window, ``config.max_reference``): reference rows of a test or calibration split."""
    return int(min(n_pool - window, config.max_reference))


@contextlib.contextmanager
def _plot_sample(n: int) -> Iterator[None]:
    """Evidently draws its embedding t-SNE picture from up to ``SAMPLE_CONSTANT`` (2,500) rows per
    side, which costs minutes on a small CPU; the picture only, not the score, uses this sample.
    BLAS/OpenMP run single-threaded meanwhile: on a busy shared CPU, t-SNE's spinning OpenMP
    threads made it 5x slower than one thread (measured on this project's 2-core machine)."""
    from evidently.legacy.metrics.data_drift import embeddings_drift as ed
    from threadpoolctl import threadpool_limits

    old = ed.SAMPLE_CONSTANT
    ed.SAMPLE_CONSTANT = int(n)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        ed.SAMPLE_CONSTANT = old


def evidently_snapshot(reference: np.ndarray, current: np.ndarray, modality: str, config: DriftConfig,
                       threshold: float):
    """Run an Evidently ``Report([EmbeddingsDrift(modality, drift_method=...)])`` on one modality.

    Returns:
        (the Evidently ``Snapshot``, the score it computed: the same number as :func:`drift_score`).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift

    cols = embedding_columns(modality, reference.shape[1])
    definition = DataDefinition(embeddings={modality: cols})
    report = Report([EmbeddingsDrift(embeddings_name=modality, drift_method=evidently_method(config, threshold))])
    with _plot_sample(config.plot_sample):
        snapshot = report.run(Dataset.from_pandas(_frame(current, modality), data_definition=definition),
                              Dataset.from_pandas(_frame(reference, modality), data_definition=definition))
    (result,) = snapshot.metric_results.values()
    return snapshot, float(result.value)


# --------------------------------------------------------------------------------------------------
# the test itself

def modality_drift(pool: np.ndarray, current: np.ndarray, modality: str, config: DriftConfig = DriftConfig(),
                  store: CalibrationStore | None = None, model_tag: str | None = None,
                  with_report: bool = True, progress: bool = True) -> tuple[dict, object | None]:
    """Test one modality: size, subsample, calibrate (or reuse), score with Evidently, decide.

    Args:
        pool: (n_P, D) float32 reference embeddings of this modality.
        current: (n_c, D) float32 current embeddings of this modality.
        store, model_tag: where calibrations are kept and reused; None computes one every call.
        with_report: score through an Evidently ``Report`` (for the HTML) rather than the bare method.

    Returns:
        (``{"status": "tested", "score", "threshold", "drift", "n_current", "n_current_available",
        "n_reference", "n_reference_available", "calibration": {...}}``, the Evidently snapshot or None).

    Raises:
        DriftInputError: see :func:`window_size`.
    """
    n = window_size(len(current), len(pool), config, what=f"the current window's {modality!r} embeddings")
    m = reference_size(len(pool), n, config)
    cur = current[sample_rows(len(current), n, config.seed)]
    ref = pool[sample_rows(len(pool), m, config.seed + 1)]

    def compute() -> dict:
        out = calibrate(pool, n, m, lambda r, c: drift_score(r, c, config), config.n_splits, config.quantile,
                        config.seed, progress=progress, label=modality)
        out.update(method=config.method, pca_components=config.pca_components, modality=modality)
        return out

    if store is not None and model_tag:
        key = store.entry_key(modality, n, m, config.settings_key())
        calib, reused = store.get_or_calibrate(model_tag, key, pool_fingerprint(pool), compute)
    else:
        key, calib, reused = None, compute(), False
    threshold = float(calib["threshold"])
    snapshot = None
    if with_report:
        snapshot, score = evidently_snapshot(ref, cur, modality, config, threshold)
    else:
        score = drift_score(ref, cur, config)
    result = {"status": "tested", "score": score, "threshold": threshold, "drift": bool(score > threshold),
              "n_current": int(n), "n_current_available": int(len(current)), "n_reference": int(m),
              "n_reference_available": int(len(pool)),
              "calibration": {"key": key, "reused": reused, "n_splits": calib["n_splits"],
                              "quantile": calib["quantile"], "fpr_bound": calib["fpr_bound"],
                              "null_mean": calib["null_mean"], "null_max": calib["null_max"],
                              "seed": calib["seed"], "created_at": calib["created_at"]}}
    logger.info("%-5s drift score %.4g vs threshold %.4g (n=%d, m=%d): %s", modality, score, threshold, n, m,
                "DRIFT" if result["drift"] else "no drift")
    return result, snapshot


def detect_drift(reference: dict[str, np.ndarray], current: dict[str, np.ndarray],
                 config: DriftConfig = DriftConfig(), store: CalibrationStore | None = None,
                 model_tag: str | None = None, with_report: bool = True, progress: bool = True
                 ) -> tuple[dict, dict]:
    """Test every modality present on both sides.

    Args:
        reference: ``{modality: (n_P, D) float32}`` (e.g. :func:`load_reference`).
        current: ``{modality: (n_m, D) float32}`` (e.g. :func:`components.storage.embeddings.load_embeddings`).

    Returns:
        (summary: ``{"drift", "drifted_modalities", "tested_modalities", "modalities": {modality:
        result or {"status": "skipped", "reason"}}, "method", "config"}``,
        ``{modality: Evidently snapshot}`` of the tested modalities when ``with_report``).

    Raises:
        DriftInputError: an empty current window; an ``embedding`` dimension that differs from the
            reference's; no modality that can be tested (each reason named).
    """
    if not reference:
        raise DriftInputError("the reference holds no embeddings")
    dim = check_embeddings(reference, what="reference")
    current = {m: e for m, e in current.items() if len(e)}
    if not current:
        raise DriftInputError("empty window: the current window holds no embeddings")
    try:
        check_embeddings(current, dim=dim, what="current window")
    except ValueError as exc:
        raise DriftInputError(str(exc)) from exc
    modalities: dict[str, dict] = {}
    snapshots = {}
    for modality in MODALITIES:
        if modality not in current:
            modalities[modality] = {"status": "skipped", "reason": "no current rows of this modality"}
            continue
        if modality not in reference:
            modalities[modality] = {"status": "skipped", "reason": f"the reference (the catalog index) holds no "
                                    f"{modality!r} embeddings (indexed without that kind)"}
            continue
        try:
            result, snap = modality_drift(reference[modality], current[modality], modality, config, store,
                                         model_tag, with_report, progress)
        except DriftInputError as exc:
            modalities[modality] = {"status": "skipped", "reason": str(exc)}
            continue
        modalities[modality] = result
        if snap is not None:
            snapshots[modality] = snap
    tested = [m for m, r in modalities.items() if r["status"] == "tested"]
    if not tested:
        reasons = "; ".join(f"{m}: {r['reason']}" for m, r in modalities.items())
        raise DriftInputError(f"no modality could be tested: {reasons}")
    drifted = [m for m in tested if modalities[m]["drift"]]
    summary = {"drift": bool(drifted), "drifted_modalities": drifted, "tested_modalities": tested,
               "modalities": modalities, "method": method_description(config), "config": config.to_dict()}
    return summary, snapshots


def method_description(config: DriftConfig) -> dict:
    """What the score and threshold are, for the JSON summary and the report."""
    scores = {"mmd": "unbiased MMD^2 (Gretton et al. 2012), RBF kernel, bandwidth = median pairwise distance",
              "model": "ROC AUC of an SGD logistic classifier reference-vs-current (held-out half)",
              "distance": "euclidean distance between the mean embeddings",
              "ratio": "share of components drifted (Wasserstein distance > 0.1 per component)"}
    return {"name": config.method, "evidently": f"evidently.metrics.EmbeddingsDrift(drift_method="
                                                f"{type(evidently_method(config)).__name__})",
            "score": scores[config.method],
            "pca_components": config.pca_components or None,
            "threshold": f"conformal {config.quantile:g} quantile of the score over {config.n_splits} random "
                         "reference-vs-reference splits of the tested sizes (calibrated per model)",
            "verdict": "drift when score > threshold; the window drifts when any tested modality drifts"}


__all__ = ["DriftConfig", "DriftInputError", "METHODS", "detect_drift", "modality_drift", "drift_score", "window_size",
           "reference_size", "evidently_method", "evidently_snapshot", "method_description"]
