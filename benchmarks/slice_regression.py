"""Does corrupting one category's training listings make a challenger that the slice criterion
refuses? (issue 31). On the Accessories listings of the shared catalog (1,500 drawn + every
same-product group member), the default profile's model at 100 steps is trained twice: once on the
clean catalog (the champion) and once with one leaf category's train-split listings given the
titles and photos of another category (the model never sees that category during pre-training). The
challenger is then evaluated on the clean catalog beside the registered champion, and the shipped
gate (pipelines/configs/gate.yaml, slices by leaf category) judges it.

    .venv/bin/python benchmarks/slice_regression.py [--category Watches] [--like Handbags] [--steps 100]

Prints and writes benchmarks/results/slice_regression_<date>.json: both models' metrics, the slice
comparison of the corrupted category and the gate's verdict.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from item_model.io import write_json_atomic
from components.steps import training as steps
from components.promotion.gate import load_gate_config
from components.registry import ModelRegistry
from pipelines.config import GATE_FILE, load_profile
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                       # the tests' catalog-subset writer
from tests.conftest import write_subset  # noqa: E402


def corrupt(catalog_dir: Path, out_dir: Path, category: str, like: str) -> int:
    """A copy of a validated catalog whose train-split ``category`` rows carry the titles and photos
    of train-split ``like`` rows (cycled). Returns the number of rows changed."""
    shutil.copytree(catalog_dir, out_dir)
    df, _ = steps.load_validated(str(catalog_dir))
    target = np.flatnonzero((df["category"] == category).to_numpy() & (df["split"] == "train").to_numpy())
    source = np.flatnonzero((df["category"] == like).to_numpy() & (df["split"] == "train").to_numpy())
    if len(target) == 0 or len(source) == 0:
        raise SystemExit(f"no train-split rows of {category!r} or {like!r}")
    donors = source[np.arange(len(target)) % len(source)]
    for col in ("title", "image_bytes"):
        values = df[col].to_numpy(dtype=object).copy()
        values[target] = df[col].to_numpy(dtype=object)[donors]
        df[col] = values
    from components.storage.layout import CATALOG_FILE
    pd.DataFrame(df).to_parquet(out_dir / CATALOG_FILE, index=False)
    return len(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", default="Watches")
    ap.add_argument("--like", default="Handbags")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / f"benchmarks/results/slice_regression_{date.today()}.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slice-regression-"))
    profile = load_profile("default")
    train = {**profile["train_config"], "steps": args.steps, "checkpoint_every": 0}
    catalog = write_subset(work / "accessories", "masterCategory", "Accessories", 1500)
    clean = work / "clean"
    steps.validate_step(str(catalog), str(clean), str(work / "q.parquet"), str(work / "v.json"), str(work / "docs"))
    n = corrupt(clean, work / "corrupted", args.category, args.like)
    print(f"{n} train-split {args.category} listings given {args.like} titles and photos")
    t0 = time.perf_counter()
    steps.pretrain_step(str(clean), str(work / "champion"), profile["model_config"], train, progress=False)
    steps.pretrain_step(str(work / "corrupted"), str(work / "challenger"), profile["model_config"], train,
                        progress=False)
    registry = ModelRegistry(str(work / "registry"))
    version = registry.register(str(work / "champion"), {}, {"blessed": True})
    registry.promote(version, gate="benchmark", automatic=True, reason="clean-trained champion")
    result = steps.evaluate_step(str(clean), str(work / "challenger"), str(work / "eval.json"), modality_ablation=False,
                                 progress=False, details_path=str(work / "details.npz"),
                                 registry_root=str(work / "registry"))
    blessing = steps.gate_step(str(work / "eval.json"), load_gate_config(GATE_FILE), str(work / "blessing.json"),
                               str(work / "report.md"), str(work / "details.npz"), str(clean),
                               str(work / "report.html"))
    slices = blessing.get("slices", {}).get("by_metric", {})
    target = {m: next((r for r in comp if r["slice"] == args.category), None) for m, comp in slices.items()}
    out = {"category": args.category, "like": args.like, "steps": args.steps, "n_corrupted_train_rows": n,
           "wall_time_s": round(time.perf_counter() - t0, 1),
           "models": {m: {k: result["models"][m][k] for k in ("recall@1", "mAP", "category_accuracy")}
                      for m in ("item", "champion", "baseline_text_minilm")},
           "slice_of_the_category": target, "blessed": blessing["blessed"],
           "failed": [f"{r['criterion']} {r['metric']}" for r in blessing["criteria"] if not r["passed"]],
           "worst_slices": {m: comp[:3] for m, comp in slices.items()}}
    print(json.dumps({k: out[k] for k in ("models", "slice_of_the_category", "blessed", "failed")}, indent=1))
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}; report {work / 'report.html'}")


if __name__ == "__main__":
    main()
