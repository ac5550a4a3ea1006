"""Sliced gate criteria (components.promotion.slices) on real per-item outcomes: a tiny ITEm run
on a real slice of the catalog, registered and promoted, then re-evaluated by the real evaluate
step as the champion beside itself as the challenger. A challenger that regresses one leaf
category is built from those outcomes by turning that category's correct probe predictions into
errors (see the closing note of issue 31 for why not by retraining)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from components.steps import training as steps
from components.promotion.gate import blessing_markdown, evaluate_gate
from components.promotion.report import render_gate_report
from components.promotion.slices import slice_labels
from components.registry import ModelRegistry
from components.promotion.bootstrap import load_details

FLOOR = {"metric": "item.recall@10", "min": 0.0}
SLICES = {"column": "category", "metrics": ["recall@1", "category_accuracy"], "min_queries": 5,
          "tolerance": 0.02, "confidence": 0.99, "bootstrap_resamples": 500}


@pytest.fixture(scope="module")
def with_champion(packaged_model, tmp_path_factory) -> dict:
    """eval.json, details and the validated catalog of a real evaluate step that re-scored a registered champion."""
    root = tmp_path_factory.mktemp("slices")
    registry = ModelRegistry(str(root / "registry"))
    version = registry.register(packaged_model["model_dir"], {"eval.json": packaged_model["eval_path"]},
                                {"blessed": True})
    registry.promote(version, gate="test", automatic=True, reason="champion for the slice tests")
    steps.evaluate_step(packaged_model["catalog_dir"], packaged_model["model_dir"], str(root / "eval.json"),
                        modality_ablation=False, progress=False, details_path=str(root / "details.npz"),
                        registry_root=str(root / "registry"))
    df, meta = steps.load_validated(packaged_model["catalog_dir"])
    return {"eval": json.loads((root / "eval.json").read_text()), "details": load_details(root / "details.npz"),
            "df": df, "validation": meta}


def regress_one_category(details: dict, df) -> tuple[dict, str]:
    """The challenger's outcomes with the category the champion gets most right turned wrong there,
    and as many wrong predictions elsewhere turned right (so the average hardly moves)."""
    out = copy.deepcopy(details)
    probe = out["item"]["probe"]
    right = probe["y_true"] == probe["y_pred"]
    cats, counts = np.unique(probe["y_true"][right], return_counts=True)
    target = str(cats[np.argmax(counts)])
    hit = right & (probe["y_true"] == target)
    other = next(c for c in np.unique(probe["y_true"]) if c != target)
    probe["y_pred"] = probe["y_pred"].copy()
    probe["y_pred"][hit] = other
    fixable = np.flatnonzero(~right & (probe["y_true"] != target))[: int(hit.sum())]
    probe["y_pred"][fixable] = probe["y_true"][fixable]
    return out, target


def test_real_champion_rescored_beside_itself_passes_every_slice(with_champion):
    d = with_champion
    assert "champion" in d["eval"]["models"] and "champion" in d["details"]
    b = evaluate_gate(d["eval"], {"floors": [FLOOR], "slices": SLICES}, d["details"], d["validation"], d["df"])
    rows = [r for r in b["criteria"] if r["criterion"] == "slice-regression"]
    assert [r["metric"] for r in rows] == ["item.recall@1@category", "item.category_accuracy@category"]
    assert all(r["passed"] for r in rows) and b["blessed"] is True
    judged = [s for s in b["slices"]["by_metric"]["category_accuracy"] if s["judged"]]
    assert judged and all(s["delta"] == 0.0 and s["n"] >= 5 for s in judged)
    assert sum(s["n"] for s in b["slices"]["by_metric"]["category_accuracy"]) == len(d["details"]["item"]["probe"]["y_true"])


def test_a_challenger_that_loses_one_category_is_refused_and_that_slice_is_shown_first(with_champion):
    d = with_champion
    details, target = regress_one_category(d["details"], d["df"])
    b = evaluate_gate(d["eval"], {"floors": [FLOOR], "slices": SLICES}, details, d["validation"], d["df"])
    row = next(r for r in b["criteria"] if r["metric"] == "item.category_accuracy@category")
    assert row["passed"] is False and row["regressed_slices"] == [target]
    assert f"category={target}" in row["message"] and b["blessed"] is False
    recall_row = next(r for r in b["criteria"] if r["metric"] == "item.recall@1@category")
    assert recall_row["passed"] is True                                  # search outcomes untouched
    first = b["slices"]["by_metric"]["category_accuracy"][0]
    assert first["slice"] == target and first["regressed"] and first["ci_high"] < 0
    md = blessing_markdown(b)
    table = md[md.index("## Worst slices"):].splitlines()
    first_row = next(line for line in table if line.startswith("| category_accuracy |"))
    assert f"| {target} |" in first_row and "**REGRESSED**" in first_row
    page = render_gate_report(b, d["eval"], details, d["df"])
    section = page[page.index("<h2>Worst slices</h2>"):page.index("<h2>Metrics")]
    accuracy = section[section.index("<h3>category_accuracy"):]
    assert accuracy.index(f"<td>{target}</td>") < accuracy.index("</table>")
    assert accuracy.split("<tr", 2)[2].startswith(' class="fail"><td>' + target)   # first data row
    assert "where the challenger fails and the champion does not" in accuracy and "data:image/jpeg" in accuracy


def test_no_champion_passes_with_a_note_and_missing_inputs_fail_by_name(with_champion):
    d = with_champion
    no_champion = {**d["eval"], "models": {k: v for k, v in d["eval"]["models"].items() if k != "champion"}}
    b = evaluate_gate(no_champion, {"floors": [FLOOR], "slices": SLICES}, d["details"], None, d["df"])
    assert all(r["passed"] and "no champion yet" in r["message"] for r in b["criteria"][1:])
    b = evaluate_gate(d["eval"], {"floors": [FLOOR], "slices": SLICES}, None, None, d["df"])
    assert not b["blessed"] and "eval_details.npz) are missing" in b["criteria"][1]["message"]
    b = evaluate_gate(d["eval"], {"floors": [FLOOR], "slices": {**SLICES, "column": "usage"}}, d["details"], None,
                      d["df"].drop(columns=["usage"]))
    assert not b["blessed"] and "slice column 'usage' is not in the validated catalog" in b["criteria"][1]["message"]
    b = evaluate_gate(d["eval"], {"floors": [FLOOR], "slices": {**SLICES, "min_queries": 100000}}, d["details"],
                      None, d["df"])
    assert b["blessed"] and all("not judged" in r["message"] for r in b["criteria"][1:])


def test_category_path_levels_and_missing_values(with_champion):
    df = with_champion["df"]
    master = slice_labels(df, "category_path", 1)
    assert list(slice_labels(df, "masterCategory")) == list(master)          # the source layout's name
    assert set(master) <= {"Accessories", "Apparel", "Footwear", "Personal Care", "Free Items", "Home",
                           "Sporting Goods", "(missing)"} and len(set(master)) >= 2
    assert list(slice_labels(df, "category")) == [str(c) for c in df["category"]]
    df2 = df.assign(colour=[None] + list(df["colour"].iloc[1:]))
    assert slice_labels(df2, "colour")[0] == "(missing)"
