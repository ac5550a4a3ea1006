"""Calibrated drift thresholds: the null distribution of a two-sample drift score, measured on random
reference-vs-reference splits of the same sizes as the test, and stored per model.

Why: Evidently's default embedding-drift thresholds are fixed numbers (ROC AUC 0.55 for the
classifier method, MMD^2 0.015, distance 0.2) that do not depend on the window size, the embedding
model or its geometry; on ITEm embeddings they either flag noise or miss drift. The null
distribution of a score depends on the sizes of the two samples and on the embedding space, so it
is measured here, for the model's own reference embeddings and the exact window size tested.

Procedure (:func:`calibrate`): given the reference pool P (n_P rows), the window size n and the
reference size m (m + n <= n_P), repeat K times: draw a random permutation of P, take its first m
rows as "reference" and the next n rows as "current" (disjoint), and score the pair. The K scores
are draws of the score under "no drift". The threshold is the conformal quantile (Vovk et al.,
"Algorithmic Learning in a Random World", 2005; Angelopoulos & Bates, arXiv:2107.07511, sec. 1):
the j-th smallest score with j = ceil(q (K + 1)). If a new no-drift score is exchangeable with the
K calibration scores, P(new score > threshold) = (K + 1 - j) / (K + 1) <= 1 - q: with K = 100 and
q = 0.99 the threshold is the largest of the 100 scores and the false-positive rate is at most
1/101 = 0.99 % per test.

Storage (:class:`CalibrationStore`): the BentoML model folder is immutable once saved, so
calibrations live beside it, under ``<storage root>/calibration/<model name>/<model version>.json``
(storage root: ``$ITEM_STORAGE_ROOT``, default ``./item-storage``). They are computed at first use,
one entry per (modality, window size, reference size, method settings), and read back afterwards;
an entry is recomputed only if the reference pool it was computed on has changed (its fingerprint).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from components import storage
from item_model.io import PROGRESS_INTERVAL, json_text, write_json_atomic

logger = logging.getLogger(__name__)

CALIBRATION_DIR = "calibration"

#: score(reference (m, D), current (n, D)) -> float; larger = more drift
ScoreFn = Callable[[np.ndarray, np.ndarray], float]


def pool_fingerprint(pool: np.ndarray) -> str:
    """First 16 hex digits of SHA-256 over the pool's shape and float32 bytes (row order matters)."""
    a = np.ascontiguousarray(pool, dtype=np.float32)
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def conformal_threshold(scores: np.ndarray | list[float], quantile: float) -> tuple[float, float]:
    """The conformal ``quantile`` of K calibration scores and the false-positive bound it gives.

    Returns:
        (threshold = the j-th smallest score, j = min(K, ceil(quantile * (K + 1))),
        fpr_bound = (K + 1 - j) / (K + 1): the probability that an exchangeable no-drift score
        exceeds the threshold).

    Raises:
        ValueError: no scores, or a quantile outside (0, 1).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = len(s)
    if k == 0:
        raise ValueError("calibration needs at least one score")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"calibration quantile must be in (0, 1), got {quantile}")
    j = min(k, math.ceil(quantile * (k + 1)))
    if math.ceil(quantile * (k + 1)) > k:
        logger.warning("quantile %.4f needs K >= %d splits; with K=%d the threshold is the maximum "
                       "(false-positive bound %.4f)", quantile, math.ceil(quantile / (1 - quantile)), k, 1 / (k + 1))
    return float(s[j - 1]), (k + 1 - j) / (k + 1)


def calibrate(pool: np.ndarray, window: int, n_reference: int, score: ScoreFn, n_splits: int = 100,
              quantile: float = 0.99, seed: int = 0, progress: bool = True, label: str = "") -> dict:
    """Null distribution of ``score`` over ``n_splits`` disjoint random splits of ``pool``.

    Args:
        pool: (n_P, D) float32 reference embeddings.
        window: n, the current window's size (rows of each split's "current" part).
        n_reference: m, rows of each split's "reference" part; m + n <= n_P.
        score: the drift score, called as ``score(reference (m, D), current (n, D))``.
        n_splits: K. quantile: q of :func:`conformal_threshold`. seed: of ``numpy.random.default_rng``.
        label: a name for the progress bar and log (e.g. the modality).

    Returns:
        a JSON-ready dict: ``window``, ``n_reference``, ``n_splits``, ``quantile``, ``seed``,
        ``scores`` (K floats, in draw order), ``threshold``, ``fpr_bound``, ``null_mean``,
        ``null_std``, ``null_max``, ``pool_size``, ``pool_fingerprint``, ``wall_time_s``, ``created_at``.

    Raises:
        ValueError: m + n exceeds the pool, or m or n < 2.
    """
    n_pool = len(pool)
    if window < 2 or n_reference < 2 or window + n_reference > n_pool:
        raise ValueError(f"calibration needs 2 <= window ({window}), 2 <= n_reference ({n_reference}) and "
                         f"window + n_reference <= reference pool size ({n_pool})")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    scores = []
    for _ in tqdm(range(n_splits), desc=f"calibrate {label} (n={window}, m={n_reference})".replace("  ", " "),
                  disable=not progress, mininterval=PROGRESS_INTERVAL):
        perm = rng.permutation(n_pool)
        scores.append(float(score(pool[perm[:n_reference]], pool[perm[n_reference:n_reference + window]])))
    threshold, fpr_bound = conformal_threshold(scores, quantile)
    s = np.asarray(scores)
    out = {"window": int(window), "n_reference": int(n_reference), "n_splits": int(n_splits),
           "quantile": float(quantile), "seed": int(seed), "threshold": threshold, "fpr_bound": fpr_bound,
           "null_mean": float(s.mean()), "null_std": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
           "null_max": float(s.max()), "pool_size": int(n_pool), "pool_fingerprint": pool_fingerprint(pool),
           "wall_time_s": round(time.perf_counter() - t0, 2),
           "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "scores": scores}
    logger.info("calibrated %s: window %d vs reference %d, K=%d: null mean %.3g, max %.3g -> threshold %.3g "
                "(q=%.3f, false-positive bound %.4f) in %.1f s", label, window, n_reference, n_splits,
                out["null_mean"], out["null_max"], threshold, quantile, fpr_bound, out["wall_time_s"])
    return out


class CalibrationStore:
    """Calibrations of one storage root: ``<root>/calibration/<model name>/<model version>.json``, the
    root a local folder or ``gs://bucket/prefix`` (:func:`components.storage.storage_root`).

    File content: ``{"model_tag": "<name>:<version>", "entries": {key: calibration dict}}``, where
    the key names the modality, window size, reference size and method settings
    (:meth:`entry_key`) and each entry is :func:`calibrate`'s dict plus the settings it was made with.
    Adding an entry is a read-modify-write that never loses another writer's entry: locally an
    advisory lock on ``<file>.lock`` and an atomic replace; on GCS a write with a generation
    precondition, re-read and retried when another monitoring run wrote first (:func:`storage.update`).
    """

    def __init__(self, root: str | Path | None = None, client=None):
        self.client = client                            # a google.cloud.storage.Client for gs:// (None: default)
        base = storage.storage_root(root)
        self.root = storage.join(base, CALIBRATION_DIR) if storage.is_gcs(base) else Path(base) / CALIBRATION_DIR

    def path(self, model_tag: str) -> Path | str:
        """The calibration file of a model tag ``<name>:<version>`` (a ``Path``, or a ``gs://`` URI).

        Raises:
            ValueError: the tag is not ``name:version`` (e.g. an unresolved ``latest``).
        """
        name, sep, version = model_tag.partition(":")
        if not sep or not name or not version or version == "latest" or "/" in model_tag:
            raise ValueError(f"calibrations are stored per model version; got model_tag {model_tag!r}, "
                             f"expected a resolved '<name>:<version>'")
        if isinstance(self.root, str):
            return storage.join(self.root, name, f"{version}.json")
        return self.root / name / f"{version}.json"

    @staticmethod
    def entry_key(modality: str, window: int, n_reference: int, settings: str) -> str:
        """``<modality>/n=<window>/m=<n_reference>/<settings>``."""
        return f"{modality}/n={window}/m={n_reference}/{settings}"

    def _parse(self, model_tag: str, raw: bytes | str | None) -> dict:
        if raw is None:
            return {"model_tag": model_tag, "entries": {}}
        path = self.path(model_tag)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("model_tag") != model_tag or not isinstance(data.get("entries"), dict):
            got = data.get("model_tag") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: field 'model_tag' is {got!r}, expected {model_tag!r} with an 'entries' object")
        return data

    def load(self, model_tag: str) -> dict:
        """The file's content, or an empty one if there is none yet.

        Raises:
            ValueError: the file is not JSON or belongs to another model tag (naming the file).
        """
        path = self.path(model_tag)
        try:
            raw = storage.read_bytes(path, client=self.client)
        except storage.StorageNotFound:
            raw = None
        return self._parse(model_tag, raw)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".json.lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get(self, model_tag: str, key: str, fingerprint: str | None = None) -> dict | None:
        """A stored entry, or None if absent or made on another reference pool (``fingerprint``)."""
        entry = self.load(model_tag)["entries"].get(key)
        if entry is not None and fingerprint is not None and entry.get("pool_fingerprint") != fingerprint:
            logger.warning("calibration %s of %s was made on another reference pool (%s != %s); recomputing",
                           key, model_tag, entry.get("pool_fingerprint"), fingerprint)
            return None
        return entry

    def put(self, model_tag: str, key: str, entry: dict) -> Path | str:
        """Add or replace one entry; the other entries, also those another writer added meanwhile, stay.

        Raises:
            storage.StorageError: on GCS, still contended after a minute.
        """
        path = self.path(model_tag)

        def change(raw: bytes | None) -> bytes:
            data = self._parse(model_tag, raw)
            data["entries"][key] = entry
            return json_text(data).encode("utf-8")

        if isinstance(path, str):
            storage.update(path, change, client=self.client, content_type="application/json")
        else:
            with self._locked(path):
                data = self.load(model_tag)
                data["entries"][key] = entry
                write_json_atomic(path, data)
        return path

    def get_or_calibrate(self, model_tag: str, key: str, fingerprint: str,
                         compute: Callable[[], dict]) -> tuple[dict, bool]:
        """The stored entry for ``key`` if it matches ``fingerprint``, else ``compute()`` stored.

        Returns:
            (the calibration entry, True if it was read back rather than computed).
        """
        entry = self.get(model_tag, key, fingerprint)
        if entry is not None:
            logger.info("reusing calibration %s of %s from %s", key, model_tag, self.path(model_tag))
            return entry, True
        entry = compute()
        path = self.put(model_tag, key, entry)
        logger.info("stored calibration %s of %s in %s", key, model_tag, path)
        return entry, False
