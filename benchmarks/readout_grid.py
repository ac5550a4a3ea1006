"""The served vector's read-out over both same-product checks (issue 30, item 3): every
``s = normalize(w t + j + u i)`` of a trained model (t the title stream's vector, j the joint [CLS], i
the photo stream's vector) scored on the evaluation's three searches at once: same-product,
title-decides (identical titles, different photos: the title must decide) and titles-disagree (one
product's titles rewritten: the photo must carry it), each Recall@1 over the whole evaluated
sample as the gallery, as the evaluate step searches it.

    .venv/bin/python benchmarks/readout_grid.py WORK SEED [--json out.json]

WORK: a ``benchmarks/titles_disagree_seeds.py`` work folder (``catalog/``, ``model_seed<SEED>/``). The
vectors are computed once (the model's own inference precision is overridden to bf16, as in
benchmarks/inference.py) and kept in ``WORK/readout_vectors_seed<SEED>.npz``. u = 0 is the pipeline's
read-out; ``train_config.readout_checks`` chooses w over the checks named there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

W_GRID = (0, 1, 2, 4, 8, 10)
U_GRID = (0, 0.5, 1, 2, 4, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("seed")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    from components.steps.training import load_validated
    from item_model.evaluation import paired_groups
    from item_model.inference import embed_catalog_modes
    from item_model.metrics import retrieval_details
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    from item_model.title_decides import title_decides_groups
    from item_model.titles_disagree import titles_disagree_catalog

    work, seed = Path(args.work), args.seed
    df, _ = load_validated(str(work / "catalog"))
    rewritten, groups = titles_disagree_catalog(df)
    cache = work / f"readout_vectors_seed{seed}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            v = {k: z[k] for k in z.files}
    else:
        model_dir = work / f"model_seed{seed}"
        model = ItemModel.from_pretrained(str(model_dir)).eval()
        proc = ItemProcessor.from_pretrained(str(model_dir), model.config)
        model.config.readout_text_weight = 0.0              # the joint kind is then j itself
        model.config.inference_precision = "bf16"
        own = embed_catalog_modes(model, proc, df, ("joint", "text", "image"), progress=False)
        members = np.flatnonzero(groups >= 0)
        new = embed_catalog_modes(model, proc, rewritten.iloc[members], ("joint", "text"), progress=False)
        v = {"j": own["joint"], "t": own["text"], "i": own["image"], "tdj": own["joint"].copy(),
             "tdt": own["text"].copy()}
        v["tdj"][members], v["tdt"][members] = new["joint"], new["text"]
        np.savez(cache, **v)
    same = paired_groups(df["group_id"].fillna(-1).astype("int64").to_numpy())
    titled, td = title_decides_groups(df), paired_groups(groups)

    def l2(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    out = {"work": str(work), "seed": seed, "n_listings": int(len(df)), "grid": {}}
    print("   w     u   same-product  title-decides  titles-disagree   mean")
    for w in W_GRID:
        for u in U_GRID:
            s, s_td = l2(w * v["t"] + v["j"] + u * v["i"]), l2(w * v["tdt"] + v["tdj"] + u * v["i"])
            r = [float(retrieval_details(s, same, ks=(1,))["recall@1"].mean()),
                 float(retrieval_details(s, titled, ks=(1,))["recall@1"].mean()),
                 float(retrieval_details(s_td, td, ks=(1,))["recall@1"].mean())]
            out["grid"][f"w={w},u={u}"] = {"recall@1": r[0], "title_decides_recall@1": r[1],
                                           "titles_disagree_recall@1": r[2], "mean": float(np.mean(r))}
            print(f"{w:4g}  {u:4g}   {r[0]:.4f}        {r[1]:.4f}         {r[2]:.4f}          {np.mean(r):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
