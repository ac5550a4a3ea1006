"""Drift monitoring on real ITEm embeddings of the real catalog: temporal drift (2011-2012 listings as
the reference, 2016-2017 listings as the current window) is detected in every modality and a
disjoint random half of 2011-2012 is not; calibrations are stored per model and read back; bad input
gets a clear error; and the monitoring pipeline, run for real through kfp.local by its CLI, takes the
recommendation + retraining branch only on drift."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components.storage.embeddings import MODALITIES, load_embeddings, save_embeddings
from monitoring import drift, inputs, steps
from monitoring.calibration import CalibrationStore, conformal_threshold
from monitoring.drift import DriftConfig, DriftInputError, detect_drift
from tests.conftest import CATALOG

N_REFERENCE, N_WINDOW = 500, 200


def write_year_catalog(dest: Path, years: tuple[int, ...], n: int, seed: int, n_groups: int = 0) -> Path:
    """A real slice of the catalog in its own layout: ``n`` random listings of the given years, plus
    every member of the first ``n_groups`` same-product groups (with their ``same_product_groups.csv``,
    which retraining needs to evaluate search)."""
    table = pa.concat_tables([pq.read_table(s) for s in sorted((CATALOG / "data").glob("*.parquet"))])
    year = table.column("year").to_numpy(zero_copy_only=False)
    titled = np.array([t is not None for t in table.column("productDisplayName").to_pylist()])
    idx = np.flatnonzero(np.isin(year, years) & titled)
    idx = np.random.default_rng(seed).choice(idx, n, replace=False)
    groups = pd.read_csv(CATALOG / "same_product_groups.csv")
    groups = groups[groups["group_id"].isin(sorted(groups["group_id"].unique())[:n_groups])]
    members = np.flatnonzero(np.isin(table.column("id").to_numpy(), groups["id"].to_numpy()))
    idx = np.union1d(idx, members)
    (dest / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(pa.array(idx)), dest / "data" / "train-00000-of-00001.parquet")
    if n_groups:
        groups.to_csv(dest / "same_product_groups.csv", index=False)
    return dest


@pytest.fixture(scope="module")
def year_embeddings(packaged_model) -> dict[str, dict[str, np.ndarray]]:
    """The packaged tiny model's embeddings (joint, text-only, image-only) of real listings:
    ``reference`` = 600 random 2011-2012 listings, ``control`` = 200 other 2011-2012 listings,
    ``temporal`` = 200 random 2016-2017 listings."""
    from components.catalog import to_canonical
    from components.storage.embeddings import embed_modalities
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor

    table = pa.concat_tables([pq.read_table(s) for s in sorted((CATALOG / "data").glob("*.parquet"))])
    year = table.column("year").to_numpy(zero_copy_only=False)
    titled = np.array([t is not None and t.strip() != "" for t in table.column("productDisplayName").to_pylist()])
    old = np.flatnonzero(np.isin(year, (2011, 2012)) & titled)
    new = np.flatnonzero(np.isin(year, (2016, 2017)) & titled)
    rng = np.random.default_rng(0)
    pick_old = rng.choice(old, N_REFERENCE + N_WINDOW, replace=False)
    picks = {"reference": pick_old[:N_REFERENCE], "control": pick_old[N_REFERENCE:],
             "temporal": rng.choice(new, N_WINDOW, replace=False)}
    sets = {name: to_canonical(table.take(pa.array(idx)), str(CATALOG)) for name, idx in picks.items()}
    model = ItemModel.from_pretrained(packaged_model["model_dir"])
    processor = ItemProcessor.from_pretrained(packaged_model["model_dir"], model.config)
    return {name: embed_modalities(model, processor, rows.reset_index(drop=True), progress=False)
            for name, rows in sets.items()}


def test_temporal_drift_detected_and_control_silent(year_embeddings, tmp_path):
    store = CalibrationStore(tmp_path)
    ref = year_embeddings["reference"]
    config = DriftConfig(n_splits=50, quantile=0.98)       # the conformal threshold is the max of 50 null scores
    temporal, _ = detect_drift(ref, year_embeddings["temporal"], config, store, "item:test", with_report=False,
                               progress=False)
    assert temporal["drift"] and temporal["drifted_modalities"] == list(MODALITIES)   # every modality moved
    for m in MODALITIES:
        r = temporal["modalities"][m]
        assert (r["n_current"], r["n_reference"]) == (N_WINDOW, N_REFERENCE - N_WINDOW)
        assert r["score"] > 2 * r["threshold"], (m, r["score"], r["threshold"])
        assert r["calibration"]["reused"] is False and r["calibration"]["n_splits"] == 50
        assert r["calibration"]["fpr_bound"] == pytest.approx(1 / 51)
    control, _ = detect_drift(ref, year_embeddings["control"], config, store, "item:test", with_report=False,
                              progress=False)
    assert not control["drift"] and control["drifted_modalities"] == []
    for m in MODALITIES:
        r = control["modalities"][m]
        assert r["score"] <= r["threshold"], (m, r["score"], r["threshold"])
        assert r["calibration"]["reused"] is True                     # same model, modality and sizes
        assert r["threshold"] == temporal["modalities"][m]["threshold"]


def test_calibration_is_stored_with_the_model_and_reused(year_embeddings, tmp_path, monkeypatch):
    config = DriftConfig(n_splits=30, quantile=0.95)
    ref = {"joint": year_embeddings["reference"]["joint"]}
    cur = {"joint": year_embeddings["control"]["joint"]}
    store = CalibrationStore(tmp_path)
    first, _ = detect_drift(ref, cur, config, store, "item:v1", with_report=False, progress=False)
    path = tmp_path / "calibration" / "item" / "v1.json"
    assert path.exists() and store.path("item:v1") == path
    stored = json.loads(path.read_text())
    assert stored["model_tag"] == "item:v1"
    (key, entry), = stored["entries"].items()
    assert key == f"joint/n={N_WINDOW}/m={N_REFERENCE - N_WINDOW}/mmd-pca0-K30-q0.95-seed0"
    assert {"method", "window", "n_reference", "n_splits", "scores", "threshold", "seed", "quantile",
            "pool_fingerprint"} <= set(entry)
    assert entry["method"] == "mmd" and entry["window"] == N_WINDOW and len(entry["scores"]) == 30
    assert entry["threshold"] == conformal_threshold(entry["scores"], 0.95)[0] == sorted(entry["scores"])[29]
    assert first["modalities"]["joint"]["threshold"] == entry["threshold"]

    def no_recompute(*args, **kwargs):
        raise AssertionError("the stored calibration must be read back, not recomputed")

    monkeypatch.setattr(drift, "calibrate", no_recompute)
    second, _ = detect_drift(ref, cur, config, CalibrationStore(tmp_path), "item:v1", with_report=False,
                             progress=False)
    assert second["modalities"]["joint"]["calibration"]["reused"] is True
    assert second["modalities"]["joint"]["threshold"] == entry["threshold"]
    with pytest.raises(AssertionError, match="read back"):          # another model version: its own file
        detect_drift(ref, cur, config, store, "item:v2", with_report=False, progress=False)
    with pytest.raises(AssertionError, match="read back"):          # another reference pool: recalibrated
        detect_drift({"joint": ref["joint"][::-1].copy()}, cur, config, store, "item:v1", with_report=False,
                     progress=False)


def test_evidently_report_html_json_and_terminal_summary(year_embeddings, tmp_path):
    from monitoring.report import summary_lines, write_html

    config = DriftConfig(n_splits=20, quantile=0.9)
    ref = year_embeddings["reference"]
    cur = {"text": year_embeddings["temporal"]["text"]}
    summary, snapshots = detect_drift(ref, cur, config, progress=False)
    assert set(snapshots) == {"text"} and summary["drifted_modalities"] == ["text"]
    assert summary["modalities"]["joint"] == {"status": "skipped", "reason": "no current rows of this modality"}
    r = summary["modalities"]["text"]
    # the report's Evidently score is the very score the calibration measured
    n, m = r["n_current"], r["n_reference"]
    from components.storage.embeddings import sample_rows
    direct = drift.drift_score(ref["text"][sample_rows(len(ref["text"]), m, config.seed + 1)],
                               cur["text"][sample_rows(len(cur["text"]), n, config.seed)], config)
    assert r["score"] == pytest.approx(direct, rel=1e-4)
    assert summary["method"]["name"] == "mmd" and "MMDDriftMethod" in summary["method"]["evidently"]
    page = write_html(snapshots, {**summary, "model_tag": "item:test"}, tmp_path / "report.html").read_text()
    assert "Drift in embeddings 'text'" in page and "ITEm embedding drift: DRIFT in text" in page
    assert "Data drift detected. Drift detection method: mmd" in page        # Evidently's verdict, our threshold
    json.dumps(summary)                                                       # the JSON summary is plain JSON
    lines = summary_lines(summary)
    assert len(lines) <= 20 and lines[0] == "ITEm embedding drift: DRIFT in text"
    assert any(line.startswith("text") and line.rstrip().endswith("DRIFT  (calibrated now)") for line in lines)


def write_traffic(folder: Path, embeddings: np.ndarray, tag: str, start: str, has_title, has_image,
                  name: str = "part-0.parquet") -> Path:
    n = len(embeddings)
    table = pa.table({
        "timestamp": pa.array(pd.date_range(start, periods=n, freq="min", tz="UTC")),
        "model_tag": [tag] * n,
        "kind": ["embed"] * n,
        "embedding": pa.array([e for e in embeddings.astype(np.float32)], type=pa.list_(pa.float32())),
        "has_title": has_title, "has_image": has_image, "title_length": [5] * n,
    })
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return folder


def test_traffic_log_window_per_modality(packaged_model, tmp_path):
    """Served embeddings (the champion's own embeddings of its catalog) in a traffic log: the window
    is cut by time, each row tested under its own modality, a modality with too few rows skipped."""
    from components.index.layout import load_catalog_index

    _, emb, _ = load_catalog_index(packaged_model["index_dir"])
    rows = np.random.default_rng(0).permutation(len(emb["joint"]))          # requests for random listings
    emb = {k: v[rows] for k, v in emb.items()}
    tag = packaged_model["tag"]
    traffic = tmp_path / "traffic"
    write_traffic(traffic, emb["joint"][:160], tag, "2026-01-01", [True] * 160, [True] * 160, "a.parquet")
    write_traffic(traffic, emb["text"][:80], tag, "2026-01-02", [True] * 80, [False] * 80, "b.parquet")
    write_traffic(traffic, emb["image"][:30], tag, "2026-01-03", [False] * 30, [True] * 30, "c.parquet")
    window = inputs.load_traffic_window(traffic, since="2026-01-01T00:10:00", until="2026-01-04")
    assert len(window) == 150 + 80 + 30 and window["timestamp"].is_monotonic_increasing
    out = tmp_path / "current"
    meta = steps.embed_current_step(str(traffic), "item:latest", packaged_model["bentoml_home"], str(out),
                                    since="2026-01-01T00:10:00", until="2026-01-04")
    assert meta["model_tag"] == tag and meta["counts"] == {"joint": 150, "text": 80, "image": 30}
    current, cur_meta = load_embeddings(out)
    np.testing.assert_array_equal(current["joint"], emb["joint"][10:160])
    summary = steps.drift_report_step(str(out), tag, packaged_model["bentoml_home"], str(tmp_path / "storage"),
                                      {"n_splits": 50, "quantile": 0.98}, str(tmp_path / "r.html"),
                                      str(tmp_path / "summary.json"))
    assert summary["tested_modalities"] == ["joint", "text"] and not summary["drift"]
    assert summary["modalities"]["joint"]["n_current"] == 150 and summary["modalities"]["text"]["n_current"] == 75
    assert "at least 50" in summary["modalities"]["image"]["reason"]
    assert json.loads((tmp_path / "summary.json").read_text())["current"]["source_type"] == "traffic"
    assert (tmp_path / "storage" / "calibration" / "item" / f"{tag.split(':')[1]}.json").exists()
    # the recommend step on that real summary: typed read, JSON + Markdown written
    rec = steps.recommend_step(str(tmp_path / "summary.json"), False, "", str(tmp_path / "rec.json"),
                               str(tmp_path / "rec.md"))
    assert rec["recommend_retraining"] is False and rec["model_tag"] == tag and set(rec["evidence"]) == {"joint", "text"}
    assert json.loads((tmp_path / "rec.json").read_text()) == rec
    assert "No retraining needed" in (tmp_path / "rec.md").read_text()


def test_bad_input_gets_clear_errors(packaged_model, year_embeddings, tmp_path):
    ref = {"joint": year_embeddings["reference"]["joint"]}
    tag, home = packaged_model["tag"], packaged_model["bentoml_home"]
    with pytest.raises(DriftInputError, match="empty window"):
        detect_drift(ref, {"joint": np.zeros((0, 384), np.float32)}, progress=False)
    with pytest.raises(DriftInputError, match=r"field 'embedding' has dimension \{'joint': 128\}, expected 384"):
        detect_drift(ref, {"joint": np.ones((100, 128), np.float32)}, progress=False)
    with pytest.raises(DriftInputError, match="holds 10 rows; at least 50"):
        detect_drift(ref, {"joint": ref["joint"][:10]}, progress=False)
    with pytest.raises(DriftInputError, match="does not exist"):
        inputs.source_type(tmp_path / "nowhere")
    emb = ref["joint"][:60]
    traffic = write_traffic(tmp_path / "t1", emb, tag, "2026-01-01", [True] * 60, [True] * 60)
    with pytest.raises(DriftInputError, match="empty window: .* no rows with 2027-01-01 <= timestamp"):
        inputs.load_traffic_window(traffic, since="2027-01-01")
    other = write_traffic(tmp_path / "t2", emb, "item:someoldversion", "2026-01-01", [True] * 60, [True] * 60)
    with pytest.raises(DriftInputError, match=r"model version mismatch: field 'model_tag' .*item:someoldversion"):
        steps.embed_current_step(str(other), tag, home, str(tmp_path / "o2"))
    wide = write_traffic(tmp_path / "t3", np.ones((60, 512), np.float32), tag, "2026-01-01", [True] * 60, [True] * 60)
    with pytest.raises(DriftInputError, match=r"wrong embedding dimension: field 'embedding' .*\[512\], expected 384"):
        steps.embed_current_step(str(wide), tag, home, str(tmp_path / "o3"))
    # embeddings made by another model version than the reference's
    save_embeddings(tmp_path / "foreign", {"joint": emb}, {"model_tag": "item:someoldversion"})
    with pytest.raises(DriftInputError, match=r"model version mismatch: .*'model_tag' is 'item:someoldversion'"):
        steps.drift_report_step(str(tmp_path / "foreign"), tag, home, str(tmp_path / "s"), {},
                                str(tmp_path / "r.html"), str(tmp_path / "s.json"))
    with pytest.raises(DriftInputError, match="is not in the BentoML store"):
        inputs.resolve_model("item:doesnotexist", home)
    # and through the command line, before any task starts
    from click.testing import CliRunner

    from pipelines.cli.monitor import monitor_cmd
    result = CliRunner().invoke(monitor_cmd, ["--current", str(other), "--model-tag", tag, "--bentoml-home", home,
                                              "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "field 'model_tag'" in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_monitoring_pipeline_compiles_with_nested_training():
    import tempfile

    import yaml
    from kfp import compiler

    from pipelines.monitoring import monitoring_pipeline

    with tempfile.TemporaryDirectory() as d:
        compiler.Compiler().compile(monitoring_pipeline, f"{d}/monitoring.yaml")
        spec = yaml.safe_load(Path(f"{d}/monitoring.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "item-monitoring"
    assert {"comp-embed-current", "comp-drift-report", "comp-recommend-retraining", "comp-item-training"} \
        <= set(spec["components"])
    drift_branch = spec["root"]["dag"]["tasks"]["condition-1"]
    assert "drift-report-Output" in json.dumps(drift_branch["triggerPolicy"])
    retrain_branch = spec["components"]["comp-condition-1"]["dag"]["tasks"]["condition-2"]
    assert "retrain" in json.dumps(retrain_branch["triggerPolicy"])
    nested = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert [t["componentRef"]["name"] for t in nested.values()] == ["comp-item-training"]


# ----------------------------------------------------------------------------------------------
# the monitoring pipeline for real, through kfp.local, by its command line

@pytest.fixture(scope="module")
def monitor_env(packaged_model, tmp_path_factory) -> dict:
    """A copy of the packaged champion's BentoML store (retraining packages into it) and one storage
    root for the pipeline runs (calibrations are shared between them)."""
    root = tmp_path_factory.mktemp("monitor")
    home = root / "bentoml"
    shutil.copytree(packaged_model["bentoml_home"], home)
    return {"root": root, "home": str(home), "tag": packaged_model["tag"], "storage": str(root / "storage")}


def run_monitor(env: dict, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    cmd = [sys.executable, "-m", "pipelines.cli.monitor", "--model-tag", env["tag"], "--bentoml-home", env["home"],
           "--storage-root", env["storage"], "--registry", str(out / "registry"), "--output-dir", str(out / "runs"),
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "BENTOML_HOME": env["home"]})
    summaries = list((out / "runs").glob("*/summary.json"))
    return proc, (json.loads(summaries[0].read_text()) if summaries else None)


@pytest.mark.e2e
def test_monitor_no_drift_skips_recommendation_and_retraining(monitor_env, slice_catalog, tmp_path):
    """The champion's own catalog: no drift, so neither branch runs although --retrain is asked."""
    proc, summary = run_monitor(monitor_env, tmp_path, "--current", str(slice_catalog), "--retrain",
                                "--profile", "tiny")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["branch"] == "no-drift" and summary["drift"]["drift"] is False
    assert summary["tasks_run"] == ["drift-report", "embed-current"]          # nothing under the dsl.If ran
    assert "ITEm embedding drift: no drift" in proc.stdout
    assert "Drift in embeddings 'joint'" in Path(summary["html_report"]).read_text()


@pytest.mark.e2e
def test_monitor_temporal_drift_recommends_and_retrains(monitor_env, tmp_path):
    """A new batch of 2016-2017 listings (with a few same-product groups) against the champion:
    drift, a recommendation, and (--retrain) the training pipeline nested in the monitoring
    pipeline, run on that batch, which packages a new model."""
    current = write_year_catalog(tmp_path / "catalog-2016-2017", (2016, 2017), 300, seed=1, n_groups=20)
    gate = tmp_path / "gate.yaml"
    gate.write_text(yaml.safe_dump({"criteria": [{"metric": "item.recall@10", "min": 0.0}]}))
    proc, summary = run_monitor(monitor_env, tmp_path, "--current", str(current), "--retrain", "--profile", "tiny",
                                "--gate-config", str(gate), "--fail-on-drift")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]          # --fail-on-drift
    assert summary["branch"] == "recommend+retrain" and summary["drift"]["drift"] is True
    assert {"embed-current", "drift-report", "recommend-retraining", "validate-catalog", "pretrain", "evaluate",
            "gate"} <= set(summary["tasks_run"])
    rec = summary["recommendation"]
    assert rec["recommend_retraining"] and rec["retrain_requested"] and rec["catalog"] == str(current)
    assert set(rec["drifted_modalities"]) <= set(MODALITIES) and rec["drifted_modalities"]
    assert "Retrain" in Path(summary["recommendation_md"]).read_text()
    assert summary["training"]["blessed"] is True
    assert {"embed-shard-0", "build-index", "package"} <= set(summary["training"]["tasks_run"])   # the loop too
    assert summary["training"]["bento_model"].startswith("item:")
    assert summary["training"]["bento_model"] != monitor_env["tag"]
    assert "ITEm embedding drift: DRIFT" in proc.stdout


@pytest.mark.e2e
def test_monitor_drift_without_retrain_only_recommends(monitor_env, tmp_path):
    """Drift (the 2016-2017 batch) without --retrain: the recommendation is written and the training
    pipeline is not run; exit 0 without --fail-on-drift."""
    current = write_year_catalog(tmp_path / "catalog-2016-2017", (2016, 2017), 300, seed=1, n_groups=20)
    proc, summary = run_monitor(monitor_env, tmp_path, "--current", str(current))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["branch"] == "recommend" and summary["drift"]["drift"] is True
    assert summary["tasks_run"] == ["drift-report", "embed-current", "recommend-retraining"]
    assert "training" not in summary and not (tmp_path / "registry").exists()
    rec = summary["recommendation"]
    assert rec["recommend_retraining"] is True and rec["retrain_requested"] is False
    assert "retraining recommended (not run; pass --retrain)" in proc.stdout
