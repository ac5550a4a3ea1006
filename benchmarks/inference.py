"""What ITEm's inference costs per path (issue 32): listings per core-second of each vector kind (joint,
title-only, photo-only, and all three at once as the catalog index computes them) at batch 1 and 64,
for float32, bf16 autocast (``ItemConfig.inference_precision: bf16``) and PyTorch dynamic int8
(``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``), beside the peer a sceptic would
try: all-MiniLM-L6-v2 as sentence-transformers runs it (BERT + mean pooling of the token states,
attention-masked; here through ``transformers`` directly, the same forward pass) in float32 and bf16;
how far each path's vectors move from float32 (cosine; whether each listing's nearest neighbour among
the sample stays the same); and core-hours per million listings for the three vectors.

    .venv/bin/python benchmarks/inference.py --model item-storage/registry/versions/<v>/model \
        [--listings 512] [--json out.json] [--evaluate CATALOG_DIR]

One thread (listings per core-second); the all-three row also with every core. ``--evaluate DIR`` (a
validated catalog folder, e.g. a run's ``validate-catalog/validated_catalog``) also runs the pipeline's
evaluate step in float32 and in bf16 (``ITEM_INFERENCE_PRECISION``) and prints Recall@1, mAP, category
accuracy and title-decides Recall@1 of the served vector side by side. The serving side (``/embed``
p50/p99 and CPU per embedding at each concurrency) is ``benchmarks/serving.py`` run once per path:
``ITEM_INFERENCE_PRECISION=bf16 .venv/bin/python benchmarks/serving.py`` (the server inherits it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

PATHS = ("fp32", "bf16", "int8-dynamic")
KINDS = ("joint", "text", "image")


def same_nearest(vec: np.ndarray, ref: np.ndarray) -> float:
    """Share of rows whose nearest other row is the same under ``vec`` and ``ref``."""
    sims, sims_ref = vec @ vec.T, ref @ ref.T
    np.fill_diagonal(sims, -2)
    np.fill_diagonal(sims_ref, -2)
    return float(np.mean(sims.argmax(1) == sims_ref.argmax(1)))


def timed(fn, n: int, repeats: int = 2) -> tuple[float, object]:
    """(best listings per second over ``repeats`` calls of ``fn`` on ``n`` listings, its last result)."""
    best, out = 0.0, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best, out


def minilm_vectors(bert, tokenizer, titles: list[str], batch: int, bf16: bool):
    """all-MiniLM-L6-v2 sentence vectors as sentence-transformers computes them: mean of the token
    states under the attention mask, L2-normalised. (n, 384) float32."""
    import torch
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(titles), batch):
            enc = tokenizer(titles[s:s + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = bert(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
    return np.concatenate(out)


def evaluate_paths(model_dir: str, catalog_dir: str) -> dict:
    """The evaluate step in fp32 and bf16 on ``catalog_dir``: the served vector's metrics of each."""
    from components.steps.training import evaluate_step
    from item_model.modeling_item import PRECISION_ENV

    out = {}
    for path in ("fp32", "bf16"):
        os.environ[PRECISION_ENV] = path
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = evaluate_step(catalog_dir, model_dir, str(Path(tmp) / "eval.json"), modality_ablation=True,
                                progress=False)
        item = res["models"]["item"]
        out[path] = {k: item.get(k) for k in ("recall@1", "mAP", "category_accuracy", "title_decides_recall@1",
                                             "titles_disagree_recall@1")}
        out[path]["wall_s"] = time.perf_counter() - t0
        print(f"evaluate {path}: " + "  ".join(f"{k} {v:.4f}" for k, v in out[path].items()), flush=True)
    os.environ.pop(PRECISION_ENV, None)
    out["bf16_minus_fp32"] = {k: out["bf16"][k] - out["fp32"][k] for k in out["fp32"] if k != "wall_s"
                              and out["fp32"][k] is not None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared" / "datasets" / "fashion-product-images-small"))
    ap.add_argument("--listings", type=int, default=512)
    ap.add_argument("--batch1", type=int, default=48, help="listings embedded one at a time for batch 1")
    ap.add_argument("--evaluate", default="", help="a validated catalog folder: evaluate in fp32 and bf16")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, BertModel

    from components.catalog import iter_catalog
    from item_model.hardware import cpu_has_native_bf16
    from item_model.inference import embed_catalog_modes, embed_listings, precision
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor, default_bert_path

    model = ItemModel.from_pretrained(args.model).eval()
    proc = ItemProcessor.from_pretrained(args.model, model.config)
    df = next(iter_catalog(args.catalog, batch_rows=args.listings)).dropna(subset=["title"]).head(args.listings)
    df = df.reset_index(drop=True)
    images = [proc.image_array(r) for r in df[["product_id", "image_bytes", "image_uri"]].to_dict("records")]
    titles = df["title"].tolist()
    int8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    int8.config.inference_precision = "fp32"              # a copy: int8 weights, fp32 activations
    result = {"model": args.model, "listings": len(df), "batch1_listings": args.batch1, "torch": torch.__version__,
              "cpu_native_bf16": cpu_has_native_bf16(), "threads_all": torch.get_num_threads(),
              "image_tokens": getattr(model.config, "image_tokens", "patches"), "rows": []}
    inputs = {"joint": (titles, images), "text": (titles, None), "image": (None, images)}
    ref: dict[str, np.ndarray] = {}

    def run_path(path: str, fn):
        m = int8 if path == "int8-dynamic" else model
        with precision(model, "bf16" if path == "bf16" else "fp32"):
            return fn(m)

    torch.set_num_threads(1)
    for path in PATHS:
        for kind in KINDS:
            t, im = inputs[kind]
            for batch in (64, 1):
                n = len(df) if batch == 64 else args.batch1
                sl = slice(0, n)

                def go(m, t=t, im=im, batch=batch, sl=sl):
                    return embed_listings(m, proc, t[sl] if t else None, im[sl] if im else None, batch_size=batch)
                run_path(path, lambda m: embed_listings(m, proc, t[:4] if t else None, im[:4] if im else None))
                rate, vec = timed(lambda: run_path(path, go), n)
                row = {"path": path, "kind": kind, "batch": batch, "threads": 1, "listings_per_core_s": rate}
                if batch == 64:
                    if path == "fp32":
                        ref[kind] = vec
                    cos = np.sum(vec * ref[kind], axis=1)
                    row.update(cosine_to_fp32_min=float(cos.min()), cosine_to_fp32_mean=float(cos.mean()),
                               same_nearest_neighbour=same_nearest(vec, ref[kind]))
                result["rows"].append(row)
                print(f"{path:13s} {kind:6s} batch {batch:2d}: {rate:7.1f} listings/core-s" +
                      (f"  cos to fp32 min {row['cosine_to_fp32_min']:.4f} mean {row['cosine_to_fp32_mean']:.5f} "
                       f"same NN {row['same_nearest_neighbour']:.3f}" if batch == 64 else ""), flush=True)
    # all three vectors at once, as the catalog index and the evaluation compute them
    for threads in (1, result["threads_all"]):
        torch.set_num_threads(threads)
        for path in PATHS:
            rate, _ = timed(lambda: run_path(path, lambda m: embed_catalog_modes(m, proc, df, KINDS, batch_size=64,
                                                                                 progress=False)), len(df))
            row = {"path": path, "kind": "all three", "batch": 64, "threads": threads,
                   "listings_per_s": rate, "listings_per_core_s": rate / threads,
                   "core_hours_per_million": 1e6 / (rate / threads) / 3600}
            result["rows"].append(row)
            print(f"{path:13s} all three, {threads} thread(s): {rate:7.1f} listings/s, "
                  f"{row['core_hours_per_million']:.2f} core-hours per million listings", flush=True)
    # the peer: MiniLM title vectors
    torch.set_num_threads(1)
    bert_path = default_bert_path()
    bert, tok = BertModel.from_pretrained(bert_path).eval(), AutoTokenizer.from_pretrained(bert_path)
    for bf16 in (False, True):
        for batch in (64, 1):
            n = len(df) if batch == 64 else args.batch1
            rate, _ = timed(lambda: minilm_vectors(bert, tok, titles[:n], batch, bf16), n)
            row = {"path": "minilm-" + ("bf16" if bf16 else "fp32"), "kind": "text", "batch": batch, "threads": 1,
                   "listings_per_core_s": rate}
            result["rows"].append(row)
            print(f"{row['path']:13s} text   batch {batch:2d}: {rate:7.1f} listings/core-s", flush=True)
    if args.evaluate:
        torch.set_num_threads(result["threads_all"])
        result["evaluate"] = evaluate_paths(args.model, args.evaluate)
    if args.json:
        from item_model.io import write_json_atomic
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
