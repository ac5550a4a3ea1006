"""Collect whole-catalog runs of several seeds (``item run --profile full --set train_config.seed=S``) into
committed result files: per seed, ``eval.json``, ``blessing.json``, the training curve and the paired
bootstrap of the served vector against each baseline; across seeds, the mean ± sd of every headline
metric (docs/results.md).

    .venv/bin/python benchmarks/full_profile_seeds.py --run SEED=RUN_DIR [--run ...] --out benchmarks/results \
        [--name full_profile_3seeds_2026-12-03]

RUN_DIR is an ``item run`` output folder (``runs/<run id>``); a seed already collected can be given as
``SEED=benchmarks/results/<its folder>`` (a folder holding ``eval.json`` and
``bootstrap_item_vs_baselines.json``). Prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.promotion.bootstrap import load_details, paired_bootstrap  # noqa: E402

COLUMNS = ["category_accuracy", "category_macro_f1", "recall@1", "recall@10", "mAP", "title_decides_recall@1"]
BASELINES = ("baseline_concat", "baseline_text_minilm", "baseline_image_pixels")
METRICS = ("recall@1", "mAP", "category_accuracy", "category_macro_f1")


def collect(run_dir: Path, out: Path) -> Path:
    """Copy one run's results into ``out`` and write its paired bootstrap; returns ``out``."""
    if (run_dir / "eval.json").is_file():                     # already collected
        return run_dir
    pipeline_run = next(run_dir.glob("item-training-*"))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(pipeline_run / "evaluate" / "eval_json", out / "eval.json")
    shutil.copy(pipeline_run / "gate" / "blessing", out / "blessing.json")
    for name in ("training_curve.json", "training_curve.png"):
        shutil.copy(pipeline_run / "pretrain" / "model" / name, out / name)
    details = load_details(pipeline_run / "evaluate" / "eval_details")
    boot = {f"{b}/{m}": paired_bootstrap(details["item"], details[b], m) for b in BASELINES for m in METRICS}
    (out / "bootstrap_item_vs_baselines.json").write_text(json.dumps(boot, indent=2, default=float) + "\n")
    return out


def _flat(boot: dict) -> dict:
    """``{"baseline/metric": result}``; the first seed's file nests ``{baseline: {metric: result}}``."""
    out = {}
    for key, value in boot.items():
        if "/" in key:
            out[key] = value
        else:
            out.update({f"{key}/{metric}": r for metric, r in value.items() if metric in METRICS})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="SEED=DIR")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default="full_profile_seeds")
    args = ap.parse_args(argv)
    folders = {}
    for item in args.run:
        seed, _, path = item.partition("=")
        folders[int(seed)] = collect(Path(path), Path(args.out) / f"{args.name}_seed{seed}")
    evals = {s: json.loads((f / "eval.json").read_text()) for s, f in sorted(folders.items())}
    boots = {s: _flat(json.loads((f / "bootstrap_item_vs_baselines.json").read_text())) for s, f in sorted(folders.items())}
    first = next(iter(evals.values()))
    summary: dict = {}
    print("| embedding | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name in first["models"]:
        cells = []
        for c in COLUMNS:
            v = [e["models"].get(name, {}).get(c, float("nan")) for e in evals.values()]
            sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
            summary.setdefault(name, {})[c] = {"seeds": v, "mean": float(np.mean(v)), "sd": sd}
            cells.append(f"{np.mean(v):.4f} ± {sd:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for key in sorted(set.intersection(*(set(b) for b in boots.values()))):
        print(key, [(s, round(b[key]["delta"], 4), round(b[key]["ci_low"], 4), round(b[key]["ci_high"], 4))
                    for s, b in boots.items()])
    result = {"seeds": sorted(folders), "folders": {s: str(f) for s, f in folders.items()}, "metrics": summary,
              "bootstrap": boots}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


if __name__ == "__main__":
    main()
