"""Issue 12's evidence: ITEm's served vector against the best baseline, as a mean over seeds with its
spread and a paired bootstrap, on same-product search, the leaf-category probe and the title-decides
check, from the embeddings that ``benchmarks/ablations.py`` saved for each (row, seed)::

    .venv/bin/python benchmarks/ablations.py --rows p2_mlm_mim,p2_infonce_md_lpft --seeds 0,1,2
    .venv/bin/python benchmarks/model_comparison.py --rows p2_mlm_mim,p2_infonce_md_lpft --seeds 0,1,2

For every row and seed it scores the joint ``[CLS]`` alone (read-out weight 0), the served vector
``normalize(w t + j)`` for each ``--weights`` w (t the title stream's ``[CLS]``, j the joint pass's;
:meth:`item_model.modeling_item.ItemModel.embed`), and the text-only / image-only vectors; the
baselines (MiniLM title, raw pixels, their concatenation) are scored on the same catalog. For each
metric the best baseline is the one with the highest value; the paired bootstrap (1,000 resamples
of queries / test listings, :func:`components.promotion.bootstrap.paired_bootstrap`) gives the 95 % interval
of served - best baseline per seed.

Writes ``<out>/model_comparison.json`` (every number), ``model_comparison.md`` (the table) and
``model_comparison.png`` (means with the seed spread as error bars, baselines as lines).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from components.steps.environment import set_offline_defaults

set_offline_defaults()

logger = logging.getLogger("model_comparison")

METRICS = ("category_accuracy", "category_macro_f1", "recall@1", "recall@10", "mAP", "title_decides_recall@1",
           "title_decides_mAP")
BOOTSTRAP_METRICS = ("category_accuracy", "category_macro_f1", "recall@1", "mAP")
BASELINES = ("baseline_text_minilm", "baseline_image_pixels", "baseline_concat")


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def served_vector(joint: np.ndarray, text: np.ndarray, weight: float) -> np.ndarray:
    """``normalize(w * t + j)`` of L2-normalised (n, D) float32 title-stream and joint vectors."""
    return _l2(weight * text + joint) if weight > 0 else joint


def baseline_embeddings(df) -> dict[str, np.ndarray]:
    from item_model.evaluation import concat_baseline, pixel_baseline, text_baseline
    from item_model.processing_item import default_bert_path
    text, pixels = text_baseline(df, default_bert_path(), progress=False), pixel_baseline(df, progress=False)
    return {"baseline_text_minilm": text, "baseline_image_pixels": pixels,
            "baseline_concat": concat_baseline(text, pixels)}


def compare(ablation_dir: Path, rows: list[str], seeds: list[int], weights: list[float],
            catalog: str = "sample", served_only: bool = False) -> dict:
    """Score every (row, seed, read-out) and the baselines on ``catalog`` (``"sample"``: the rows'
    12,000-listing catalog; ``"full"``: the whole catalog, embedded by ``ablations.py --embed-full``);
    bootstrap served - best baseline. ``served_only`` skips the text-only / image-only vectors."""
    from item_model.evaluation import score_embeddings
    from components.promotion.bootstrap import paired_bootstrap
    from components.steps.training import load_validated

    cdir = ablation_dir / "catalog" if catalog == "sample" else ablation_dir / "full" / "catalog"
    df, _ = load_validated(str(cdir))
    split = df["split"].to_numpy()
    base_scores, base_details = {}, {}
    for name, emb in baseline_embeddings(df).items():
        base_scores[name], base_details[name] = score_embeddings(emb, df, split)
    out = {"catalog": str(cdir), "n_listings": int(len(df)), "baselines": base_scores,
           "rows": {}}
    best = {m: max(BASELINES, key=lambda b: base_scores[b][m]) for m in METRICS}
    out["best_baseline"] = best
    for row in rows:
        res = {}
        for seed in seeds:
            d = ablation_dir / (row if seed == 0 else f"{row}@s{seed}")
            if not (d / f"emb_{catalog}_joint.npy").exists():
                logger.warning("no embeddings for %s seed %d in %s: skipped", row, seed, d)
                continue
            joint, text = np.load(d / f"emb_{catalog}_joint.npy"), np.load(d / f"emb_{catalog}_text.npy")
            kinds = {f"served_w{w:g}": served_vector(joint, text, w) for w in weights}
            if not served_only:
                kinds["text_only"] = text
            if not served_only and (d / f"emb_{catalog}_image.npy").exists():
                kinds["image_only"] = np.load(d / f"emb_{catalog}_image.npy")
            for kind, emb in kinds.items():
                scores, details = score_embeddings(emb, df, split)
                entry = {"metrics": {m: scores[m] for m in METRICS if m in scores}}
                if kind.startswith("served"):
                    entry["vs_best_baseline"] = {}
                    for m in BOOTSTRAP_METRICS:
                        b = paired_bootstrap(details, base_details[best[m]], m)
                        entry["vs_best_baseline"][m] = {"baseline": best[m], "diff": b["delta"],
                                                        "low": b["ci_low"], "high": b["ci_high"]}
                res.setdefault(kind, {})[str(seed)] = entry
                logger.info("%s seed %d %s: %s", row, seed, kind,
                            {m: round(v, 4) for m, v in entry["metrics"].items()})
        summary = {}
        for kind, by_seed in res.items():
            vals = {m: [e["metrics"][m] for e in by_seed.values() if m in e["metrics"]] for m in METRICS}
            summary[kind] = {m: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                                 "n_seeds": len(v)} for m, v in vals.items() if v}
        out["rows"][row] = {"per_seed": res, "summary": summary}
    return out


def write_report(result: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from item_model.io import atomic_path, write_json_atomic, write_text_atomic
    write_json_atomic(out / "model_comparison.json", result)
    head = ("| row | vector | " + " | ".join(METRICS) + " |\n|---|---|" + "---|" * len(METRICS) + "\n")
    lines = []
    for row, r in result["rows"].items():
        for kind, s in r["summary"].items():
            cells = [f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" if m in s else "" for m in METRICS]
            lines.append(f"| {row} | {kind} (n={max(v['n_seeds'] for v in s.values())}) | " + " | ".join(cells) + " |")
    for name, m in result["baselines"].items():
        lines.append(f"| baseline | {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "" for k in METRICS) + " |")
    boot = ["", "Paired bootstrap, served vector - best baseline (95 % interval), per seed:", ""]
    for row, r in result["rows"].items():
        for kind, by_seed in r["per_seed"].items():
            if not kind.startswith("served"):
                continue
            for seed, e in by_seed.items():
                parts = [f"{m} vs {v['baseline'].replace('baseline_', '')}: {v['diff']:+.4f} "
                         f"[{v['low']:+.4f}, {v['high']:+.4f}]" for m, v in e["vs_best_baseline"].items()]
                boot.append(f"- {row} {kind} seed {seed}: " + "; ".join(parts))
    write_text_atomic(out / "model_comparison.md", "# Served vector against the baselines\n\n" + head
                      + "\n".join(lines) + "\n" + "\n".join(boot) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric in zip(axes, ("category_accuracy", "recall@1", "title_decides_recall@1")):
        labels, means, stds = [], [], []
        for row, r in result["rows"].items():
            for kind, s in r["summary"].items():
                if metric in s and kind != "image_only":
                    labels.append(f"{row}\n{kind}")
                    means.append(s[metric]["mean"])
                    stds.append(s[metric]["std"])
        ax.barh(labels, means, xerr=stds, color="#4c72b0")
        for (name, m), colour in zip(result["baselines"].items(), ("#dd8452", "#55a868", "#c44e52")):
            if m.get(metric, 0) > 0.5:
                ax.axvline(m[metric], color=colour, linestyle="--", label=f"{name.replace('baseline_', '')} {m[metric]:.3f}")
        lo = min(means + [0.9])
        ax.set_xlim(lo - 0.02, 1.0)
        ax.set_title(metric + " (mean ± sd over seeds)")
        ax.tick_params(axis="y", labelsize=6)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(out / "model_comparison.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ablations", default="benchmarks/results/ablations")
    ap.add_argument("--rows", default="p2_mlm_mim,p2_infonce_md_lpft")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--weights", default="0,4", help="read-out weights w of the title stream (0 = joint [CLS])")
    ap.add_argument("--catalog", choices=("sample", "full"), default="sample",
                    help="the rows' 12,000-listing sample, or the whole catalog (after ablations.py --embed-full)")
    ap.add_argument("--served-only", action="store_true", help="score only the served vectors (and baselines)")
    ap.add_argument("--out", default="", help="default benchmarks/results/model_comparison[_full]")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out or ("benchmarks/results/model_comparison" + ("_full" if args.catalog == "full" else "")))
    out.mkdir(parents=True, exist_ok=True)
    result = compare(Path(args.ablations), args.rows.split(","), [int(s) for s in args.seeds.split(",")],
                     [float(w) for w in args.weights.split(",")], args.catalog, args.served_only)
    write_report(result, out)
    print((out / "model_comparison.md").read_text())


if __name__ == "__main__":
    main()
