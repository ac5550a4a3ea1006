"""The training pipeline end to end: compiled to KFP IR, and run for real through kfp.local
(SubprocessRunner, no per-task installs) by the `item` CLI on a real slice of the catalog with a
tiny model, once blessed and once not; bad catalogs stop the run before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from pipelines.cli.compile import compile_pipeline
from tests.conftest import write_slice

ITEM = str(Path(sys.executable).parent / "item")


def run_item(tmp: Path, catalog: Path, *extra: str, gate: dict | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    gate_file = tmp / "gate.yaml"
    gate_file.write_text(yaml.safe_dump(gate or {"criteria": [{"metric": "item.recall@10", "min": 0.0}]}))
    env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml")}
    proc = subprocess.run([ITEM, "run", "--catalog", str(catalog), "--profile", "tiny", "--gate-config", str(gate_file),
                           "--output-dir", str(tmp / "runs"), "--bentoml-home", str(tmp / "bentoml"),
                           "--registry", str(tmp / "registry"), *extra],
                          capture_output=True, text=True, env=env, timeout=900)
    summaries = list((tmp / "runs").glob("*/summary.json"))
    return proc, (json.loads(summaries[0].read_text()) if summaries else None)


def folders_of(summary: dict) -> dict[str, Path]:
    """``{task: output folder}`` of a run's training pipeline."""
    from pipelines.cli.runs import task_folders
    return task_folders(next(Path(summary["run_dir"]).glob("item-training-*")))


def bento_models(home: Path) -> list[str]:
    models = home / "models"
    return sorted(str(p.relative_to(models)) for p in models.glob("*/*") if p.is_dir()) if models.exists() else []


def test_compile_to_ir_yaml(tmp_path):
    path = compile_pipeline(tmp_path / "training.yaml")
    spec = yaml.safe_load(path.read_text())
    assert spec["pipelineInfo"]["name"] == "item-training"
    assert {"comp-validate-catalog", "comp-pretrain", "comp-evaluate", "comp-gate", "comp-register-model",
            "comp-package"} <= set(spec["components"])
    tasks = spec["root"]["dag"]["tasks"]
    assert "condition-1" in tasks and "gate-Output" in json.dumps(tasks["condition-1"]["triggerPolicy"])
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["max_listings"]["defaultValue"] == 12000                     # from the default profile
    assert defaults["gate_config"]["defaultValue"]["floors"][0]["metric"].startswith("item.")


@pytest.mark.e2e
def test_run_blessed_packages_into_bentoml(tmp_path, slice_catalog):
    proc, summary = run_item(tmp_path, slice_catalog, "--set", "modality_ablation=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["blessing"]["blessed"] is True
    assert "package" in summary["tasks_run"]                                      # the dsl.If branch ran
    # packaged, served on loopback and checked against the in-process model, then promoted (last)
    assert {"serving-check", "promote"} <= set(summary["tasks_run"]) and summary["promoted"] is True
    check = summary["serving_check"]
    assert check["passed"] is True and max(check["max_abs_diff"].values()) <= 1e-5
    assert {"embed joint", "embed title-only", "embed photo-only", "similar by product_id"} <= set(check["latency_ms"])
    assert "serving check     passed" in proc.stdout or "serving check    passed" in proc.stdout
    tag = summary["bento_model"]
    assert tag and tag.startswith("item:")
    assert bento_models(tmp_path / "bentoml") == [tag.replace(":", "/")]
    stored = tmp_path / "bentoml" / "models" / "item" / tag.split(":")[1]
    meta = yaml.safe_load((stored / "model.yaml").read_text())
    assert meta["labels"]["blessed"] == "true" and len(meta["metadata"]["catalog_fingerprint"]) == 64
    assert (stored / "model.safetensors").exists() and (stored / "blessing.json").exists()
    # the profiles' read-out travels with the model: title by mean pooling, w chosen on validation
    stored_config = json.loads((stored / "config.json").read_text())
    assert stored_config["text_pooling"] == "mean"
    assert summary["eval"]["checks"]["readout"]["text_pooling"] == "mean"
    assert stored_config["readout_text_weight"] == summary["eval"]["checks"]["readout"]["readout_text_weight"]
    from components.index.layout import load_catalog_index
    listings, embeddings, index_meta = load_catalog_index(stored / "catalog_index")
    # the index covers the whole catalog (the index pipeline's tasks, one per shard), not the tiny
    # profile's 400-listing training sample
    import pyarrow.parquet as pq
    n_catalog = sum(pq.read_metadata(f).num_rows for f in (slice_catalog / "data").glob("*.parquet"))
    assert len(listings) == n_catalog == embeddings["joint"].shape[0] > summary["catalog"]["n_valid"] == 400
    assert set(embeddings) == {"joint", "text", "image"}
    # the served index carries the filter columns and the lexical (BM25) index of its titles (issue 33)
    assert {"category", "category_path", "gender", "colour", "season", "year", "usage"} <= set(listings.columns)
    assert listings["gender"].notna().all() and (stored / "catalog_index" / "lexical" / "lexical.json").is_file()
    np.testing.assert_allclose(np.linalg.norm(embeddings["joint"], axis=1), 1.0, atol=1e-5)
    assert index_meta["model_version"] == meta["metadata"]["registry_version"] == summary["registry_version"]
    assert {"embed-shard-0", "embed-shard-1", "build-index"} <= set(summary["tasks_run"])
    # the evaluation keeps the ITEm vectors it scored (its 400 listings), the same vectors the index holds:
    # the index steps took them from the evaluation instead of embedding those listings again (issue 32)
    with np.load(Path(summary["eval_json"]).parent / "item_embeddings", allow_pickle=False) as z:
        scored = {k: z[k] for k in z.files}
    assert set(scored) == {"product_id", "item", "item_text_only", "item_image_only", "content_hash", "model_digest"}
    assert len(scored["product_id"]) == scored["item"].shape[0] == summary["catalog"]["n_valid"]
    row_of = {str(p): i for i, p in enumerate(listings["product_id"])}
    rows = [row_of[p] for p in scored["product_id"]]
    for name, kind in (("item", "joint"), ("item_text_only", "text"), ("item_image_only", "image")):
        np.testing.assert_allclose(scored[name], embeddings[kind][rows], atol=1e-4)
    shard_counts = [json.loads((folders_of(summary)[f"embed-shard-{i}"] / "executor_output.json").read_text())
                    ["parameterValues"]["Output"] for i in (0, 1)]
    assert sum(c["reused_from_evaluation"] for c in shard_counts) == summary["catalog"]["n_valid"], shard_counts
    assert sum(c["embedded"] for c in shard_counts) == n_catalog
    assert 0.0 <= meta["metadata"]["recall@1"] <= 1.0
    # artifacts of every step
    for key in ("data_docs", "quarantine", "eval_json", "gate_report", "training_curve"):
        assert Path(summary[key]).exists(), key
    assert "<html" in Path(summary["data_docs"]).read_text().lower()
    assert (Path(summary["model_dir"]) / "model.safetensors").exists()
    assert Path(summary["training_curve"]).read_bytes()[:4] == b"\x89PNG"
    models = summary["eval"]["models"]
    assert {"item", "baseline_text_minilm", "baseline_image_pixels", "baseline_concat"} <= set(models)
    for name, m in models.items():
        for key in ("category_accuracy", "category_macro_f1", "recall@1", "recall@10", "mAP"):
            assert 0.0 <= m[key] <= 1.0, (name, key, m[key])
    assert models["item"]["n_queries"] == summary["catalog"]["n_group_members"] > 50
    assert models["baseline_image_pixels"]["recall@10"] > 0.5                      # real photos, real groups
    assert "ITEm vs baselines" in proc.stdout and "Promotion gate: BLESSED" in proc.stdout
    # the quiet terminal (pipelines/cli/runs.py): one line per task, each task's output in its log.txt
    assert "executor_input" not in proc.stdout and "Streamed logs" not in proc.stdout
    run = Path(summary["run_dir"])
    task_lines = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("  ") and len(ln.split()) >= 3]
    assert [t[0] for t in task_lines if t[1] == "ok"] == [t["task"] for t in json.loads((run / "tasks.json").read_text())]
    assert {"validate-catalog", "pretrain", "evaluate", "gate", "register-model", "package"} <= {t[0] for t in task_lines}
    from pipelines.cli.runs import task_folders
    folders = task_folders(next(run.glob("item-training-*")))       # loop iterations: embed-shard-0, ...
    for task in summary["tasks_run"]:
        assert "[KFP Executor" in (folders[task] / "log.txt").read_text(), task
    order = [t["task"] for t in json.loads((run / "tasks.json").read_text())]
    assert max(order.index("embed-shard-0"), order.index("embed-shard-1")) < order.index("build-index") \
        < order.index("package") < order.index("serving-check")
    assert any("R@1" in " ".join(t) for t in task_lines if t[0] == "evaluate")
    # registered and promoted: the registry's champion is this run's version, with its gate report
    from components.registry import ModelRegistry
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.champion()["version"] == summary["registry_version"] == meta["metadata"]["registry_version"]
    assert (registry.version_path(summary["registry_version"]) / "gate_report.html").exists()
    assert Path(summary["gate_report_html"]).read_text().startswith("<!doctype html>")


@pytest.mark.e2e
def test_failed_serving_check_blocks_promotion(tmp_path, slice_catalog):
    """A blessed model whose serving check fails (a latency bound no server meets) is packaged but
    not promoted: no champion, and the registry's history says why."""
    gate = {"criteria": [{"metric": "item.recall@10", "min": 0.0}], "serving_check": {"max_latency_ms": 0.001}}
    proc, summary = run_item(tmp_path, slice_catalog, gate=gate)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["blessing"]["blessed"] is True and summary["bento_model"]
    assert "serving-check" in summary["tasks_run"] and "promote" not in summary["tasks_run"]
    assert summary["serving_check"]["passed"] is False and "> max_latency_ms 0" in summary["serving_check"]["reason"]
    assert summary["promoted"] is False and "unchanged (not promoted)" in proc.stdout
    from components.registry import ModelRegistry
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.champion() is None
    last = registry.history()[-1]
    assert (last["action"], last["version"], last["gate"]) == ("blocked", summary["registry_version"], "serving check")
    assert last["reason"].startswith("serving check failed: ")


@pytest.mark.e2e
def test_run_not_blessed_skips_package(tmp_path, slice_catalog):
    gate = {"criteria": [{"metric": "item.recall@1", "min": 1.01, "reason": "impossible floor"}]}
    proc, summary = run_item(tmp_path, slice_catalog, gate=gate)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["blessing"]["blessed"] is False
    assert "package" not in summary["tasks_run"] and "gate" in summary["tasks_run"]
    assert summary["bento_model"] is None and bento_models(tmp_path / "bentoml") == []
    assert "NOT BLESSED" in Path(summary["gate_report"]).read_text()
    from components.registry import ModelRegistry
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.champion() is None and registry.versions() == [summary["registry_version"]]
    assert registry.history()[-1]["action"] == "blocked"


@pytest.mark.e2e
def test_run_resume_through_the_cli_continues_from_the_checkpoint(tmp_path, slice_catalog):
    """`item run --resume`: the second run's pre-training starts from the first run's step-4 checkpoint
    (same settings, same checkpoint root) and ends with the same weights, bit for bit."""
    from safetensors.torch import load_file
    gate = {"criteria": [{"metric": "item.recall@1", "min": 1.01, "reason": "skip packaging"}]}
    common = ("--checkpoint-root", str(tmp_path / "ckpt"), "--set", "train_config.checkpoint_every=4",
              "--set", "train_config.num_threads=1")
    runs = {}
    for name, extra in (("first", ()), ("resumed", ("--resume",))):
        (tmp_path / name).mkdir()
        proc, summary = run_item(tmp_path / name, slice_catalog, *common, *extra, gate=gate)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = summary
    logs = {name: next(Path(s["run_dir"]).glob("item-training-*/pretrain/log.txt")).read_text()
            for name, s in runs.items()}
    assert "resuming from" not in logs["first"]
    assert "resuming from" in logs["resumed"] and "ckpt-00000004.pt (step 4)" in logs["resumed"]
    a, b = (load_file(Path(runs[n]["model_dir"]) / "model.safetensors") for n in ("first", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _duplicate_ids(t: pa.Table) -> pa.Table:
    return pa.concat_tables([t, t.slice(0, 3)])


def _break_images(t: pa.Table) -> pa.Table:
    images = t.column("image").to_pylist()
    for i in range(0, len(images), 10):                       # 10 % of the rows
        images[i] = {"bytes": b"\xff\xd8 not a jpeg", "path": images[i]["path"]}
    return t.set_column(t.schema.get_field_index("image"), "image", pa.array(images, type=t.schema.field("image").type))


def _unreadable_shard(dest: Path) -> None:
    (dest / "data" / "train-00001-of-00002.parquet").write_bytes(b"not parquet at all")


@pytest.mark.parametrize("case, mutate, after, expect", [
    ("missing-folder", None, None, "does not exist"),
    ("unreadable-shard", None, _unreadable_shard, "train-00001-of-00002.parquet"),
    ("missing-column", lambda t: t.drop(["articleType"]), None, "articleType"),
    ("duplicate-ids", _duplicate_ids, None, "expect_column_values_to_be_unique"),
    ("broken-images", _break_images, None, "image"),
])
def test_bad_catalog_stops_before_training(tmp_path, case, mutate, after, expect):
    catalog = tmp_path / "catalog"
    if case != "missing-folder":
        write_slice(catalog, n_plain=120, n_groups=10, mutate=mutate)
        if after:
            after(catalog)
    proc, _ = run_item(tmp_path, catalog, "--set", "max_listings=0")
    out = proc.stdout + proc.stderr
    # a refused run: click's "Error: ..." and exit code 1 (RunFailed), not a crash (also 1, no "Error:")
    # nor a usage error (2)
    assert proc.returncode == 1 and "Error: " in proc.stderr, (proc.returncode, out[-3000:])
    assert expect in out, out[-3000:]
    assert not list((tmp_path / "runs").glob("*/*/pretrain")), "training must not start"
    assert bento_models(tmp_path / "bentoml") == [] and not (tmp_path / "registry" / "versions").exists()
    if case == "duplicate-ids":
        assert "pipeline stopped: validate_step" in out
        assert "last lines of" in out and "validate-catalog/log.txt" in out      # the failing task's log tail
    if case == "broken-images":
        assert "expect_column_values_to_be_in_set" in out or "image_decodes" in out


def test_verbose_streams_kfp_local_output(tmp_path):
    """``item run --verbose`` restores kfp.local's own stream (executor input, every task's lines)."""
    catalog = tmp_path / "catalog"
    write_slice(catalog, n_plain=120, n_groups=10, mutate=_duplicate_ids)
    proc, _ = run_item(tmp_path, catalog, "--set", "max_listings=0", "--verbose")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Error: " in proc.stderr and "pipeline stopped: validate_step" in out
    assert "Streamed logs" in out and "[KFP Executor" in out
    assert "last lines of" not in out                       # the log tail is the quiet mode's


def test_item_validate_alone(tmp_path, slice_catalog):
    """`item validate`: the pipeline's first step alone, the same verdict and exit codes, no training."""
    env = {**os.environ}
    ok = subprocess.run([ITEM, "validate", "--catalog", str(slice_catalog), "--set", "max_listings=0",
                         "--output-dir", str(tmp_path / "ok")], capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "valid " in ok.stdout and "quarantined" in ok.stdout
    report = next((tmp_path / "ok").glob("*-validate"))
    assert (report / "validated_catalog" / "catalog.parquet").exists() and (report / "quarantine.parquet").exists()
    bad = tmp_path / "bad"
    write_slice(bad, n_plain=120, n_groups=10, mutate=_duplicate_ids)
    stopped = subprocess.run([ITEM, "validate", "--catalog", str(bad), "--set", "max_listings=0",
                              "--output-dir", str(tmp_path / "bad-out")], capture_output=True, text=True, env=env,
                             timeout=600)
    assert stopped.returncode == 1
    assert "expect_column_values_to_be_unique" in stopped.stdout + stopped.stderr
    assert not list((tmp_path / "bad-out").glob("*/validated_catalog/catalog.parquet"))    # nothing half-written
