"""The titles-disagree check (item_model/titles_disagree.py) over seeds of the default profile: per
seed the served vector, its two streams and the baselines on the check (Recall@1, Recall@10, mAP)
beside the plain same-product search and category accuracy, and the paired bootstrap of the served
vector against each baseline on the check's queries; across seeds, mean ± sd (issue 30's baseline
for a photo stream that has to carry the match).

Pre-training and evaluation run through the pipeline's own steps (validate, pretrain, evaluate:
no index, no packaging), the default profile unchanged but for the seed:

    .venv/bin/python benchmarks/titles_disagree_seeds.py --seeds 0,1,2 [--catalog DIR] [--out FILE.json]

A seed already run can be reused with ``--eval SEED=DIR`` (a folder with ``eval.json`` and
``details.npz``, or a run's ``evaluate`` task folder with ``eval_json`` and ``eval_details``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from item_model.io import write_json_atomic  # noqa: E402
from components.steps import training as steps  # noqa: E402
from components.promotion.bootstrap import load_details, paired_bootstrap  # noqa: E402
from pipelines.config import DEFAULT_CATALOG, load_profile  # noqa: E402

MODELS = ("item", "item_text_only", "item_image_only", "baseline_text_minilm", "baseline_image_pixels",
          "baseline_concat")
BASELINES = ("baseline_text_minilm", "baseline_image_pixels", "baseline_concat")
KEYS = ("titles_disagree_recall@1", "titles_disagree_recall@10", "titles_disagree_mAP", "recall@1",
        "category_accuracy", "title_decides_recall@1")


def run_seed(seed: int, catalog_dir: Path, work: Path) -> tuple[dict, dict]:
    """(eval.json, details) of the default profile at ``seed``, trained and evaluated here."""
    profile = load_profile("default")
    train = {**profile["train_config"], "seed": seed, "checkpoint_every": 0}
    model_dir = work / f"model_seed{seed}"
    t0 = time.perf_counter()
    steps.pretrain_step(str(catalog_dir), str(model_dir), profile["model_config"], train, progress=False)
    result = steps.evaluate_step(str(catalog_dir), str(model_dir), str(work / f"eval_seed{seed}.json"),
                                 modality_ablation=True, progress=False,
                                 details_path=str(work / f"details_seed{seed}.npz"))
    print(f"seed {seed}: trained and evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
    return result, load_details(work / f"details_seed{seed}.npz")


def load_seed(path: Path) -> tuple[dict, dict]:
    if (path / "eval_json").exists():
        return json.loads((path / "eval_json").read_text()), load_details(path / "eval_details")
    return json.loads((path / "eval.json").read_text()), load_details(path / "details.npz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval", action="append", default=[], help="SEED=DIR of a seed already evaluated")
    ap.add_argument("--catalog", default=DEFAULT_CATALOG)
    ap.add_argument("--out", default=str(ROOT / f"benchmarks/results/titles_disagree_default_3seeds_{date.today()}.json"))
    args = ap.parse_args()
    given = {int(k): Path(v) for k, v in (e.split("=", 1) for e in args.eval)}
    work = Path(tempfile.mkdtemp(prefix="titles-disagree-"))
    catalog_dir = work / "catalog"
    profile = load_profile("default")
    per_seed = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        if seed in given:
            result, details = load_seed(given[seed])
        else:
            if not catalog_dir.exists():
                steps.validate_step(args.catalog, str(catalog_dir), str(work / "q.parquet"), str(work / "v.json"),
                                    str(work / "docs"), max_listings=int(profile["max_listings"]))
            result, details = run_seed(seed, catalog_dir, work)
        models = result["models"]
        row = {"metrics": {m: {k: models[m].get(k) for k in KEYS} for m in MODELS},
               "readout_text_weight": result.get("checks", {}).get("readout", {}).get("readout_text_weight"),
               "bootstrap_item_minus": {}}
        for b in BASELINES:
            bs = paired_bootstrap({"retrieval": details["item"]["titles_disagree"]},
                                  {"retrieval": details[b]["titles_disagree"]}, "recall@1")
            row["bootstrap_item_minus"][b] = {k: bs[k] for k in ("delta", "ci_low", "ci_high", "n_items")}
        per_seed[seed] = row
        print(f"seed {seed}: " + ", ".join(f"{m} {models[m]['titles_disagree_recall@1']:.4f}" for m in MODELS), flush=True)
    summary = {}
    for m in MODELS:
        summary[m] = {}
        for k in KEYS:
            vals = [r["metrics"][m][k] for r in per_seed.values() if r["metrics"][m][k] is not None]
            if vals:
                summary[m][k] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    print("\n| model | titles-disagree R@1 | R@10 | mAP | same-product R@1 | category acc. |\n|---|---|---|---|---|---|")
    for m in MODELS:
        s = summary[m]
        print(f"| {m} | " + " | ".join(f"{s[k]['mean']:.4f} ± {s[k]['sd']:.4f}" for k in KEYS[:5]) + " |")
    write_json_atomic(args.out, {"protocol": "default profile (pipelines/configs/profiles.yaml) but the seed; "
                                             "pipeline steps validate -> pretrain -> evaluate; titles-disagree: "
                                             "item_model/titles_disagree.py; paired bootstrap 1,000 resamples, 95 %",
                                 "per_seed": per_seed, "summary": summary})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
