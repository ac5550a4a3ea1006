"""Training throughput on this machine, measured in one run and printed (no pass/fail):

* matmul peak (GFLOP/s) of a 2048 x 2048 x 2048 product (fp32, or bf16 with ``--bf16``);
* ITEm training samples/s and achieved GFLOP/s (all five objectives, AdamW step) at the default
  sequence length (mean title tokens of a real batch + N patches);
* a plain ``BertModel`` forward + backward + AdamW step on the same token count (the same padded
  title batches and attention masks, N ordinary tokens in place of the N patches);
* the data-loading rate on its own (JPEG decode, resize, tokenise, patch, mask: samples/s).

FLOPs per training sample follow nanoGPT's ``estimate_mfu`` (Kaplan et al. 2020, appendix / PaLM
appendix B): 6 * N_matmul * L + 12 * layers * D * L^2, with N_matmul the encoder's matrix
parameters and L the sequence length; the heads' extra work is not counted (it is what the ITEm
step adds over plain BERT, and shows up as the ratio of the two step times).

    .venv/bin/python benchmarks/train_throughput.py [--steps 10] [--batch-size 32] [--threads 0] [--profile default]

Without ``--profile`` the model has ItemConfig's defaults (all five objectives, the costliest step);
``--profile NAME`` takes that run profile's ``model_config`` (``pipelines/configs/profiles.yaml``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from components.steps.environment import set_offline_defaults

set_offline_defaults()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertModel  # noqa: E402

from components.catalog import iter_catalog  # noqa: E402
from item_model.modeling_item import ItemModel  # noqa: E402
from item_model.processing_item import ItemProcessor, ListingDataset, PretrainingCollator, default_bert_path  # noqa: E402
from pipelines.config import DEFAULT_CATALOG, load_profile  # noqa: E402


def matmul_peak(n: int = 2048, reps: int = 10, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def encoder_flops_per_sample(bert: BertModel, seq_len: int) -> float:
    cfg = bert.config
    n_matmul = sum(p.numel() for n, p in bert.encoder.named_parameters() if p.dim() == 2)
    return 6 * n_matmul * seq_len + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len ** 2


def time_steps(step_fn, steps: int) -> float:
    step_fn()                                  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--catalog", default=DEFAULT_CATALOG)
    ap.add_argument("--json", default="", help="also write the numbers to this JSON file")
    ap.add_argument("--profile", default="",
                    help="use this run profile's model_config (default: all five objectives, the costliest step)")
    ap.add_argument("--model-config", default="{}",
                    help='JSON ItemConfig overrides on top of --profile, e.g. \'{"infonce_weight": 0, "modality_dropout": 0}\' '
                         "(the MLM + MIM step issue 12 was filed against)")
    ap.add_argument("--foreach-adamw", action="store_true",
                    help="the for-each AdamW (item_model.train used it before the fused one)")
    ap.add_argument("--bf16", action="store_true",
                    help="forward passes under CPU bf16 autocast (AVX512-BF16/AMX); MFU vs the bf16 matmul peak")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bert_path = default_bert_path()
    df = next(iter_catalog(args.catalog, batch_rows=2048)).dropna(subset=["title"]).reset_index(drop=True)
    overrides = dict(load_profile(args.profile)["model_config"] if args.profile else {})
    overrides.update(json.loads(args.model_config))
    model = ItemModel.from_bert(bert_path, **overrides)
    processor = ItemProcessor(AutoTokenizer.from_pretrained(bert_path), model.config)
    dataset, collate = ListingDataset(df, processor), PretrainingCollator(processor, seed=0)
    b = args.batch_size

    # data loading alone
    n_load = min(len(df), 1024)
    t = time.perf_counter()
    batches = [collate([dataset[i] for i in range(s, s + b)]) for s in range(0, n_load - b + 1, b)]
    load_rate = len(batches) * b / (time.perf_counter() - t)
    seq_len = int(np.mean([x["input_ids"].shape[1] for x in batches])) + model.config.num_patches

    # ITEm training step
    model.train()
    fused = not args.foreach_adamw
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)     # fused, as item_model.train
    it = iter(batches * (args.steps + 2))

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def item_step():
        with autocast:
            out = model(**next(it))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    item_s = time_steps(item_step, args.steps)

    # plain BERT on the same token count and padding: each real batch's title tokens and attention
    # mask, followed by N ordinary tokens in place of the patches
    bert = BertModel.from_pretrained(bert_path, add_pooling_layer=False)
    bert.train()
    bopt = torch.optim.AdamW(bert.parameters(), lr=1e-4, fused=fused)
    n = model.config.num_patches
    bert_batches = [(torch.cat([x["input_ids"], torch.randint(1000, 30000, (b, n))], dim=1),
                     torch.cat([x["attention_mask"], torch.ones(b, n, dtype=x["attention_mask"].dtype)], dim=1))
                    for x in batches]
    bit = iter(bert_batches * (args.steps + 2))

    def bert_step():
        ids, mask = next(bit)
        with autocast:
            loss = bert(input_ids=ids, attention_mask=mask).last_hidden_state.float().pow(2).mean()
        bopt.zero_grad(set_to_none=True)
        loss.backward()
        bopt.step()
    bert_s = time_steps(bert_step, args.steps)

    flops = encoder_flops_per_sample(bert, seq_len)
    peak = matmul_peak(dtype=torch.bfloat16 if args.bf16 else torch.float32)
    res = {
        "threads": torch.get_num_threads(), "batch_size": b, "seq_len": seq_len,
        "dtype": "bf16 autocast" if args.bf16 else "fp32", "adamw": "fused" if fused else "foreach",
        "model_config_overrides": overrides,
        "matmul_peak_gflops": round(peak, 1), "load_average_1min": os.getloadavg()[0],
        "item_samples_per_s": round(b / item_s, 1), "item_gflops": round(flops * b / item_s / 1e9, 1),
        "item_mfu": round(flops * b / item_s / 1e9 / peak, 3),
        "bert_samples_per_s": round(b / bert_s, 1), "bert_gflops": round(flops * b / bert_s / 1e9, 1),
        "item_step_over_bert_step": round(item_s / bert_s, 3),
        "data_loading_samples_per_s": round(load_rate, 1),
        "data_loading_over_training": round(load_rate / (b / item_s), 1),
    }
    for k, v in res.items():
        print(f"{k:28s} {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
