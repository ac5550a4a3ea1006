"""ITEm ablation study on the real catalog: which objectives and settings make the one ``[CLS]``
embedding beat the baselines on both tasks.

Each row is one pre-training run from all-MiniLM-L6-v2 with the row's overrides, evaluated exactly
as the pipeline's evaluate step does (same validated catalog, split and gallery; same metrics:
:func:`item_model.evaluation.score_embeddings`) for the joint ``[CLS]`` embedding and for the
model's text-only and image-only embeddings (modality balance). The baselines are scored once on
the same data. Every row is a command anyone can re-run::

    .venv/bin/python benchmarks/ablations.py --rows all_five,mlm_mim        # run (or reuse) rows
    .venv/bin/python benchmarks/ablations.py --list                         # the known rows
    .venv/bin/python benchmarks/ablations.py --report                       # table + plot only

Results go to ``--out`` (default ``benchmarks/results/ablations``): one ``<row>.json`` per row
(written atomically; an existing one is reused unless ``--force``), ``baselines.json``,
``ablations.md`` (the table) and ``ablations.png`` (the plot). The validated catalog is built once
with the pipeline's own validate step (Great Expectations) into ``<out>/catalog``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from components.steps.environment import set_offline_defaults

set_offline_defaults()

logger = logging.getLogger("ablations")

#: the default profile's settings (pipelines/configs/profiles.yaml) that every row starts from; the
#: rows of the first study (2026-11) pre-trained without the same-product group members
BASE_TRAIN = {"steps": 250, "batch_size": 32, "learning_rate": 1.0e-4, "warmup_steps": 25, "seed": 0,
              "pretrain_listings": "train_split_without_groups"}
OFF = 0.0
#: the second study (issue 12): the first study's winner (MLM + MIM, 40 x 32 px in 8 x 8 patches,
#: 500 steps), pre-trained on the whole train split; each row adds one piece
P2_MODEL = {"itm_weight": OFF, "gmlm_weight": OFF, "gmim_weight": OFF, "infonce_weight": OFF,
            "image_height": 40, "image_width": 32, "patch_size": 8}
P2_TRAIN = {"steps": 500, "warmup_steps": 50, "pretrain_listings": "train_split"}
LPFT = {"freeze_backbone_steps": 50, "learning_rate": 3.0e-4, "backbone_lr_ratio": 1 / 3}

#: row name -> (description, ItemConfig overrides, TrainConfig overrides)
ROWS: dict[str, tuple[str, dict, dict]] = {
    "mlm_mim": ("MLM + MIM only", {"itm_weight": OFF, "gmlm_weight": OFF, "gmim_weight": OFF}, {}),
    "mlm_mim_itm": ("MLM + MIM + ITM", {"gmlm_weight": OFF, "gmim_weight": OFF}, {}),
    "mlm_mim_gmlm": ("MLM + MIM + GMLM", {"itm_weight": OFF, "gmim_weight": OFF}, {}),
    "mlm_mim_gmim": ("MLM + MIM + GMIM", {"itm_weight": OFF, "gmlm_weight": OFF}, {}),
    "no_gmim": ("MLM + MIM + GMLM + ITM (all but GMIM)", {"gmim_weight": OFF}, {}),
    "no_gmim_img40x32_p8": ("all but GMIM, image 40 x 32 in 8 x 8 patches",
                            {"gmim_weight": OFF, "image_height": 40, "image_width": 32, "patch_size": 8}, {}),
    "mlm_mim_img40x32_p8": ("MLM + MIM, image 40 x 32 in 8 x 8 patches",
                            {"itm_weight": OFF, "gmlm_weight": OFF, "gmim_weight": OFF,
                             "image_height": 40, "image_width": 32, "patch_size": 8}, {}),
    "mlm_mim_500": ("MLM + MIM, 500 steps (1.7 epochs of the sample)",
                    {"itm_weight": OFF, "gmlm_weight": OFF, "gmim_weight": OFF}, {"steps": 500, "warmup_steps": 50}),
    "mlm_mim_img40x32_p8_500": ("MLM + MIM, image 40 x 32 in 8 x 8 patches, 500 steps",
                                {"itm_weight": OFF, "gmlm_weight": OFF, "gmim_weight": OFF,
                                 "image_height": 40, "image_width": 32, "patch_size": 8},
                                {"steps": 500, "warmup_steps": 50}),
    "mlm_mim_mask75": ("MLM + MIM, MIM mask ratio 0.75",
                       {"itm_weight": OFF, "gmlm_weight": OFF, "gmim_weight": OFF, "mim_ratio": 0.75}, {}),
    "all_five_gmim01": ("all five, GMIM weight 0.1", {"gmim_weight": 0.1}, {}),
    "all_five": ("all five (MLM, MIM, GMLM, GMIM, ITM), weights 1", {}, {}),
    "all_five_gmlm3": ("all five, GMLM weight 3", {"gmlm_weight": 3.0}, {}),
    "all_five_gmim03": ("all five, GMIM weight 0.3", {"gmim_weight": 0.3}, {}),
    "all_five_gmlm3_gmim03": ("all five, GMLM 3, GMIM 0.3", {"gmlm_weight": 3.0, "gmim_weight": 0.3}, {}),
    "all_five_rawpix": ("all five, MIM/GMIM targets raw pixels (no per-patch normalisation)",
                        {"mim_norm_pix": False}, {}),
    "all_five_gmlm3_gmim03_rawpix": ("all five, GMLM 3, GMIM 0.3, raw-pixel targets",
                                     {"gmlm_weight": 3.0, "gmim_weight": 0.3, "mim_norm_pix": False}, {}),
    "all_five_gmlm5_gmim01": ("all five, GMLM 5, GMIM 0.1", {"gmlm_weight": 5.0, "gmim_weight": 0.1}, {}),
    "all_five_mlm30": ("all five, 30 % of title tokens masked", {"mlm_probability": 0.3}, {}),
    "all_five_mask75": ("all five, MIM/GMIM mask ratio 0.75", {"mim_ratio": 0.75}, {}),
    "all_five_mask25": ("all five, MIM/GMIM mask ratio 0.25", {"mim_ratio": 0.25}, {}),
    "all_five_patch8": ("all five, 8 x 8 patches (N = 80)", {"patch_size": 8}, {}),
    "all_five_img32": ("all five, image 40 x 32 (N = 5)", {"image_height": 40, "image_width": 32}, {}),
    "all_five_img40x32_p8": ("all five, image 40 x 32 in 8 x 8 patches (N = 20, same sequence length)",
                             {"image_height": 40, "image_width": 32, "patch_size": 8}, {}),
    "all_five_img40x32_p8_gmlm3_gmim03": ("all five, image 40 x 32 in 8 x 8 patches, GMLM 3, GMIM 0.3",
                                          {"image_height": 40, "image_width": 32, "patch_size": 8,
                                           "gmlm_weight": 3.0, "gmim_weight": 0.3}, {}),
    "all_five_batch64": ("all five, batches of 64 (125 steps, the same listings seen)", {},
                         {"batch_size": 64, "steps": 125, "warmup_steps": 12}),
    "all_five_500": ("all five, 500 steps", {}, {"steps": 500, "warmup_steps": 50}),
    "all_five_1000": ("all five, 1000 steps", {}, {"steps": 1000, "warmup_steps": 100}),
    # second study (issue 12): objectives that train the served vector
    "p2_mlm_mim": ("MLM + MIM (the former default), whole train split", P2_MODEL, P2_TRAIN),
    "p2_infonce": ("MLM + MIM + InfoNCE", {**P2_MODEL, "infonce_weight": 1.0}, P2_TRAIN),
    "p2_infonce_md": ("MLM + MIM + InfoNCE + modality dropout 0.2",
                      {**P2_MODEL, "infonce_weight": 1.0, "modality_dropout": 0.2}, P2_TRAIN),
    "p2_infonce_md_lpft": ("MLM + MIM + InfoNCE + modality dropout 0.2 + LP-FT (50 frozen steps, "
                           "new parts 3e-4, backbone 1e-4)",
                           {**P2_MODEL, "infonce_weight": 1.0, "modality_dropout": 0.2}, {**P2_TRAIN, **LPFT}),
    "p2_mlm_mim_lpft": ("MLM + MIM + LP-FT (no InfoNCE)", P2_MODEL, {**P2_TRAIN, **LPFT}),
}
METRICS = ("category_accuracy", "category_macro_f1", "recall@1", "recall@10", "mAP")
MODES = {"joint": "item", "text": "item_text_only", "image": "item_image_only"}


def prepare_catalog(catalog: str, out: Path, max_listings: int) -> Path:
    """The pipeline's validate step, once: ``<out>/catalog`` (validated parquet + split)."""
    from components.storage.layout import CATALOG_META
    from components.steps.training import validate_step
    cdir = out / "catalog"
    if not (cdir / CATALOG_META).exists():
        logger.info("validating %s (max_listings=%d) into %s", catalog, max_listings, cdir)
        validate_step(catalog, str(cdir), str(out / "quarantine.parquet"), str(out / "validation.json"),
                      str(out / "data_docs"), max_listings=max_listings)
    return cdir


def run_baselines(cdir: Path, out: Path) -> dict:
    """Baselines (MiniLM title, raw pixels, concatenation) on the same catalog, split and gallery."""
    from item_model.evaluation import concat_baseline, pixel_baseline, score_embeddings, text_baseline
    from item_model.io import write_json_atomic
    from item_model.processing_item import default_bert_path
    from components.steps.training import load_validated
    path = out / "baselines.json"
    if path.exists():
        return json.loads(path.read_text())
    df, _ = load_validated(str(cdir))
    split = df["split"].to_numpy()
    text, pixels = text_baseline(df, default_bert_path()), pixel_baseline(df)
    res = {name: score_embeddings(emb, df, split)[0] for name, emb in
           (("baseline_text_minilm", text), ("baseline_image_pixels", pixels),
            ("baseline_concat", concat_baseline(text, pixels)))}
    write_json_atomic(path, res)
    return res


def row_key(name: str, seed: int) -> str:
    """File stem of a row's result: ``<row>`` for seed 0, ``<row>@s<seed>`` otherwise."""
    return name if seed == 0 else f"{name}@s{seed}"


def run_row(name: str, cdir: Path, out: Path, threads: int, seed: int = 0,
            eval_dirs: dict[str, Path] | None = None) -> dict:
    """Pre-train one row's model (seed ``seed``) on ``cdir``'s training rows and score its joint,
    text-only and image-only embeddings on ``cdir`` and on every catalog of ``eval_dirs``
    (``{"full": whole validated catalog}``: the same model, the whole catalog as gallery and probe).

    The model folder and the embeddings (``emb_<catalog>_<mode>.npy``) stay in ``<out>/<row key>/``
    (ignored by git), so later metrics can be computed without training again.
    """
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from item_model.evaluation import score_embeddings
    from item_model.inference import embed_catalog
    from item_model.io import write_json_atomic
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor, default_bert_path
    from components.steps.training import load_validated, training_rows
    from item_model.train import TrainConfig, pretrain, save_training_curve

    desc, model_over, train_over = ROWS[name]
    train_settings = {**BASE_TRAIN, **train_over, "seed": seed}
    cfg = TrainConfig(**{**train_settings, "num_threads": threads, "log_every": 25})
    df, _ = load_validated(str(cdir))
    bert = default_bert_path()
    torch.manual_seed(cfg.seed)
    model = ItemModel.from_bert(bert, **model_over)
    processor = ItemProcessor(AutoTokenizer.from_pretrained(bert), model.config)
    key = row_key(name, seed)
    logger.info("row %s (%s): %s %s", key, desc, model_over, train_settings)
    t0 = time.perf_counter()
    history = pretrain(model, processor, training_rows(df, cfg.pretrain_listings), cfg)
    train_s = time.perf_counter() - t0
    row_dir = out / key
    row_dir.mkdir(parents=True, exist_ok=True)
    save_training_curve(history, row_dir)
    model.save_pretrained(row_dir / "model")
    processor.save_pretrained(row_dir / "model")
    res = {"row": name, "seed": seed, "description": desc, "model_config": model_over,
           "train_config": train_settings, "train_wall_s": round(train_s, 1), "step0_losses": history[0],
           "final_losses": history[-1],
           "command": f".venv/bin/python benchmarks/ablations.py --rows {name} --seeds {seed} --force"}
    for cname, cpath in {"sample": cdir, **(eval_dirs or {})}.items():
        edf, _ = (df, None) if cname == "sample" else load_validated(str(cpath))
        split = edf["split"].to_numpy()
        scores = {}
        for mode, mkey in MODES.items():
            emb = embed_catalog(model, processor, edf, mode)
            np.save(row_dir / f"emb_{cname}_{mode}.npy", emb)
            scores[mkey] = score_embeddings(emb, edf, split)[0]
            logger.info("%s [%s] %s: %s", key, cname, mode, {m: round(scores[mkey][m], 4) for m in METRICS})
        if cname == "sample":
            res.update(scores)
        else:
            res[cname] = scores
    write_json_atomic(out / f"{key}.json", res)
    return res


def embed_saved_row(key: str, out: Path, cname: str, cdir: Path, modes=("joint", "text")) -> None:
    """Embed catalog ``cdir`` (named ``cname``) with the model a row already trained and saved in
    ``<out>/<key>/model``: ``emb_<cname>_<mode>.npy`` beside it (joint = the ``[CLS]`` of the joint
    pass, the row's own read-out weight 0), for :mod:`benchmarks.model_comparison`."""
    import numpy as np

    from item_model.inference import embed_catalog
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    from components.steps.training import load_validated
    model_dir = out / key / "model"
    model = ItemModel.from_pretrained(model_dir)
    model.config.readout_text_weight = 0.0
    processor = ItemProcessor.from_pretrained(model_dir, model.config)
    df, _ = load_validated(str(cdir))
    for mode in modes:
        path = out / key / f"emb_{cname}_{mode}.npy"
        if not path.exists():
            logger.info("%s: embedding %s (%d listings, %s)", key, cname, len(df), mode)
            np.save(path, embed_catalog(model, processor, df, mode))


def load_rows(out: Path) -> list[dict]:
    rows = [json.loads((out / f"{n}.json").read_text()) for n in ROWS if (out / f"{n}.json").exists()]
    return rows


def prepare_full_catalog(catalog: str, out: Path) -> Path:
    """The whole catalog, validated once into ``<out>/catalog_full`` (the headline's gallery and probe)."""
    (out / "full").mkdir(parents=True, exist_ok=True)
    return prepare_catalog(catalog, out / "full", 0)


def report(out: Path) -> Path | None:
    """Write ``ablations.md`` (table: rows x metrics for joint / text-only / image-only, and the
    baselines) and ``ablations.png`` (each row's joint category accuracy and Recall@1 as bars, the
    baselines as lines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from item_model.io import atomic_path, write_text_atomic
    rows = load_rows(out)
    if not rows:
        return None
    base = json.loads((out / "baselines.json").read_text()) if (out / "baselines.json").exists() else {}
    head = "| row | embedding | cat. acc | macro-F1 | R@1 | R@10 | mAP | train s |\n|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        for key, label in (("item", "joint"), ("item_text_only", "text only"), ("item_image_only", "image only")):
            m = r[key]
            lines.append(f"| {r['row'] if label == 'joint' else ''} | {label} | "
                         + " | ".join(f"{m[k]:.4f}" for k in METRICS)
                         + f" | {r['train_wall_s'] if label == 'joint' else ''} |")
    for name, m in base.items():
        lines.append(f"| {name} | baseline | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " | |")
    md = "# ITEm ablations\n\n" + head + "\n".join(lines) + "\n\nRe-run a row: " \
         "`.venv/bin/python benchmarks/ablations.py --rows NAME --force`\n"
    write_text_atomic(out / "ablations.md", md)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.38 * len(rows) + 2.0), sharey=True)
    names = [r["row"] for r in rows]
    for ax, metric, title in ((axes[0], "category_accuracy", "leaf-category accuracy (probe)"),
                              (axes[1], "recall@1", "same-product Recall@1")):
        values = [r["item"][metric] for r in rows]
        ax.barh(names, values, color="#4c72b0")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=7)
        for (name, m), colour in zip(base.items(), ("#dd8452", "#55a868", "#c44e52")):
            ax.axvline(m[metric], color=colour, linestyle="--", label=f"{name.replace('baseline_', '')} {m[metric]:.3f}")
        lo = min(values + [m[metric] for m in base.values() if m[metric] > 0.85] + [0.9])
        ax.set_xlim(lo - 0.01, 1.0)
        ax.set_title(f"{title}, joint [CLS]")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=3)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.tight_layout()
    png = out / "ablations.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    print(md)
    return png


def main() -> None:
    from pipelines.config import DEFAULT_CATALOG
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="", help="comma-separated row names (see --list), or 'all'")
    ap.add_argument("--catalog", default=DEFAULT_CATALOG)
    ap.add_argument("--max-listings", type=int, default=12000, help="the default profile's sample size")
    ap.add_argument("--out", default="benchmarks/results/ablations")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="re-run rows whose JSON exists")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, one run each (default 0)")
    ap.add_argument("--eval-full", action="store_true",
                    help="also score each row's model on the whole validated catalog (gallery and probe)")
    ap.add_argument("--embed-full", action="store_true",
                    help="only embed the whole validated catalog with rows already trained (no training)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report", action="store_true", help="only write the table and plot")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.list:
        for name, (desc, m, t) in ROWS.items():
            print(f"{name:24s} {desc}  model={m} train={t}")
        return
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = list(ROWS) if args.rows == "all" else [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; known: {list(ROWS)}")
    if args.embed_full:
        full = prepare_full_catalog(args.catalog, out)
        for seed in [int(x) for x in args.seeds.split(",")]:
            for name in names:
                embed_saved_row(row_key(name, seed), out, "full", full)
        return
    if not args.report:
        cdir = prepare_catalog(args.catalog, out, args.max_listings)
        run_baselines(cdir, out)
        eval_dirs = {}
        if args.eval_full:
            eval_dirs["full"] = prepare_full_catalog(args.catalog, out)
            run_baselines(eval_dirs["full"], out / "full")
        for seed in [int(x) for x in args.seeds.split(",")]:
            for name in names:
                key = row_key(name, seed)
                if (out / f"{key}.json").exists() and not args.force:
                    logger.info("row %s: reusing %s", key, out / f"{key}.json")
                    continue
                run_row(name, cdir, out, args.threads, seed, eval_dirs)
                report(out)
    report(out)


if __name__ == "__main__":
    main()
