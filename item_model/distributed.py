"""Data-parallel pre-training with PyTorch DDP (gloo on CPU, NCCL on GPU), launched by ``torchrun``.

Each rank builds the same global batch plan (same seed: the same listings, ITM pairs and masks) and
loads only its own slice of the listings (its shard of the catalog); gradients are averaged by DDP,
and every objective is normalised by its *global* count of masked tokens / patches / pairs, so the
loss curve equals that of one process with the same global batch (up to float summation order
and dropout draws). Only rank 0 writes artifacts.

    torchrun --nproc_per_node 2 -m components.steps.torchrun_pretrain VALIDATED_CATALOG_DIR MODEL_DIR \\
        --train-config '{"steps": 250, "batch_size": 32}' [--model-config '{}'] [--checkpoint-root DIR]

On a Kubeflow cluster the same command is the entry point of each replica of a PyTorchJob
(``docs/deploy.md``); torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) is all it reads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes artifacts and logs progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistributedContext:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1), NCCL when a
    GPU is present (one per local rank), else gloo. Without ``WORLD_SIZE`` it is a single process.

    Returns:
        the :class:`DistributedContext` of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        logger.info("rank %d/%d joined the %s process group", dist.get_rank(), world, dist.get_backend())
    rank = dist.get_rank() if world > 1 else 0
    return DistributedContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def all_reduce_sum(x: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Sum of ``x`` over ranks (a copy; ``x`` itself unchanged). Identity for a single process."""
    if not ctx.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def all_gather_object(obj, ctx: DistributedContext) -> list:
    """``obj`` of every rank, in rank order (``torch.distributed.all_gather_object``: pickled in
    memory between the ranks of this job, never read from storage). ``[obj]`` for a single process.
    A collective: every rank must call it."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def finish_distributed(ctx: DistributedContext) -> None:
    """Wait for every rank, then leave the process group (no-op for a single process)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
