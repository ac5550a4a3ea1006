"""The tables `item run` and `item gate show` print fit a narrow terminal without cutting a verdict."""

from __future__ import annotations

import pytest
from rich.console import Console

from pipelines.cli.tables import blessing_table, print_summary

ROWS = [
    {"criterion": "floor", "metric": "titles_disagree_recall@1", "value": 0.0261, "threshold": 0.9682,
     "comparison": ">=", "passed": False, "message": "titles_disagree_recall@1 0.0261 < 0.9682 (best of the "
     "baselines minus 0.01); the photo does not carry the match when the titles disagree",
     "bound": {"kind": "relative", "formula": "best_of(baseline_image_pixels) - 0.01"}},
    {"criterion": "slice-regression", "metric": "recall@1", "value": 0.9864, "threshold": 0.98, "comparison": ">=",
     "passed": True, "message": "no slice of at least 30 queries regressed", "reason": "slices " * 12},
    {"criterion": "ann-recall", "metric": "ann_recall@10", "value": None, "threshold": None, "comparison": ">=",
     "passed": False, "message": "missing: eval.json has no ann_recall@10"},
]


def _render(renderable, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_gate_table_fits_the_terminal_with_whole_verdicts(width):
    lines = _render(blessing_table({"blessed": False, "criteria": ROWS}, notes="all"), width)
    assert max(len(line) for line in lines) <= width
    body = [line for line in lines if line.startswith("│")]
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in body]
    verdicts = [row[4] for row in cells if row[4]]
    assert verdicts == ["FAIL", "pass", "FAIL"]                 # one whole verdict a criterion, none cut
    assert [row[2] for row in cells if row[2]] == ["0.0261", "0.9864", "missing"]
    assert "…" not in "\n".join(lines) and any("verdict" in line for line in lines)


def test_run_summary_fits_80_columns(tmp_path):
    models = {name: {"category_accuracy": 0.9696, "category_macro_f1": 0.8123, "recall@1": 0.9864,
                     "recall@10": 0.9991, "mAP": 0.9712} for name in
              ("item", "baseline_text_minilm", "baseline_image_pixels", "baseline_concat_text_pixels")}
    summary = {"eval": {"n_listings": 12000, "models": models}, "blessing": {"blessed": False, "criteria": ROWS},
               "wall_time_s": 870.0, "run_dir": str(tmp_path)}
    console = Console(width=80, record=True, color_system=None)
    print_summary(summary, console)
    lines = console.export_text().splitlines()
    table = [line for line in lines if line.startswith(("│", "┃", "┏", "└"))]
    assert table and max(len(line) for line in table) <= 80
    assert sum("0.9864" in line for line in table) >= 4 and "…" not in "\n".join(table)
