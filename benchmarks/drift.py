"""Drift benchmark on real temporal drift in the real catalog.

The fashion catalog spans 2007-2019. Reference = listings from 2011-2012; current = listings from
2016-2017 (real temporal drift: Personal Care appears, Apparel falls from 61 % to 19 %); negative
control = other, disjoint 2011-2012 listings. With ITEm embeddings (joint, text-only, image-only) of
an ITEm model, this measures, for each window size n:

* the false-positive rate over >= 20 random windows of held-out 2011-2012 listings (target <= 5 %),
* the detection rate over >= 20 random windows of 2016-2017 listings (target >= 95 %),

with the production method (:mod:`monitoring.drift`: Evidently ``MMDDriftMethod``, threshold
calibrated on K = 100 reference-vs-reference splits of the reference pool, conformal 0.99
quantile), per modality and for the window verdict (any modality), beside Evidently's default
thresholds on the same windows (the default ``EmbeddingsDrift`` method, a domain classifier with
ROC AUC > 0.55, and ``MMDDriftMethod``'s default MMD^2 > 0.015).

Protocol: the 2011-2012 listings (with a title and an image) are shuffled with a fixed seed; the
first ``--reference-size`` form the reference pool (what the champion was validated on), the next
``--holdout-size`` the held-out control listings. Thresholds are calibrated on the pool only. Each
window is tested exactly as ``item monitor`` tests one: n current rows against a random
m = min(pool - n, 1000)-row subsample of the pool (a fresh subsample per window).

Model: ``--model-tag`` (default ``item:latest``) from the BentoML store ``--bentoml-home`` (default
``~/bentoml``); when that store has no such model, the tiny model of the test suite (2 layers,
8 training steps on 400 listings) is trained once into ``--cache`` and used, and the results say so.

    .venv/bin/python benchmarks/drift.py [--results-md docs/results.md] [--windows 25] [--sizes 100,500]

Writes a JSON of every score (``--json``) and a Markdown section into ``--results-md`` between
``<!-- drift-benchmark:begin -->`` and ``<!-- drift-benchmark:end -->`` (replaced on a re-run).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from components.steps.environment import set_offline_defaults  # noqa: E402

set_offline_defaults()

from components.storage.embeddings import MODALITIES  # noqa: E402
from monitoring.calibration import calibrate  # noqa: E402
from monitoring.drift import DriftConfig, DriftInputError, drift_score, reference_size  # noqa: E402
from monitoring.inputs import resolve_model  # noqa: E402

logger = logging.getLogger("benchmarks.drift")
DEFAULT_CATALOG = ROOT.parent / "shared" / "datasets" / "fashion-product-images-small"
BEGIN, END = "<!-- drift-benchmark:begin -->", "<!-- drift-benchmark:end -->"
REFERENCE_YEARS, DRIFT_YEARS = (2011, 2012), (2016, 2017)
EVIDENTLY_MMD_DEFAULT = 0.015        # MMDDriftMethod().threshold
EVIDENTLY_MODEL_DEFAULT = 0.55       # ModelDriftMethod().threshold: EmbeddingsDrift's default method


def tiny_model(catalog: Path, cache: Path) -> tuple[str, Path]:
    """Train (once) the test suite's tiny ITEm model on a 400-listing sample of the catalog."""
    from components.steps import training as steps
    
    model_dir = cache / "tiny-model"
    if not (model_dir / "model.safetensors").exists():
        logger.info("no packaged model: training the tiny model (2 layers, 8 steps) into %s", model_dir)
        work = cache / "tiny-work"
        steps.validate_step(str(catalog), str(work / "catalog"), str(work / "quarantine.parquet"),
                            str(work / "validation.json"), str(work / "docs"), max_listings=400)
        steps.pretrain_step(str(work / "catalog"), str(model_dir), {"num_hidden_layers": 2},
                            {"steps": 8, "batch_size": 8, "warmup_steps": 2, "log_every": 4, "seed": 0},
                            progress=False)
    return "tiny (2-layer ITEm, 8 steps on 400 listings; no packaged model in the BentoML store)", model_dir


def listing_sets(catalog: Path, reference_size_: int, holdout: int, drifted: int, seed: int) -> dict:
    """Canonical rows: ``reference`` and ``holdout`` (disjoint 2011-2012) and ``drift`` (2016-2017)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.catalog import to_canonical

    table = pa.concat_tables([pq.read_table(s) for s in sorted((catalog / "data").glob("*.parquet"))])
    year = table.column("year").to_numpy(zero_copy_only=False)
    titled = np.array([isinstance(t, str) and t.strip() != "" for t in table.column("productDisplayName").to_pylist()])
    imaged = np.array([bool(v and v.get("bytes")) for v in table.column("image").to_pylist()])
    ok = titled & imaged
    rng = np.random.default_rng(seed)
    old = rng.permutation(np.flatnonzero(np.isin(year, REFERENCE_YEARS) & ok))
    new = rng.permutation(np.flatnonzero(np.isin(year, DRIFT_YEARS) & ok))
    if len(old) < reference_size_ + holdout or len(new) < drifted:
        raise SystemExit(f"not enough listings: {len(old)} of {REFERENCE_YEARS}, {len(new)} of {DRIFT_YEARS}")
    picks = {"reference": old[:reference_size_], "holdout": old[reference_size_:reference_size_ + holdout],
             "drift": new[:drifted]}
    return {k: to_canonical(table.take(pa.array(np.sort(v))), str(catalog)) for k, v in picks.items()}


def embed_sets(model_dir: Path, sets: dict, cache_file: Path) -> dict[str, dict[str, np.ndarray]]:
    """ITEm embeddings of each set in each modality, cached in ``cache_file`` (npz)."""
    if cache_file.exists():
        with np.load(cache_file) as z:
            out: dict = {}
            for key in z.files:
                name, modality = key.split("/")
                out.setdefault(name, {})[modality] = z[key]
        if all(len(out[k]["joint"]) == len(v) for k, v in sets.items()):
            logger.info("embeddings read from %s", cache_file)
            return out
    from components.storage.embeddings import embed_modalities
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor

    model = ItemModel.from_pretrained(model_dir)
    processor = ItemProcessor.from_pretrained(model_dir, model.config)
    out = {name: embed_modalities(model, processor, rows) for name, rows in sets.items()}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache_file, **{f"{n}/{m}": e for n, d in out.items() for m, e in d.items()})
    return out


def evidently_default_score(reference: np.ndarray, current: np.ndarray) -> float:
    """ROC AUC of Evidently's default embedding-drift method (``ModelDriftMethod()``: SGD logistic
    domain classifier on a 50/50 split), the method ``EmbeddingsDrift(drift_method=None)`` uses
    when the reference holds >= 1000 rows."""
    import pandas as pd
    from evidently.metrics.embeddings import ModelDriftMethod

    cols = [f"e{i}" for i in range(reference.shape[1])]
    score, _, _ = ModelDriftMethod()(pd.DataFrame(current, columns=cols), pd.DataFrame(reference, columns=cols))
    return float(score)


def run(args) -> dict:
    config = DriftConfig()
    cache = Path(args.cache)
    try:
        tag, model_dir = resolve_model(args.model_tag, args.bentoml_home or str(Path.home() / "bentoml"))
        model_name = f"{tag} from the BentoML store {args.bentoml_home or '~/bentoml'}"
    except DriftInputError as exc:
        logger.info("%s", exc)
        model_name, model_dir = tiny_model(Path(args.catalog), cache)
        tag = "tiny"
    t0 = time.perf_counter()
    sets = listing_sets(Path(args.catalog), args.reference_size, args.holdout_size, args.drift_size, args.seed)
    emb = embed_sets(model_dir, sets, cache / f"embeddings-{tag.replace(':', '-')}-{args.seed}.npz")
    embed_s = time.perf_counter() - t0
    pool = emb["reference"]
    results: dict = {"model": model_name, "dim": int(pool["joint"].shape[1]), "catalog": str(args.catalog),
                     "config": config.to_dict(),
                     "seed": args.seed, "windows": args.windows, "embed_time_s": round(embed_s, 1),
                     "sets": {k: {"n": len(v), "years": sorted(int(y) for y in v["year"].dropna().unique())}
                              for k, v in sets.items()},
                     "sizes": {}}
    rng = np.random.default_rng(args.seed + 1)
    for n in args.sizes:
        m = reference_size(len(pool["joint"]), n, config)
        size: dict = {"n": n, "m": m, "modalities": {}}
        for modality in MODALITIES:
            t1 = time.perf_counter()
            calib = calibrate(pool[modality], n, m, lambda r, c: drift_score(r, c, config), config.n_splits,
                              config.quantile, config.seed, label=modality)
            size["modalities"][modality] = {"calibration": calib, "control": [], "drift": [],
                                            "control_default": [], "drift_default": []}
            logger.info("n=%d %s calibrated in %.0f s", n, modality, time.perf_counter() - t1)
        for w in range(args.windows):
            ref_rows = rng.choice(len(pool["joint"]), m, replace=False)
            control_rows = rng.choice(len(emb["holdout"]["joint"]), n, replace=False)
            drift_rows = rng.choice(len(emb["drift"]["joint"]), n, replace=False)
            for modality in MODALITIES:
                r = size["modalities"][modality]
                ref = pool[modality][ref_rows]
                for kind, cur in (("control", emb["holdout"][modality][control_rows]),
                                  ("drift", emb["drift"][modality][drift_rows])):
                    r[kind].append(drift_score(ref, cur, config))
                    if not args.skip_default:
                        r[f"{kind}_default"].append(evidently_default_score(ref, cur))
            logger.info("n=%d window %d/%d done", n, w + 1, args.windows)
        for modality, r in size["modalities"].items():
            thr = r["calibration"]["threshold"]
            r["fpr"] = float(np.mean(np.array(r["control"]) > thr))
            r["detection"] = float(np.mean(np.array(r["drift"]) > thr))
            r["fpr_mmd_default"] = float(np.mean(np.array(r["control"]) > EVIDENTLY_MMD_DEFAULT))
            r["detection_mmd_default"] = float(np.mean(np.array(r["drift"]) > EVIDENTLY_MMD_DEFAULT))
            if r["control_default"]:
                r["fpr_evidently_default"] = float(np.mean(np.array(r["control_default"]) > EVIDENTLY_MODEL_DEFAULT))
                r["detection_evidently_default"] = float(np.mean(np.array(r["drift_default"])
                                                                 > EVIDENTLY_MODEL_DEFAULT))
        thr = {mo: r["calibration"]["threshold"] for mo, r in size["modalities"].items()}
        any_control = np.any([np.array(size["modalities"][mo]["control"]) > thr[mo] for mo in MODALITIES], axis=0)
        any_drift = np.any([np.array(size["modalities"][mo]["drift"]) > thr[mo] for mo in MODALITIES], axis=0)
        size["window_fpr"], size["window_detection"] = float(any_control.mean()), float(any_drift.mean())
        results["sizes"][str(n)] = size
    results["wall_time_s"] = round(time.perf_counter() - t0, 1)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), no GPU"
    results["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return results


def markdown(res: dict) -> str:
    def pct(x):
        return f"{100 * x:.0f} %"

    k = res["windows"]
    lines = [BEGIN, "## Drift detection: real temporal drift (`benchmarks/drift.py`)", "",
             f"Command: `.venv/bin/python benchmarks/drift.py` ({res['created_at'][:10]}, {res['machine']}, "
             f"{res['wall_time_s']:.0f} s). Model: {res['model']}. Embeddings: ITEm joint, text-only and "
             f"image-only of real listings with a title and a photo: reference pool "
             f"{res['sets']['reference']['n']} listings of 2011-2012, held-out control "
             f"{res['sets']['holdout']['n']} other listings of 2011-2012, drift {res['sets']['drift']['n']} "
             "listings of 2016-2017.", "",
             f"Method: Evidently `EmbeddingsDrift` / `MMDDriftMethod` (unbiased MMD^2, RBF kernel, median "
             f"bandwidth) on the full {res['dim']}-dimensional L2-normalised embeddings, no PCA; "
             "threshold per modality = "
             f"conformal {res['config']['quantile']} quantile of {res['config']['n_splits']} reference-vs-reference "
             "splits of the pool (the maximum of the 100 scores: false-positive bound 1/101 per modality). Each of "
             f"{k} windows per row: n current rows against a fresh random m-row subsample of the pool. "
             "Window verdict = drift in any modality.", "",
             "| window n | ref m | modality | null mean | calibrated threshold | control median | **FPR** | "
             "2016-17 median | **detection** | Evidently default (AUC > 0.55) FPR / detection | "
             "MMD^2 > 0.015 FPR / detection |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, size in res["sizes"].items():
        for modality, r in size["modalities"].items():
            c = r["calibration"]
            default = (f"{pct(r['fpr_evidently_default'])} / {pct(r['detection_evidently_default'])}"
                       if "fpr_evidently_default" in r else "n/a")
            lines.append(f"| {n} | {size['m']} | {modality} | {c['null_mean']:.2g} | {c['threshold']:.3g} | "
                         f"{np.median(r['control']):.2g} | {pct(r['fpr'])} | {np.median(r['drift']):.3g} | "
                         f"{pct(r['detection'])} | {default} | {pct(r['fpr_mmd_default'])} / "
                         f"{pct(r['detection_mmd_default'])} |")
        lines.append(f"| {n} | {size['m']} | **window (any)** | | | | **{pct(size['window_fpr'])}** | | "
                     f"**{pct(size['window_detection'])}** | | |")
    lines += ["", f"Targets: FPR <= 5 %, detection >= 95 % over >= 20 windows ({k} here). Every score: "
              "the benchmark's `--json` file (default `item-storage/benchmarks/drift_results.json`).", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of ``path`` (or append it)."""
    from item_model.io import write_text_atomic

    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    write_text_atomic(path, text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    p.add_argument("--model-tag", default="item:latest")
    p.add_argument("--bentoml-home", default="")
    p.add_argument("--windows", type=int, default=25, help="random windows per size (>= 20)")
    p.add_argument("--sizes", default="100,500", help="window sizes n, comma-separated (grid sizes)")
    p.add_argument("--reference-size", type=int, default=2000)
    p.add_argument("--holdout-size", type=int, default=2000)
    p.add_argument("--drift-size", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-default", action="store_true", help="skip Evidently's default classifier (slow)")
    p.add_argument("--cache", default=str(ROOT / "item-storage" / "benchmarks"))
    p.add_argument("--json", default=str(ROOT / "item-storage" / "benchmarks" / "drift_results.json"))
    p.add_argument("--results-md", default=str(ROOT / "docs" / "results.md"))
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.windows < 20:
        p.error("--windows must be >= 20")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = run(args)
    from item_model.io import write_json_atomic
    write_json_atomic(args.json, res)
    section = markdown(res)
    write_section(Path(args.results_md), section)
    print(section)


if __name__ == "__main__":
    main()
