"""`item gate init` and the shipped gate file on a real eval.json: every name in the shipped file
resolves against what a real (tiny) run's evaluate step wrote, the name lists match that file,
and the generated file for a catalog loads, picks a slice column the catalog can be judged by
and refuses bad requests with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from components.promotion.gate import evaluate_gate, load_gate_config
from components.promotion.config import KNOWN_METRICS, KNOWN_MODELS
from components.steps.training import load_validated
from components.promotion.init_config import catalog_with_split, choose_slice_column
from components.catalog import read_catalog
from pipelines.config import CONFIG_DIR, GATE_FILE

ITEM = str(Path(sys.executable).parent / "item")


def test_the_shipped_gate_resolves_every_name_on_a_real_eval_json(packaged_model):
    result = json.loads(Path(packaged_model["eval_path"]).read_text())
    df, validation = load_validated(packaged_model["catalog_dir"])
    for model, metrics in result["models"].items():                  # the name lists match the evaluate step
        assert model in KNOWN_MODELS
        assert set(metrics) <= set(KNOWN_METRICS), set(metrics) - set(KNOWN_METRICS)
    for path in (GATE_FILE, CONFIG_DIR / "examples" / "gate_fashion_absolute.yaml"):
        cfg = load_gate_config(path)
        b = evaluate_gate(result, cfg, None, validation, df)
        floors = [r for r in b["criteria"] if r["criterion"] == "floor"]
        assert len(floors) == len(cfg["floors"])
        assert all(r["value"] is not None and r["threshold"] is not None for r in floors), floors
        missing = [r["message"] for r in b["criteria"] if "missing" in r["message"]]
        assert not missing, missing
        baselines = [r for r in b["criteria"] if r["criterion"] == "beats-baselines"]
        assert len(baselines) == 2 and all(r["threshold"] is not None for r in baselines)


def test_gate_init_writes_a_loadable_file_for_a_catalog(tmp_path, slice_catalog):
    out = tmp_path / "gate.yaml"
    proc = subprocess.run([ITEM, "gate", "init", "--catalog", str(slice_catalog), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_gate_config(out)
    shipped = yaml.safe_load(GATE_FILE.read_text())
    assert cfg["floors"] == shipped["floors"] and cfg["baselines"] == shipped["baselines"]
    df = catalog_with_split(read_catalog(slice_catalog))
    column, level, info = choose_slice_column(df, shipped["slices"]["min_queries"])
    assert cfg["slices"]["column"] == column and cfg["slices"].get("level") == level
    text = out.read_text()
    assert f"for the catalog {slice_catalog}" in text and f"({len(df)} listings" in text
    assert f"{info['judged']['category_accuracy']} for category accuracy" in text
    # refusals: an existing file, a column the catalog lacks
    again = subprocess.run([ITEM, "gate", "init", "--catalog", str(slice_catalog), "-o", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "exists; pass --force" in again.stderr
    bad = subprocess.run([ITEM, "gate", "init", "--catalog", str(slice_catalog), "-o", str(tmp_path / "g2.yaml"),
                          "--slice-column", "brand"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "slice column 'brand' is not in the validated catalog" in bad.stderr
    assert not (tmp_path / "g2.yaml").exists()
    notrun = subprocess.run([ITEM, "gate", "init", "--from-run", str(tmp_path), "-o", str(tmp_path / "g3.yaml")],
                            capture_output=True, text=True, timeout=300)
    assert notrun.returncode != 0 and "not a run folder" in notrun.stderr
