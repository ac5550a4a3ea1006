"""Embedding drift of ITEm product embeddings: Evidently 0.7 ``EmbeddingsDrift`` with calibrated
thresholds, per modality (joint, text-only, image-only).

* Reference: the champion's catalog index, stored with the model at package time
  (``<BentoML model>/catalog_index``, :mod:`item_model.lifecycle.index`): the embeddings of the catalog it was
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

The step functions at the end (:func:`embed_current_step`, :func:`drift_report_step`,
:func:`recommend_step`) are what the monitoring pipeline's KFP components call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from item_model.lifecycle.embedding_io import (INDEX_KINDS, MODALITIES, check_embeddings, load_embeddings,
                                     sample_rows, save_embeddings)
from item_model.io import write_json_atomic
from item_model.lifecycle.artifacts import INDEX_DIR, TrafficLogError, read_traffic_files
from item_model.lifecycle.steps import record_failure

from .calibration import CalibrationStore, calibrate, pool_fingerprint

logger = logging.getLogger(__name__)

#: traffic-log ``kind`` values -> modality, when the rows carry no has_title/has_image flags
TRAFFIC_KINDS = {"joint": "joint", "item": "joint", "text": "text", "item_text_only": "text", "title": "text",
                 "image": "image", "item_image_only": "image", "photo": "image"}
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
        current: ``{modality: (n_m, D) float32}`` (e.g. :func:`item_model.lifecycle.embedding_io.load_embeddings`).

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
            modalities[modality] = {"status": "skipped", "reason": f"the reference lacks {INDEX_KINDS[modality]!r} "
                                    "embeddings (model evaluated without the modality ablation)"}
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


# --------------------------------------------------------------------------------------------------
# the reference (from the packaged model) and the current window (catalog folder or traffic log)

def resolve_model(model_tag: str = "item:latest", bentoml_home: str | None = None) -> tuple[str, Path]:
    """Find a model in a BentoML model store.

    Args:
        model_tag: ``name:version`` or ``name:latest`` (or just ``name``).
        bentoml_home: the store root (``<home>/models/...``); default ``$BENTOML_HOME`` or ``~/bentoml``.

    Returns:
        (the resolved tag ``name:version``, the model's folder).

    Raises:
        DriftInputError: no such model in that store.
    """
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    home = Path(bentoml_home or os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser()
    import bentoml
    from bentoml._internal.models.model import ModelStore
    from bentoml.exceptions import BentoMLException

    try:
        model = bentoml.models.get(model_tag, _model_store=ModelStore(str(home / "models")))
    except (BentoMLException, ValueError) as exc:
        raise DriftInputError(f"model {model_tag!r} is not in the BentoML store {home / 'models'}: {exc}") from exc
    return str(model.tag), Path(model.path)


def load_reference(model_path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The reference embeddings stored with a packaged model (its ``catalog_index/``).

    Returns:
        (``{modality: (n, D) float32}`` for the kinds the index holds, the index's ``index.json``
        plus ``"path"``).

    Raises:
        DriftInputError: the model has no catalog index.
    """
    from item_model.lifecycle.index import load_catalog_index

    path = Path(model_path) / INDEX_DIR
    if not (path / "index.json").exists():
        raise DriftInputError(f"model folder {str(model_path)!r} has no {INDEX_DIR}/ (the reference embeddings "
                              "stored at package time); re-package the model with its catalog index")
    _, embeddings, meta = load_catalog_index(path)
    by_kind = {kind: modality for modality, kind in INDEX_KINDS.items()}
    reference = {by_kind[k]: e for k, e in embeddings.items() if k in by_kind}
    return reference, {**meta, "path": str(path)}


def source_type(path: str | Path) -> str:
    """``"catalog"`` for a folder in the catalog layout (``data/*.parquet``), ``"traffic"`` for a
    traffic-log parquet file or a folder of them.

    Raises:
        DriftInputError: the path does not exist or is neither.
    """
    p = Path(path)
    if not p.exists():
        raise DriftInputError(f"current {str(p)!r} does not exist")
    if p.is_dir() and (p / "data").is_dir():
        return "catalog"
    if (p.is_file() and p.suffix == ".parquet") or (p.is_dir() and next(p.rglob("*.parquet"), None)):
        return "traffic"
    raise DriftInputError(f"current {str(p)!r} is neither a catalog folder (data/*.parquet) nor a traffic log "
                          "(*.parquet files with timestamp, model_tag, kind, embedding)")


def _timestamp(value: str | None, name: str) -> pd.Timestamp | None:
    if not value:
        return None
    try:
        ts = pd.Timestamp(value)
    except ValueError as exc:
        raise DriftInputError(f"{name} {value!r} is not an ISO date/time: {exc}") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def load_traffic_window(path: str | Path, since: str | None = None, until: str | None = None) -> pd.DataFrame:
    """Rows of a traffic log with ``since <= timestamp < until`` (UTC; either bound optional).

    The log (written by serving) is parquet files under a folder, searched recursively, or one file,
    with columns ``timestamp``, ``model_tag``, ``kind``, ``embedding`` (list<float32>), ``has_title``,
    ``has_image``, ``title_length``; ``timestamp``, ``model_tag`` and ``embedding`` are required here.

    Returns:
        the window's rows sorted by ``timestamp`` (datetime64[ns, UTC]), RangeIndex.

    Raises:
        DriftInputError: no parquet file, an unreadable file, a missing column, an unparsable
            ``timestamp``, or an empty window (naming the log's time span).
    """
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.rglob("*.parquet"))
    if not files:
        raise DriftInputError(f"traffic log {str(p)!r} holds no *.parquet file")
    try:
        df = read_traffic_files(files)
    except TrafficLogError as exc:
        raise DriftInputError(str(exc)) from exc
    ts = pd.to_datetime(df["timestamp"], utc=True, errors="coerce")
    if ts.isna().any():
        rows = np.flatnonzero(ts.isna().to_numpy())[:5].tolist()
        raise DriftInputError(f"traffic log {str(p)!r}: field 'timestamp' is not a date/time in rows {rows}")
    df["timestamp"] = ts
    lo, hi = _timestamp(since, "since"), _timestamp(until, "until")
    keep = np.ones(len(df), dtype=bool)
    if lo is not None:
        keep &= (ts >= lo).to_numpy()
    if hi is not None:
        keep &= (ts < hi).to_numpy()
    if not keep.any():
        span = f"from {ts.min()} to {ts.max()}" if len(df) else "no rows at all"
        raise DriftInputError(f"empty window: traffic log {str(p)!r} has no rows with {since or '-inf'} <= "
                              f"timestamp < {until or '+inf'} ({len(df)} rows in the log, {span})")
    return df[keep].sort_values("timestamp", kind="stable").reset_index(drop=True)


def traffic_modalities(df: pd.DataFrame) -> np.ndarray:
    """The modality of each traffic row: from ``has_title``/``has_image`` when present (both ->
    joint, title only -> text, image only -> image), else from ``kind`` (:data:`TRAFFIC_KINDS`).

    Raises:
        DriftInputError: a row's modality cannot be told (names the field and values).
    """
    if {"has_title", "has_image"} <= set(df.columns):
        t = df["has_title"].fillna(False).astype(bool).to_numpy()
        i = df["has_image"].fillna(False).astype(bool).to_numpy()
        out = np.where(t & i, "joint", np.where(t, "text", np.where(i, "image", "")))
        if (out == "").any():
            rows = np.flatnonzero(out == "")[:5].tolist()
            raise DriftInputError(f"traffic rows {rows} have has_title=false and has_image=false")
        return out.astype(object)
    if "kind" not in df.columns:
        raise DriftInputError("traffic log has neither has_title/has_image nor 'kind' to tell each row's modality")
    out = df["kind"].map(TRAFFIC_KINDS)
    if out.isna().any():
        bad = sorted(set(df.loc[out.isna(), "kind"].astype(str)))[:5]
        raise DriftInputError(f"traffic log field 'kind' has unknown value(s) {bad}; known: {sorted(TRAFFIC_KINDS)}")
    return out.to_numpy(dtype=object)


def traffic_embeddings(df: pd.DataFrame, model_tag: str, dim: int | None = None) -> dict[str, np.ndarray]:
    """Split a traffic window into ``{modality: (n_m, D) float32}`` after checking it.

    Args:
        model_tag: the reference model's resolved tag; every row must have been served by it.
        dim: the reference's embedding dimension.

    Raises:
        DriftInputError: model version mismatch (field ``model_tag``), or embeddings of another or of
            mixed dimension (field ``embedding``).
    """
    tags = df["model_tag"].astype(str).value_counts()
    if set(tags.index) != {model_tag}:
        raise DriftInputError(f"model version mismatch: field 'model_tag' of the traffic window holds "
                              f"{tags.to_dict()}, but the reference is {model_tag}; choose a window served by "
                              f"{model_tag} (--since/--until) or the model that served it (--model-tag)")
    lengths = df["embedding"].map(lambda v: -1 if v is None else len(v)).to_numpy()
    found = sorted(set(lengths.tolist()))
    if len(found) > 1 or (dim is not None and found[0] != dim):
        raise DriftInputError(f"wrong embedding dimension: field 'embedding' of the traffic window has length(s) "
                              f"{found}, expected {dim if dim is not None else 'one length'} "
                              f"(the reference model {model_tag})")
    emb = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    modality = traffic_modalities(df)
    return {m: emb[modality == m] for m in MODALITIES if (modality == m).any()}


def reference_dim(model_path: str | Path) -> int | None:
    """The embedding dimension D of a packaged model's catalog index (``index.json``), or None."""
    meta = Path(model_path) / INDEX_DIR / "index.json"
    return int(json.loads(meta.read_text())["dim"]) if meta.exists() else None


# --------------------------------------------------------------------------------------------------
# pipeline steps (plain functions over local paths; the KFP components in components/ call these)

@record_failure
def embed_current_step(current: str, model_tag: str, bentoml_home: str | None, out_dir: str,
                       since: str = "", until: str = "", max_rows: int = 1000, seed: int = 0,
                       progress: bool = True) -> dict:
    """Embed the current window with the reference model and write the embeddings artifact
    (:mod:`item_model.lifecycle.embedding_io`).

    * catalog folder: rows with a title and an image, a seeded random sample of at most ``max_rows``,
      embedded by the model in the joint, text-only and image-only modes;
    * traffic log: the rows with ``since <= timestamp < until``, each under its own modality, after
      checking ``model_tag`` and the ``embedding`` dimension against the model.

    Returns:
        the artifact's ``embeddings.json`` content.

    Raises:
        DriftInputError: see :func:`source_type`, :func:`load_traffic_window`,
            :func:`traffic_embeddings`; an empty catalog window. item_model.data.catalog.CatalogError: an
            unreadable catalog.
    """
    tag, model_path = resolve_model(model_tag, bentoml_home)
    kind = source_type(current)
    meta: dict = {"model_tag": tag, "source": str(Path(current).resolve()), "source_type": kind,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    t0 = time.perf_counter()
    if kind == "catalog":
        from item_model.data.catalog import read_catalog
        from item_model.lifecycle.embedding_io import embed_modalities, usable_listings
        from item_model.modeling_item import ItemModel
        from item_model.processing_item import ItemProcessor

        df, dropped = usable_listings(read_catalog(current))
        if df.empty:
            raise DriftInputError(f"empty window: catalog {current!r} has no listing with a title and an image "
                                  f"(dropped {dropped})")
        n_all = len(df)
        df = df.iloc[sample_rows(len(df), max_rows, seed)].reset_index(drop=True)
        model = ItemModel.from_pretrained(model_path)
        processor = ItemProcessor.from_pretrained(model_path, model.config)
        logger.info("embedding %d of %d listings of %s with %s (joint, text, image)", len(df), n_all, current, tag)
        embeddings = embed_modalities(model, processor, df, progress=progress)
        years = pd.to_numeric(df["year"], errors="coerce").dropna().astype(int)
        meta.update(n_listings=n_all, n_embedded=len(df), dropped=dropped,
                    years=years.value_counts().sort_index().to_dict() if len(years) else {},
                    product_ids=df["product_id"].astype(str).tolist())
    else:
        window = load_traffic_window(current, since or None, until or None)
        embeddings = traffic_embeddings(window, tag, reference_dim(model_path))
        meta.update(since=since or None, until=until or None, n_rows=len(window),
                    first_timestamp=window["timestamp"].min().isoformat(),
                    last_timestamp=window["timestamp"].max().isoformat())
    meta["embed_time_s"] = round(time.perf_counter() - t0, 1)
    save_embeddings(out_dir, embeddings, meta)
    logger.info("current window: %s", {m: len(e) for m, e in embeddings.items()})
    return {**meta, "counts": {m: len(e) for m, e in embeddings.items()}}


@record_failure
def drift_report_step(current_dir: str, model_tag: str, bentoml_home: str | None, storage: str | None,
                      drift_config: dict | None, html_path: str, summary_path: str, progress: bool = True) -> dict:
    """Test the current embeddings against the model's reference, per modality; write the Evidently
    HTML report and the JSON summary.

    Returns:
        the summary (also written to ``summary_path``): :func:`detect_drift`'s plus ``model_tag``,
        ``current``, ``reference``, ``calibration_file``, ``html_report``, ``wall_time_s``.

    Raises:
        DriftInputError: model version mismatch between the current embeddings (``model_tag``) and
            the reference; a wrong ``embedding`` dimension; an empty window; no testable modality.
    """
    from .report import write_html

    t0 = time.perf_counter()
    config = DriftConfig.from_dict(drift_config)
    tag, model_path = resolve_model(model_tag, bentoml_home)
    reference, ref_meta = load_reference(model_path)
    current, cur_meta = load_embeddings(current_dir)
    if cur_meta.get("model_tag") != tag:
        raise DriftInputError(f"model version mismatch: the current embeddings' field 'model_tag' is "
                              f"{cur_meta.get('model_tag')!r} but the reference model is {tag!r}")
    store = CalibrationStore(storage)
    summary, snapshots = detect_drift(reference, current, config, store, tag, progress=progress)
    summary = {"model_tag": tag, **summary,
               "current": {k: v for k, v in cur_meta.items() if k != "product_ids"},
               "reference": {"path": ref_meta["path"], "n": ref_meta["n"], "dim": ref_meta["dim"],
                             "kinds": ref_meta["kinds"], "catalog_fingerprint": ref_meta.get("catalog_fingerprint")},
               "calibration_file": str(store.path(tag).resolve()), "html_report": str(html_path),
               "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_html(snapshots, summary, html_path)
    summary["wall_time_s"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(summary_path, summary)
    return summary


@record_failure
def recommend_step(summary_path: str, retrain: bool, catalog: str, json_path: str, markdown_path: str) -> dict:
    """Write the retraining recommendation (JSON and Markdown) for a drifted window.

    Returns:
        the recommendation dict (see :func:`monitoring.report.recommendation`).
    """
    from item_model.io import write_text_atomic

    from .report import recommendation, recommendation_markdown

    summary = json.loads(Path(summary_path).read_text())
    rec = recommendation(summary, retrain=retrain, catalog=catalog)
    write_json_atomic(json_path, rec)
    write_text_atomic(markdown_path, recommendation_markdown(rec))
    return rec


__all__ = ["DriftConfig", "DriftInputError", "detect_drift", "modality_drift", "drift_score", "window_size",
           "reference_size", "evidently_method", "evidently_snapshot", "resolve_model", "load_reference",
           "source_type", "load_traffic_window", "traffic_embeddings", "traffic_modalities",
           "embed_current_step", "drift_report_step", "recommend_step"]
