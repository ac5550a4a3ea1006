"""The default drift calibration (monitoring/calibration.py, monitoring/drift.py): with no drift config
given and no calibration stored for the model, the threshold is calibrated now with the defaults
(K = 100 reference-vs-reference splits, conformal quantile 0.99, so the largest null score and a
false-positive bound of 1/101), stored under ``$ITEM_STORAGE_ROOT/calibration/<name>/<version>.json``
and read back the next time; Evidently's fixed default threshold is never used. Real Evidently MMD
scores on the real catalog index embeddings of ``packaged_model``."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_default_calibration_is_computed_stored_and_reused(packaged_model, tmp_path, monkeypatch):
    from components.index.layout import load_catalog_index
    from monitoring import drift
    from monitoring.calibration import CalibrationStore
    from monitoring.drift import DriftConfig, modality_drift

    config = DriftConfig.from_dict({})                      # what the pipeline uses when no drift config is given
    assert config == DriftConfig() and (config.n_splits, config.quantile, config.method) == (100, 0.99, "mmd")
    monkeypatch.setenv("ITEM_STORAGE_ROOT", str(tmp_path / "storage"))
    store = CalibrationStore()                              # the storage root from the environment
    _, emb, _ = load_catalog_index(packaged_model["index_dir"])
    pool = emb["joint"]
    current = pool[np.random.default_rng(1).permutation(len(pool))[:60]]    # reference rows: no drift
    tag = "item:defaultcal"
    assert not store.path(tag).exists()                     # nothing stored yet

    result, _ = modality_drift(pool, current, "joint", config, store, tag, with_report=False, progress=False)
    calib = result["calibration"]
    assert calib["reused"] is False and calib["n_splits"] == 100 and calib["quantile"] == 0.99
    assert calib["fpr_bound"] == pytest.approx(1 / 101)
    assert result["n_current"] == 50                        # the largest window-grid size <= 60
    assert result["n_reference"] == min(len(pool) - 50, config.max_reference)
    path = tmp_path / "storage" / "calibration" / "item" / "defaultcal.json"
    assert store.path(tag) == path and path.is_file()
    stored = json.loads(path.read_text())
    assert stored["model_tag"] == tag and list(stored["entries"]) == [calib["key"]]
    assert calib["key"].endswith(config.settings_key()) and "mmd-pca0-K100-q0.99-seed0" in calib["key"]
    entry = stored["entries"][calib["key"]]
    assert len(entry["scores"]) == 100 and entry["window"] == 50
    # q = 0.99 with K = 100: the threshold is the largest of the 100 null scores, not Evidently's fixed 0.015
    assert result["threshold"] == entry["threshold"] == max(entry["scores"]) == entry["null_max"]
    assert result["threshold"] != pytest.approx(0.015)
    assert result["drift"] is (result["score"] > result["threshold"])
    assert result["drift"] is False                         # reference rows against reference rows

    def no_recompute(*a, **k):
        raise AssertionError("the stored default calibration must be read back, not recomputed")

    monkeypatch.setattr(drift, "calibrate", no_recompute)
    again, _ = modality_drift(pool, current, "joint", DriftConfig(), CalibrationStore(), tag, with_report=False,
                              progress=False)
    assert again["calibration"]["reused"] is True and again["threshold"] == result["threshold"]
    assert again["score"] == pytest.approx(result["score"])
