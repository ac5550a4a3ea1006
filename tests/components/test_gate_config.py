"""The gate file: relative floors resolved against the same run, and errors that name the file and
line for an unknown section, field, model, metric or bound type (components.promotion.config)."""

from __future__ import annotations

import textwrap

import pytest

from components.promotion.gate import GateConfigError, blessing_markdown, evaluate_gate, load_gate_config
from components.promotion.config import resolve_bound

EVAL = {"models": {"item": {"recall@1": 0.91, "recall@10": 0.97, "mAP": 0.88, "ann_recall@10": 0.95},
                   "baseline_text_minilm": {"recall@10": 0.96, "mAP": 0.70},
                   "baseline_image_pixels": {"recall@10": 0.98, "mAP": 0.75}}}


def test_relative_floor_resolves_to_the_best_named_metric_times_factor_minus_margin():
    t, info = resolve_bound({"best_of": ["baseline_text_minilm.mAP", "baseline_image_pixels.mAP"],
                             "times": 0.9, "minus": 0.01}, EVAL)
    assert t == pytest.approx(0.9 * 0.75 - 0.01)
    assert info["kind"] == "relative" and "baseline_image_pixels.mAP (0.7500)" in info["formula"]
    t, info = resolve_bound({"of": "item.recall@10", "minus": 0.01}, EVAL)
    assert t == pytest.approx(0.96) and info["formula"] == "item.recall@10 (0.9700) - 0.01"
    assert resolve_bound(0.5, EVAL) == (0.5, {"kind": "absolute", "formula": "0.5", "refs": {}, "missing": []})


def test_relative_floors_pass_and_fail_on_the_runs_own_numbers():
    cfg = {"floors": [
        {"metric": "item.recall@10", "min": {"best_of": ["baseline_text_minilm.recall@10",
                                                         "baseline_image_pixels.recall@10"], "minus": 0.01}},
        {"metric": "item.recall@10", "min": {"best_of": ["baseline_text_minilm.recall@10",
                                                         "baseline_image_pixels.recall@10"]}},
        {"metric": "item.ann_recall@10", "min": {"of": "item.recall@10", "minus": 0.01}}]}
    b = evaluate_gate(EVAL, cfg)
    assert [r["passed"] for r in b["criteria"]] == [True, False, False]
    assert b["criteria"][0]["threshold"] == pytest.approx(0.97)
    assert b["criteria"][1]["message"].startswith("0.9700 < 0.9800 (floor = best of")
    assert b["criteria"][2]["bound"] == {"kind": "relative", "formula": "item.recall@10 (0.9700) - 0.01"}
    report = blessing_markdown(b)
    assert "floor = best of baseline_text_minilm.recall@10 (0.9600), baseline_image_pixels.recall@10 (0.9800) - 0.01" in report


def test_relative_floor_naming_a_missing_baseline_fails_its_row_by_name():
    cfg = {"floors": [{"metric": "item.mAP", "min": {"of": "baseline_concat.mAP"}}]}
    b = evaluate_gate(EVAL, cfg)
    assert b["blessed"] is False and b["criteria"][0]["threshold"] is None
    assert "baseline_concat.mAP missing from eval.json" in b["criteria"][0]["message"]


BAD_FILES = [
    ("floors:\n  - metric: item.recall@1\n    min: 0.9\nchampionn:\n  tolerance: 0.01\n", 4, "unknown section"),
    ("floors:\n  - metric: item.recall@1\n    min: 0.9\n  - metric: item.recal@10\n    min: 0.5\n", 4,
     "unknown metric 'recal@10'"),
    ("floors:\n  - metric: itm.recall@1\n    min: 0.9\n", 2, "unknown model 'itm'"),
    ("floors:\n  - metric: item.recall@1\n    min: '0.9'\n", 3, "a bound is a number or a mapping"),
    ("floors:\n  - metric: item.recall@1\n    above: 0.9\n", 3, "unknown field(s) ['above']"),
    ("floors:\n  - metric: item.mAP\n    min:\n      of: baseline_text_minilm.mAP\n      plus: 0.01\n", 5,
     "unknown field(s) ['plus']"),
    ("floors:\n  - metric: item.mAP\n    min:\n      best_of: [baseline_text_minilm.mAP, baseline_foo.mAP]\n", 4,
     "unknown model 'baseline_foo'"),
    ("floors:\n  - metric: item.mAP\n    min: 0.5\nslices:\n  column: brand\n", 5, "slices.column must be one of"),
    ("floors:\n  - metric: item.mAP\n    min: 0.5\nslices:\n  column: category\n  metrics: [category_macro_f1]\n",
     6, "unknown metric 'category_macro_f1'"),
    ("floors:\n  - metric: item.mAP\n    min: 0.5\nchampion:\n  metrics: [mAP]\n  confidence: 2\n", 6,
     "champion.confidence must be a number in"),
]


@pytest.mark.parametrize("text, line, match", BAD_FILES)
def test_a_bad_gate_file_names_the_file_and_line(tmp_path, text, line, match):
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    with pytest.raises(GateConfigError) as err:
        load_gate_config(path)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert match in str(err.value)


def test_kfp_float_integers_are_accepted_and_fractions_are_not():
    cfg = {"floors": [{"metric": "item.mAP", "min": 0.5}], "champion": {"bootstrap_resamples": 1000.0}}
    evaluate_gate(EVAL, cfg)                     # kfp.local hands dict numbers back as floats
    cfg["champion"]["bootstrap_resamples"] = 1000.5
    with pytest.raises(GateConfigError, match="bootstrap_resamples must be an integer"):
        evaluate_gate(EVAL, cfg)


def test_a_good_file_with_comments_loads(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text(textwrap.dedent("""\
        # comment
        floors:
          - metric: item.recall@10
            min: {best_of: [baseline_text_minilm.recall@10, baseline_image_pixels.recall@10], times: 0.95}
        slices: {column: category_path, level: 1}
        """))
    assert load_gate_config(path)["slices"]["level"] == 1
    path.write_text("floors:\n  - metric: item.mAP\n    min: 0.5\nslices:\n  column: masterCategory\n")
    assert load_gate_config(path)["slices"]["column"] == "masterCategory"
