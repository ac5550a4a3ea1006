"""A first measurement for issue 32 (cheaper inference): ITEm's three vectors (joint, title-only,
photo-only) in float32, PyTorch dynamic int8 (``torch.ao.quantization.quantize_dynamic`` on every
``nn.Linear``) and bfloat16 autocast, on real catalog listings: listings per second on one thread and
on every core, and how far each path's vectors move from float32 (cosine, and whether the nearest
neighbour among the sample stays the same).

    .venv/bin/python benchmarks/inference_precision.py --model item-storage/registry/versions/<v>/model \
        [--listings 512] [--json out.json]

Not the issue's whole benchmark (no ONNX Runtime, no serving p50/p99, no MiniLM peer, no catalog-scale
Recall@1 / mAP): the question here is only whether dynamic int8 or bf16 is worth building into the
inference path at all on this CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared" / "datasets" / "fashion-product-images-small"))
    ap.add_argument("--listings", type=int, default=512)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import torch

    from components.catalog import iter_catalog
    from item_model.inference import embed_listings
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor

    model = ItemModel.from_pretrained(args.model).eval()
    proc = ItemProcessor.from_pretrained(args.model, model.config)
    df = next(iter_catalog(args.catalog, batch_rows=args.listings)).head(args.listings)
    h, w = proc.image_size
    from PIL import Image
    import io
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((w, h))) for b in df["image_bytes"]]
    titles = df["title"].tolist()
    paths = {"fp32": model,
             "int8-dynamic": torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)}
    kinds = {"joint": (titles, images), "text": (titles, None), "image": (None, images)}
    result = {"model": args.model, "listings": len(df), "torch": torch.__version__, "rows": []}
    ref = {}
    for threads in (1, torch.get_num_threads()):
        torch.set_num_threads(threads)
        for name in ("fp32", "int8-dynamic", "bf16-autocast"):
            m = paths.get(name, model)
            for kind, (t, im) in kinds.items():
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16-autocast"):
                    embed_listings(m, proc, t[:8] if t else None, im[:8] if im else None, batch_size=64)   # warm-up
                    t0 = time.perf_counter()
                    vec = embed_listings(m, proc, t, im, batch_size=64)
                    wall = time.perf_counter() - t0
                if name == "fp32":
                    ref[kind] = vec
                cos = np.sum(vec * ref[kind], axis=1)
                sims, sims_ref = vec @ vec.T, ref[kind] @ ref[kind].T
                np.fill_diagonal(sims, -2)
                np.fill_diagonal(sims_ref, -2)
                same_nn = float(np.mean(sims.argmax(1) == sims_ref.argmax(1)))
                row = {"path": name, "kind": kind, "threads": threads, "listings_per_s": len(df) / wall,
                       "cosine_to_fp32_min": float(cos.min()), "cosine_to_fp32_mean": float(cos.mean()),
                       "same_nearest_neighbour": same_nn}
                result["rows"].append(row)
                print(f"{threads} thread(s) {name:14s} {kind:6s} {row['listings_per_s']:8.1f} listings/s  "
                      f"cos to fp32 min {row['cosine_to_fp32_min']:.4f} mean {row['cosine_to_fp32_mean']:.5f}  "
                      f"same NN {same_nn:.3f}", flush=True)
    if args.json:
        from item_model.io import write_json_atomic
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
