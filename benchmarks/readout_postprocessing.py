"""Post-processing of the served vector fitted on the catalog itself (no labels): centring and
PCA-whitening (Su et al. 2021, "Whitening Sentence Representations for Better Semantics and Faster
Retrieval", arXiv:2103.15316: x -> (x - mu) U diag(1/sqrt(lambda + eps)), optionally keeping the first
d components, then L2-normalised), scored with the pipeline's own evaluation (same split, gallery,
probe with C chosen on validation, title-decides check) on the stored whole-catalog embeddings of
finished ``item run --profile full`` runs. No model is re-run: the embeddings come from the run's
``evaluate`` step (``evaluate/catalog_index/embeddings.npz`` of runs made before the index steps
moved out of it) and the run's validated catalog.

    .venv/bin/python benchmarks/readout_postprocessing.py RUN_DIR [RUN_DIR ...] --json out.json

RUN_DIR is a kfp.local pipeline run folder (``runs/<id>/item-training-<timestamp>``).
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


def l2(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def whiten(x: np.ndarray, dim: int | None = None, eps: float = 1e-6) -> np.ndarray:
    """PCA-whitening fitted on ``x`` itself (n, D) float32 -> (n, dim or D) float32, L2-normalised
    (Su et al. 2021). ``eps`` is added to each eigenvalue."""
    mu = x.mean(0)
    xc = (x - mu).astype(np.float64)
    vals, vecs = np.linalg.eigh(xc.T @ xc / len(x))
    order = np.argsort(vals)[::-1]
    w = vecs[:, order] / np.sqrt(vals[order] + eps)
    return l2(xc @ (w[:, :dim] if dim else w))


VARIANTS = {"raw": lambda x: x, "centred": lambda x: l2(x - x.mean(0)), "whiten_384": whiten,
            "whiten_256": lambda x: whiten(x, 256), "whiten_128": lambda x: whiten(x, 128),
            "whiten_384_eps1e-3": lambda x: whiten(x, eps=1e-3)}


def main() -> None:
    from item_model.evaluation import score_embeddings
    from components.steps.training import load_validated
    from item_model.title_decides import title_decides_groups

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    out: dict = {"method": "post-processing fitted on every listing of the catalog (no labels), scored with "
                           "item_model.evaluation.score_embeddings on the run's own split", "runs": {}}
    for run in args.runs:
        run = Path(run)
        df, _ = load_validated(str(run / "validate-catalog" / "validated_catalog"))
        x = np.load(run / "evaluate" / "catalog_index" / "embeddings.npz")["item"]
        split, groups = df["split"].to_numpy(), title_decides_groups(df)
        res = {}
        for name, fn in VARIANTS.items():
            t0 = time.perf_counter()
            metrics, _ = score_embeddings(fn(x), df, split, groups)
            res[name] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            print(f"{run.parent.name} {name:20s} {time.perf_counter() - t0:5.0f} s  "
                  + "  ".join(f"{k} {res[name][k]:.4f}" for k in ("category_accuracy", "category_macro_f1",
                                                               "recall@1", "mAP", "title_decides_recall@1")),
                  flush=True)
        out["runs"][str(run)] = res
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
