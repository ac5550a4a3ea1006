"""The promotion gate: floors, missing metrics, malformed configs, the blessing report."""

from __future__ import annotations

import json

import pytest

from item_model.lifecycle.gate import GateConfigError, blessing_markdown, evaluate_gate, load_gate_config
from item_model.lifecycle.steps import gate_step
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
    b = evaluate_gate(EVAL, {"criteria": [{"metric": "item.recall@5", "min": 0.1}]})
    assert b["blessed"] is False and "'item.recall@5' is missing" in b["criteria"][0]["message"]


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
