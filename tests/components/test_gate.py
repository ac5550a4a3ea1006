"""The promotion gate: floors, missing metrics, malformed configs, the blessing report."""

from __future__ import annotations

import json

import pytest

from components.promotion.gate import GateConfigError, blessing_markdown, evaluate_gate, load_gate_config
from components.steps.training import gate_step
from pipelines.config import GATE_FILE

EVAL = {"models": {"item": {"recall@1": 0.91, "recall@10": 0.99, "category_accuracy": 0.95,
                            "category_macro_f1": 0.7, "mAP": 0.9}}}


def test_default_gate_config_loads_with_reasons():
    cfg = load_gate_config(GATE_FILE)
    assert all(c.get("reason") for c in cfg["floors"])
    assert {"champion", "baselines", "validation"} <= set(cfg)


def test_all_floors_met_is_blessed():
    b = evaluate_gate(EVAL, {"criteria": [{"metric": "item.recall@1", "min": 0.9},
                                          {"metric": "item.category_accuracy", "min": 0.95}]})
    assert b["blessed"] is True
    assert [r["passed"] for r in b["criteria"]] == [True, True]
    assert b["criteria"][1]["value"] == 0.95 and b["criteria"][1]["threshold"] == 0.95


def test_one_floor_missed_is_not_blessed():
    b = evaluate_gate(EVAL, {"criteria": [{"metric": "item.recall@1", "min": 0.95},
                                          {"metric": "item.recall@10", "min": 0.5}]})
    assert b["blessed"] is False
    assert b["criteria"][0]["passed"] is False and "0.9100 < 0.9500" in b["criteria"][0]["message"]
    assert b["criteria"][1]["passed"] is True


def test_missing_metric_blocks_with_a_clear_message():
    b = evaluate_gate(EVAL, {"criteria": [{"metric": "item.ann_recall@10", "min": 0.1}]})
    assert b["blessed"] is False and "'item.ann_recall@10' is missing" in b["criteria"][0]["message"]


def test_unknown_metric_is_a_config_error_not_a_failed_row():
    with pytest.raises(GateConfigError, match="unknown metric 'recall@5'"):
        evaluate_gate(EVAL, {"criteria": [{"metric": "item.recall@5", "min": 0.1}]})


@pytest.mark.parametrize("cfg, match", [({}, "criteria"), ({"criteria": [{"min": 1}]}, "metric"),
                                        ({"criteria": [{"metric": "item.mAP"}]}, "min' or 'max")])
def test_malformed_config(cfg, match):
    with pytest.raises(GateConfigError, match=match):
        evaluate_gate(EVAL, cfg)


def test_gate_step_writes_json_and_markdown(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(EVAL))
    b = gate_step(str(tmp_path / "eval.json"), {"criteria": [{"metric": "item.mAP", "max": 0.5}]},
                  str(tmp_path / "blessing.json"), str(tmp_path / "report.md"))
    assert json.loads((tmp_path / "blessing.json").read_text())["blessed"] is False == b["blessed"]
    md = (tmp_path / "report.md").read_text()
    assert "NOT BLESSED" in md and "`item.mAP`" in md and "**FAIL**" in md
    blessed_md = blessing_markdown({"blessed": True, "criteria": []})
    assert "BLESSED" in blessed_md and "NOT BLESSED" not in blessed_md          # the exact verdict


FLOOR = [{"metric": "item.category_accuracy", "min": 0.0}]          # a gate needs a floor; this one always passes


def _rows(blessing: dict, criterion: str) -> list[dict]:
    return [r for r in blessing["criteria"] if r["criterion"] == criterion]


def _with_baselines(item_r1: float) -> dict:
    return {"models": {"item": {"recall@1": item_r1, "category_accuracy": 0.95},
                       "baseline_text_minilm": {"recall@1": 0.70, "category_accuracy": 0.96},
                       "baseline_image_pixels": {"recall@1": 0.93, "category_accuracy": 0.75}}}


@pytest.mark.parametrize("item_r1, margin, passed", [(0.935, 0.0, True), (0.935, 0.01, False), (0.929, 0.0, False),
                                                     (0.945, 0.01, True)])
def test_beats_baselines_takes_the_best_baseline_plus_margin(item_r1, margin, passed):
    b = evaluate_gate(_with_baselines(item_r1), {"floors": FLOOR,
                                                 "baselines": {"metrics": ["recall@1"], "margin": margin}})
    row = _rows(b, "beats-baselines")[0]
    assert row["criterion"] == "beats-baselines" and row["passed"] is passed and b["blessed"] is passed
    assert row["threshold"] == pytest.approx(0.93 + margin)                       # the best: pixels at 0.93
    assert "baseline_image_pixels" in (row["reason"] + row["message"])


def test_beats_baselines_fails_on_a_missing_baseline_metric():
    result = _with_baselines(0.99)
    del result["models"]["baseline_text_minilm"]["category_accuracy"]
    b = evaluate_gate(result, {"floors": FLOOR, "baselines": {"metrics": ["category_accuracy"]}})
    assert b["blessed"] is False and "baseline_text_minilm" in _rows(b, "beats-baselines")[0]["message"]


@pytest.mark.parametrize("validation, passed, message", [
    ({"n_read": 1000, "n_quarantined": 5}, True, "pass"),
    ({"n_read": 1000, "n_quarantined": 11}, False, "0.0110 of the rows were quarantined"),
    (None, False, "catalog.json) is missing"),
])
def test_data_validation_rule(validation, passed, message):
    b = evaluate_gate(EVAL, {"floors": FLOOR, "validation": {"max_quarantine_fraction": 0.01}}, validation=validation)
    row = _rows(b, "data-validation")[0]
    assert row["criterion"] == "data-validation" and row["passed"] is passed and message in row["message"]
