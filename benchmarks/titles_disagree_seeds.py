"""The titles-disagree check (item_model/titles_disagree.py) over seeds of the default profile: per
seed the served vector, its two streams and the baselines on the check (Recall@1, Recall@10, mAP)
beside the plain same-product search and category accuracy, and the paired bootstrap of the served
vector against each baseline on the check's queries; across seeds, mean ± sd (issue 30's baseline
for a photo stream that has to carry the match).

Pre-training and evaluation run through the pipeline's own steps (validate, pretrain, evaluate:
no index, no packaging), the default profile unchanged but for the seed:

    .venv/bin/python benchmarks/titles_disagree_seeds.py --seeds 0,1,2 [--catalog DIR] [--out FILE.json] \
        [--model-config image_tokens=efficientnet_lite0 --model-config image_height=160 ...]

``--model-config KEY=VALUE`` (YAML value) overrides one field of the profile's ``model_config``: the
configuration compared against the default profile's.

``--effnet`` adds the pre-trained image baselines (EfficientNet-Lite0 pooled features of each photo at
224 x 168, alone and beside MiniLM, as ``benchmarks/pretrained_image_baseline.py``; computed once, bf16
autocast) to every seed's table and bootstrap.

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
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from item_model.io import write_json_atomic  # noqa: E402
from components.steps import training as steps  # noqa: E402
from components.promotion.bootstrap import load_details, paired_bootstrap  # noqa: E402
from pipelines.config import DEFAULT_CATALOG, load_profile  # noqa: E402

MODELS = ("item", "item_text_only", "item_image_only", "baseline_text_minilm", "baseline_image_pixels",
          "baseline_concat")
BASELINES = ("baseline_text_minilm", "baseline_image_pixels", "baseline_concat")
EFFNET = ("baseline_effnet", "baseline_minilm_effnet")
KEYS = ("titles_disagree_recall@1", "titles_disagree_recall@10", "titles_disagree_mAP", "recall@1",
        "category_accuracy", "title_decides_recall@1", "mAP", "balance_image_overlap@10")


def run_seed(seed: int, catalog_dir: Path, work: Path, model_overrides: dict | None = None) -> tuple[dict, dict]:
    """(eval.json, details) of the default profile at ``seed`` (``model_config`` updated with
    ``model_overrides``), trained and evaluated here."""
    profile = load_profile("default")
    train = {**profile["train_config"], "seed": seed, "checkpoint_every": 0}
    model_dir = work / f"model_seed{seed}"
    t0 = time.perf_counter()
    steps.pretrain_step(str(catalog_dir), str(model_dir), {**profile["model_config"], **(model_overrides or {})},
                        train, progress=False)
    result = steps.evaluate_step(str(catalog_dir), str(model_dir), str(work / f"eval_seed{seed}.json"),
                                 modality_ablation=True, progress=False,
                                 details_path=str(work / f"details_seed{seed}.npz"))
    print(f"seed {seed}: trained and evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
    return result, load_details(work / f"details_seed{seed}.npz")


def effnet_baselines(catalog_dir: Path, work: Path) -> tuple[dict, dict]:
    """``({name: metrics}, {name: details})`` of EfficientNet-Lite0 alone and beside MiniLM on the validated
    catalog ``catalog_dir`` (the rows every seed is evaluated on): the pipeline's own scoring
    (:func:`item_model.evaluation.score_embeddings`) and the titles-disagree check (MiniLM re-reads the
    rewritten titles; the photo features do not change)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pretrained_image_baseline import photo_features

    from components.steps.training import load_validated
    from item_model.evaluation import concat_baseline, score_embeddings, text_baseline
    from item_model.image_encoders import load_efficientnet_lite0
    from item_model.processing_item import default_bert_path
    from item_model.title_decides import title_decides_groups
    from item_model.titles_disagree import score_titles_disagree

    df, _ = load_validated(str(catalog_dir))
    cache = work / "effnet_minilm.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            effnet, minilm = z["effnet"], z["minilm"]
    else:
        t0 = time.perf_counter()
        effnet = photo_features(load_efficientnet_lite0(), df, (224, 168), bf16=True)
        minilm = text_baseline(df, default_bert_path(), progress=False)
        np.savez(cache, effnet=effnet, minilm=minilm)
        print(f"EfficientNet-Lite0 and MiniLM of {len(df)} listings in {time.perf_counter() - t0:.0f} s", flush=True)
    position = pd.Series(np.arange(len(df)), index=df.index)
    embs = {"baseline_effnet": effnet, "baseline_minilm_effnet": concat_baseline(minilm, effnet)}
    metrics, details = {}, {}
    for name, emb in embs.items():
        metrics[name], details[name] = score_embeddings(emb, df, df["split"].to_numpy(), title_decides_groups(df))
    reread = {"baseline_minilm_effnet": lambda rows: concat_baseline(text_baseline(rows, default_bert_path(),
                                                                                   progress=False),
                                                                     effnet[position[rows.index].to_numpy()])}
    td_metrics, td_details, _ = score_titles_disagree(df, embs, reread)
    for name in embs:
        metrics[name].update(td_metrics[name])
        details[name]["titles_disagree"] = td_details[name]
    return metrics, details


def load_seed(path: Path, seed: int) -> tuple[dict, dict]:
    """(eval.json, details) of a seed evaluated before: a run's ``evaluate`` task folder, a folder with
    ``eval.json`` and ``details.npz``, or this script's work folder (``eval_seed<seed>.json``)."""
    if (path / "eval_json").exists():
        return json.loads((path / "eval_json").read_text()), load_details(path / "eval_details")
    if (path / f"eval_seed{seed}.json").exists():
        return json.loads((path / f"eval_seed{seed}.json").read_text()), load_details(path / f"details_seed{seed}.npz")
    return json.loads((path / "eval.json").read_text()), load_details(path / "details.npz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval", action="append", default=[],
                    help="SEED=DIR of a seed already evaluated (DIR may be an earlier run's work folder)")
    ap.add_argument("--work", default="", help="work folder (default: a new temporary one); an earlier run's "
                                               "to reuse its validated catalog and cached baseline features")
    ap.add_argument("--catalog", default=DEFAULT_CATALOG)
    ap.add_argument("--effnet", action="store_true", help="add the EfficientNet-Lite0 baselines")
    ap.add_argument("--model-config", action="append", default=[], metavar="KEY=VALUE",
                    help="override one model_config field of the default profile (YAML value)")
    ap.add_argument("--out", default=str(ROOT / f"benchmarks/results/titles_disagree_default_3seeds_{date.today()}.json"))
    args = ap.parse_args()
    given = {int(k): Path(v) for k, v in (e.split("=", 1) for e in args.eval)}
    overrides = {k: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in args.model_config)}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="titles-disagree-"))
    print(f"work folder {work}", flush=True)
    catalog_dir = work / "catalog"
    profile = load_profile("default")
    per_seed = {}
    models, baselines = MODELS, BASELINES
    extra_metrics, extra_details = {}, {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        if seed in given:
            result, details = load_seed(given[seed], seed)
        else:
            if not catalog_dir.exists():
                steps.validate_step(args.catalog, str(catalog_dir), str(work / "q.parquet"), str(work / "v.json"),
                                    str(work / "docs"), max_listings=int(profile["max_listings"]))
            result, details = run_seed(seed, catalog_dir, work, overrides)
        if args.effnet and not extra_metrics:
            if not catalog_dir.exists():
                raise SystemExit("--effnet needs the validated catalog: run at least one seed here")
            extra_metrics, extra_details = effnet_baselines(catalog_dir, work)
            models, baselines = MODELS + EFFNET, BASELINES + EFFNET
        scored = {**result["models"], **extra_metrics}
        details = {**details, **extra_details}
        row = {"metrics": {m: {k: scored[m].get(k) for k in KEYS} for m in models},
               "readout_text_weight": result.get("checks", {}).get("readout", {}).get("readout_text_weight"),
               "bootstrap_item_minus": {}}
        for b in baselines:
            bs = paired_bootstrap({"retrieval": details["item"]["titles_disagree"]},
                                  {"retrieval": details[b]["titles_disagree"]}, "recall@1")
            row["bootstrap_item_minus"][b] = {k: bs[k] for k in ("delta", "ci_low", "ci_high", "n_items")}
        per_seed[seed] = row
        print(f"seed {seed}: " + ", ".join(f"{m} {scored[m]['titles_disagree_recall@1']:.4f}" for m in models),
              flush=True)
    summary = {}
    for m in models:
        summary[m] = {}
        for k in KEYS:
            vals = [r["metrics"][m][k] for r in per_seed.values() if r["metrics"][m][k] is not None]
            if vals:
                summary[m][k] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    print("\n| model | titles-disagree R@1 | R@10 | mAP | same-product R@1 | category acc. |\n|---|---|---|---|---|---|")
    for m in models:
        s = summary[m]
        print(f"| {m} | " + " | ".join(f"{s[k]['mean']:.4f} ± {s[k]['sd']:.4f}" for k in KEYS[:5]) + " |")
    write_json_atomic(args.out, {"protocol": "default profile (pipelines/configs/profiles.yaml) but the seed; "
                                             "pipeline steps validate -> pretrain -> evaluate; titles-disagree: "
                                             "item_model/titles_disagree.py; paired bootstrap 1,000 resamples, 95 %",
                                 "model_config_overrides": overrides, "work_dir": str(work),
                                 "per_seed": per_seed, "summary": summary})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
