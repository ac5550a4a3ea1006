"""Two sceptic's checks of the category probe on finished runs: does a finer ``C`` grid change who
wins, and where does a macro-F1 difference come from?

**C grid.** The pipeline's probe (:func:`item_model.metrics.probe_details`) chooses its inverse regularisation
``C`` on the validation split from :data:`item_model.metrics.PROBE_CS` = (0.1, 1, 10), for every
embedding alike. On the whole catalog every embedding chooses 0.1, the smallest value, so a sceptic
asks whether the grid is too coarse or cut off, and whether a better-tuned baseline would win. This
script re-fits the probe of finished runs with the current grid and with half-decades
(0.03, 0.1, 0.3, 1, 3, 10), each through the pipeline's own ``probe_details`` (C chosen on the
validation split, test labels read only to score), for

* ``item`` (the served vector) and ``item_text_only`` (the title stream t), read from the run's
  ``evaluate/item_embeddings``;
* ``baseline_text_minilm`` and ``baseline_concat`` (MiniLM ⊕ 16 x 16 pixels), computed here once per
  catalog with :func:`item_model.evaluation.text_baseline` / ``pixel_baseline`` (runs of one catalog share
  them),

and the paired bootstrap (:func:`components.promotion.bootstrap.paired_bootstrap`, 1,000 resamples
of the test listings) of ``item`` against each baseline on category accuracy and macro-F1 under each grid.

**Macro-F1 by class size.** Macro-F1 is the unweighted mean over labels of F1_c (scikit-learn's
``average="macro"``), so a class with 2 test listings weighs as much as one with 400. From the run's
own ``evaluate/eval_details`` (the probe predictions eval.json was scored from), the difference
macro-F1(item) - macro-F1(baseline) is split into the labels with at most ``--small`` test listings
and the rest: the sum of F1_c(item) - F1_c(baseline) over each part, divided by the number of labels
(the true and predicted labels of both models). The two parts add up to the difference exactly when
both models' macro-F1 count the same labels (``labels_match``; otherwise ``delta`` is still the true
difference and the parts are over the union).

    .venv/bin/python benchmarks/category_probe_checks.py RUN_DIR [RUN_DIR ...] --json out.json [--small 5] [--macro-f1-only]

RUN_DIR is a kfp.local pipeline run folder (``runs/<id>/item-training-<timestamp>``). Results already
in ``--json`` are kept (a run is skipped when its folder is there), so runs can be added later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRIDS = {"current": None, "half_decades": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)}
BASELINES = ("baseline_text_minilm", "baseline_concat")
METRICS = ("category_accuracy", "category_macro_f1")


def macro_f1_split(details: dict, baseline: str, small: int) -> dict:
    """Split macro-F1(item) - macro-F1(baseline) into small and large labels (see the module docstring).

    Args:
        details: ``load_details(eval_details)``: ``{model: {"probe": {"y_true", "y_pred", "test_index"}}}``.
        baseline: the model to compare ``item`` with. small: the class-size bound (test listings).

    Returns:
        ``{"delta", "delta_small", "delta_large", "labels_match", "n_small_labels", "n_large_labels",
        "n_small_rows", "n_rows", "small_labels": {label: {"n_test", "f1_item", "f1_baseline"}},
        "errors_item", "errors_baseline", "errors_shared", "confusions_item": [[true, predicted, count], ...]
        (the 10 most frequent)}`` (``delta`` = ``delta_small + delta_large`` when ``labels_match``).

    Raises:
        ValueError: the two models' probes were scored on different test rows.
    """
    from sklearn.metrics import f1_score

    from item_model.metrics import macro_f1

    a, b = details["item"]["probe"], details[baseline]["probe"]
    if not np.array_equal(a["test_index"], b["test_index"]):
        raise ValueError(f"item and {baseline} were probed on different test rows")
    y, pa, pb = a["y_true"], a["y_pred"], b["y_pred"]
    labels = np.unique(np.concatenate([y, pa, pb]))
    n = (y[:, None] == labels[None, :]).sum(axis=0)                        # test listings per label
    f1_a, f1_b = (f1_score(y, p, labels=labels, average=None, zero_division=0) for p in (pa, pb))
    d = f1_a - f1_b
    match = all(len(np.unique(np.concatenate([y, p]))) == len(labels) for p in (pa, pb))
    wrong_a, wrong_b = pa != y, pb != y
    pairs, counts = np.unique(np.stack([y[wrong_a], pa[wrong_a]], axis=1).astype(str), axis=0, return_counts=True)
    top = np.argsort(-counts, kind="stable")[:10]
    extra = {"small_labels": {str(c): {"n_test": int(k), "f1_item": float(fa), "f1_baseline": float(fb)}
                              for c, k, fa, fb in zip(labels, n, f1_a, f1_b) if k <= small},
             "errors_item": int(wrong_a.sum()), "errors_baseline": int(wrong_b.sum()),
             "errors_shared": int((wrong_a & wrong_b).sum()),
             "confusions_item": [[str(pairs[i][0]), str(pairs[i][1]), int(counts[i])] for i in top]}
    return {"delta": float(macro_f1(y, pa) - macro_f1(y, pb)), "delta_small": float(d[n <= small].sum() / len(labels)),
            "delta_large": float(d[n > small].sum() / len(labels)), "labels_match": bool(match), "n_small_labels": int(np.sum(n <= small)),
            "n_large_labels": int(np.sum(n > small)), "n_small_rows": int(n[n <= small].sum()), "n_rows": int(len(y)), **extra}


def macro_f1_splits(run_dir: Path, small: int) -> dict:
    """:func:`macro_f1_split` of ``item`` against each of :data:`BASELINES` from the run's
    ``evaluate/eval_details``, each printed on one line."""
    from components.promotion.bootstrap import load_details

    details = load_details(run_dir / "evaluate" / "eval_details")
    out = {b: macro_f1_split(details, b, small) for b in BASELINES}
    for b, r in out.items():
        print(f"{run_dir.parent.name} macro-F1 item - {b}: {r['delta']:+.4f} = {r['delta_small']:+.4f} from "
              f"{r['n_small_labels']} labels with <= {small} test listings ({r['n_small_rows']} rows) "
              f"{r['delta_large']:+.4f} from the other {r['n_large_labels']}; probe errors {r['errors_item']} / "
              f"{r['errors_baseline']}, {r['errors_shared']} shared", flush=True)
    return out


def main() -> None:
    from item_model.evaluation import concat_baseline, pixel_baseline, text_baseline
    from components.promotion.bootstrap import paired_bootstrap
    from components.steps.training import load_validated
    from item_model.metrics import PROBE_CS, accuracy, macro_f1, probe_details
    from item_model.processing_item import default_bert_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", required=True)
    p.add_argument("--small", type=int, default=5, help="labels with at most this many test listings are 'small'")
    p.add_argument("--macro-f1-only", action="store_true",
                   help="only (re)compute the macro-F1 split of each run (no probe re-fits; other results kept)")
    args = p.parse_args()
    grids = {g: tuple(cs or PROBE_CS) for g, cs in GRIDS.items()}
    out_path = Path(args.json)
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out["method"] = ("probe re-fitted with item_model.metrics.probe_details (C chosen on the validation split) "
                     "under each grid; paired bootstrap of item against each baseline on the test listings")
    out["grids"] = {g: list(cs) for g, cs in grids.items()}
    out.setdefault("runs", {})
    baselines: dict[str, dict[str, np.ndarray]] = {}
    for run in args.runs:
        if args.macro_f1_only:
            out["runs"].setdefault(run, {})["macro_f1_by_class_size"] = macro_f1_splits(Path(run), args.small)
            continue
        if run in out["runs"]:
            print(f"{run}: already in {out_path}, skipped", flush=True)
            continue
        run_dir = Path(run)
        df, _ = load_validated(str(run_dir / "validate-catalog" / "validated_catalog"))
        ids = df["product_id"].astype(str).to_numpy()
        with np.load(run_dir / "evaluate" / "item_embeddings", allow_pickle=False) as z:
            if not np.array_equal(z["product_id"], ids):
                raise ValueError(f"{run}: item_embeddings rows differ from the validated catalog's")
            embs = {"item": z["item"], "item_text_only": z["item_text_only"]}
        key = "\n".join(ids)                 # the catalog's rows, in order
        if key not in baselines:
            t0 = time.time()
            text, pixels = text_baseline(df, default_bert_path(), progress=False), pixel_baseline(df, progress=False)
            baselines[key] = {"baseline_text_minilm": text, "baseline_concat": concat_baseline(text, pixels)}
            print(f"baselines of {len(df)} listings in {time.time() - t0:.0f} s", flush=True)
        embs.update(baselines[key])
        split, y = df["split"].to_numpy(), df["category"].to_numpy(dtype=object)
        tr, va, te = (np.flatnonzero(split == s) for s in ("train", "validation", "test"))
        res: dict = {"macro_f1_by_class_size": macro_f1_splits(run_dir, args.small)}
        for grid, cs in grids.items():
            details = {}
            for name, x in embs.items():
                d = probe_details(x[tr], y[tr], x[te], y[te], x_val=x[va], y_val=y[va], cs=cs)
                details[name] = {"probe": {k: d[k] for k in ("y_true", "y_pred", "test_index")}}
                res[f"{grid}/{name}"] = {
                    "category_accuracy": accuracy(d["y_true"], d["y_pred"]),
                    "category_macro_f1": macro_f1(d["y_true"], d["y_pred"]), "C": d["C"],
                    "validation_accuracy": {f"{c:g}": v for c, v in d["validation_accuracy"].items()}}
                r = res[f"{grid}/{name}"]
                print(f"{run_dir.parent.name} {grid:12s} {name:22s} C={r['C']:<5g} acc {r['category_accuracy']:.4f} "
                      f"F1 {r['category_macro_f1']:.4f}", flush=True)
            for b in BASELINES:
                for m in METRICS:
                    bs = paired_bootstrap(details["item"], details[b], m)
                    res[f"{grid}/bootstrap/item_vs_{b}/{m}"] = bs
                    print(f"  item - {b} {m}: {bs['delta']:+.4f} [{bs['ci_low']:+.4f}, {bs['ci_high']:+.4f}]",
                          flush=True)
        out["runs"][run] = res
        write_json(out_path, out)
    write_json(out_path, out)


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
