"""``torchrun`` entry point of data-parallel pre-training: every rank runs
:func:`components.steps.training.pretrain_step` on the validated catalog artifact (the process group is
set up by :func:`item_model.distributed.init_distributed`)::

    torchrun --nproc_per_node 2 -m components.steps.torchrun_pretrain VALIDATED_CATALOG_DIR MODEL_DIR \\
        --model-config '{...}' --train-config '{...}'

It lives in the platform (not beside :mod:`item_model.distributed`) because it reads a pipeline artifact.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from components.steps.training import pretrain_step


def main(argv: list[str] | None = None) -> None:
    """Parse the torchrun command line and run :func:`pretrain_step` on this rank."""
    ap = argparse.ArgumentParser(description="ITEm pre-training, data-parallel under torchrun")
    ap.add_argument("catalog_dir", help="validated catalog artifact (validate step output)")
    ap.add_argument("model_dir", help="where rank 0 writes the Hugging Face model folder")
    ap.add_argument("--model-config", default="{}", help="ItemConfig overrides, JSON")
    ap.add_argument("--train-config", default="{}", help="TrainConfig fields, JSON (batch_size = global batch)")
    ap.add_argument("--bert-path", default="")
    ap.add_argument("--checkpoint-root", default="")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(name)s: %(message)s")
    pretrain_step(args.catalog_dir, args.model_dir, json.loads(args.model_config), json.loads(args.train_config),
                  args.bert_path, progress=os.environ.get("RANK", "0") == "0",
                  checkpoint_root=args.checkpoint_root, resume=args.resume)


if __name__ == "__main__":
    main()
