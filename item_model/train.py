"""Plain ITEm pre-training loop (in the manner of nanoGPT's ``train.py``): AdamW, linear warm-up
then cosine decay, gradient clipping, fixed seeds, one log line per ``log_every`` steps."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .evaluation import READOUT_CHECKS
from .hardware import cpu_has_native_bf16
from .io import PROGRESS_INTERVAL, write_json_atomic
from .modeling_item import ItemModel
from .title_decides import normalise_title
from .processing_item import ItemProcessor, ListingDataset, PretrainingCollator

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings. ``steps`` optimizer steps of ``batch_size`` listings each."""

    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 1e-4        # peak AdamW learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1          # cosine decays to learning_rate * min_lr_ratio
    grad_clip: float = 1.0             # max global L2 norm of the gradients
    seed: int = 0
    num_threads: int = 0               # torch intra-op threads; 0 = leave torch's default
    log_every: int = 10
    checkpoint_every: int = 0          # steps between checkpoints; 0 = no checkpoints
    keep_checkpoints: int = 2
    bf16_autocast: bool | str = False  # CPU: forward under bf16 autocast; "auto" = when the CPU has native bf16 (cpu_has_native_bf16); GPU: always
    freeze_backbone_steps: int = 0     # LP-FT: the first steps train only the new parts (patch projection, heads)
    backbone_lr_ratio: float = 1.0     # LP-FT: the pre-trained backbone's learning rate / the new parts'
    pretrain_listings: str = "train_split"   # which listings pre-training reads (components.steps.training.training_rows)
    title_batches: float = 0.0         # share of each batch drawn as same-title clusters (hard InfoNCE negatives; title_clusters)
    title_cluster_size: int = 4        # listings per same-title cluster
    readout_weights: tuple = ()        # after training, the served vector's w chosen among these on the validation split (evaluation.choose_readout_weight); () = keep model_config's
    readout_checks: tuple = ("same_product", "title_decides")   # the validation searches w is chosen on (evaluation.READOUT_CHECKS)

    def __post_init__(self):
        if self.bf16_autocast not in (True, False, "auto"):
            raise ValueError(f"train_config.bf16_autocast must be true, false or 'auto', got {self.bf16_autocast!r}")
        try:
            self.readout_weights = tuple(float(w) for w in self.readout_weights)
        except (TypeError, ValueError):
            raise ValueError(f"train_config.readout_weights must be a list of numbers >= 0, "
                             f"got {self.readout_weights!r}") from None
        if any(w < 0 for w in self.readout_weights):
            raise ValueError(f"train_config.readout_weights must be numbers >= 0, got {list(self.readout_weights)}")
        self.readout_checks = tuple(self.readout_checks)
        if not self.readout_checks or set(self.readout_checks) - set(READOUT_CHECKS):
            raise ValueError(f"train_config.readout_checks must be a non-empty subset of {list(READOUT_CHECKS)}, "
                             f"got {list(self.readout_checks)}")
        if not 0.0 <= self.title_batches <= 1.0:
            raise ValueError(f"train_config.title_batches must be in [0, 1], got {self.title_batches!r}")
        if self.title_cluster_size < 2:
            raise ValueError(f"train_config.title_cluster_size must be >= 2, got {self.title_cluster_size!r}")

    def use_bf16_autocast(self, device_type: str = "cpu") -> bool:
        """Whether the forward pass runs under bf16 autocast on ``device_type``: always on a GPU; on a
        CPU when ``bf16_autocast`` is true, or ``"auto"`` and :func:`cpu_has_native_bf16`."""
        if device_type == "cuda":
            return True
        return cpu_has_native_bf16() if self.bf16_autocast == "auto" else bool(self.bf16_autocast)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``learning_rate * min_lr_ratio``
    at ``steps`` (Loshchilov & Hutter 2017, as in nanoGPT's ``get_lr``)."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    min_lr = cfg.learning_rate * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - min_lr)


def backbone_lr_scale(step: int, cfg: TrainConfig) -> float:
    """The backbone's learning rate as a share of the new parts' (LP-FT, Kumar et al. 2022,
    "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"): 0 for the
    first ``freeze_backbone_steps`` steps (only the patch projection and the heads learn, so the
    random heads stop sending noise into the pre-trained encoder), then ``backbone_lr_ratio``, reached
    by a linear ramp over ``warmup_steps``."""
    if step < cfg.freeze_backbone_steps:
        return 0.0
    if cfg.freeze_backbone_steps == 0:
        return cfg.backbone_lr_ratio
    ramp = min(1.0, (step - cfg.freeze_backbone_steps + 1) / max(1, cfg.warmup_steps))
    return cfg.backbone_lr_ratio * ramp


def title_buckets(titles: list[str | None]) -> list[np.ndarray]:
    """The training listings that share their normalised title with at least one other
    (:func:`item_model.title_decides.normalise_title`; listings without a title are left out).

    Returns:
        one int64 array of row indices into ``titles`` per title held by >= 2 listings, in first-seen order.
    """
    rows: dict[str, list[int]] = {}
    for i, title in enumerate(titles):
        key = normalise_title(title)
        if key:
            rows.setdefault(key, []).append(i)
    return [np.asarray(r, dtype=np.int64) for r in rows.values() if len(r) >= 2]


def title_clusters(buckets: list[np.ndarray], n_rows: int, cluster_size: int, rng: np.random.Generator) -> list[int]:
    """``n_rows`` listing indices made of same-title clusters: the part of a training batch that
    holds hard negatives for the product-vector InfoNCE.

    Each cluster is up to ``cluster_size`` listings drawn without replacement from one bucket of
    :func:`title_buckets`, the bucket drawn with probability proportional to its size (every listing
    of a shared title is equally likely to anchor a cluster). Inside a cluster the titles are
    identical, so the title keys are masked as duplicates and only the photo keys compete: the
    joint and photo vectors must tell apart same-title listings by their photos, the hard case of
    same-product search (82 earrings share "Lucera Women Silver Earrings"). Near-duplicate photos
    stay masked by the collator, so the catalog's same-product groups are never pushed apart.
    Batches composed from clusters of similar queries: Hofstätter et al., "Efficiently Teaching an
    Effective Dense Retriever with Balanced Topic Aware Sampling", SIGIR 2021; here the clusters
    come from the titles (input data), never from labels.

    Args:
        buckets: from :func:`title_buckets`. n_rows: how many indices to return (>= 0).
        cluster_size: listings per cluster (>= 2; a bucket smaller than it gives all its listings).
        rng: the generator the draw consumes (saved in checkpoints).

    Returns:
        ``n_rows`` int row indices, clusters contiguous; ``[]`` when ``buckets`` is empty.
    """
    if not buckets or n_rows <= 0:
        return []
    sizes = np.array([len(b) for b in buckets], dtype=np.float64)
    out: list[int] = []
    while len(out) < n_rows:
        bucket = buckets[int(rng.choice(len(buckets), p=sizes / sizes.sum()))]
        take = rng.choice(bucket, size=min(cluster_size, len(bucket), n_rows - len(out)), replace=False)
        out.extend(int(i) for i in take)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not biases, LayerNorm, embeddings' 1-d params),
    as in nanoGPT; and the pre-trained backbone (``bert.*``, the MLM decoder tied to its word
    embeddings included) apart from the new parts, for LP-FT (``"backbone"`` key)."""
    groups: dict[tuple[bool, bool], list] = {}
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups.setdefault((name.startswith("bert."), p.dim() >= 2), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "backbone": backbone}
            for (backbone, decay), ps in sorted(groups.items())]


def pretrain(model: ItemModel, processor: ItemProcessor, train_df: pd.DataFrame, cfg: TrainConfig,
             progress: bool = True, checkpoint_dir: str | Path | None = None, resume: bool = False) -> list[dict]:
    """Pre-train ``model`` in place on the listings of ``train_df`` (canonical catalog rows).

    Batches are drawn epoch by epoch from a seeded permutation; with ``cfg.title_batches`` > 0 that
    share of each batch comes first from same-title clusters (:func:`title_clusters`, its own seeded
    generator, kept in checkpoints), the rest from the permutation. The collator applies ITM pairing
    and MLM/MIM masking with its own seeded generator, so a run is reproducible for a given seed
    and thread count.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the loop runs data-parallel with PyTorch DDP
    (:mod:`item_model.distributed`): ``cfg.batch_size`` is the global batch, each rank loads and
    processes its ``batch_size / world_size`` listings of it, each objective is normalised by its
    global count (so the loss and gradients equal the one-process ones), and only rank 0 writes
    checkpoints. InfoNCE's in-batch negatives are each rank's own rows (as SimCLR without a
    cross-device gather), so only that objective differs from the one-process run. On a GPU the
    forward pass runs under bf16 autocast; on a CPU when ``cfg.use_bf16_autocast()`` (``bf16_autocast``
    true, or ``"auto"`` on a CPU with native bf16; with the fused AdamW 1.7-2.0x the fp32 samples/s on
    this project's AMX CPU, ``benchmarks/train_throughput.py --bf16``); master weights and the
    optimizer stay fp32. AdamW runs as PyTorch's fused kernel (``fused=True``: the same update as the
    for-each one, in one pass over each parameter).

    Args:
        checkpoint_dir: where to write a checkpoint every ``cfg.checkpoint_every`` steps
            (:mod:`item_model.checkpoint`).
        resume: continue from the newest valid checkpoint in ``checkpoint_dir`` (model, optimizer,
            RNG states, data position and history are restored, so the result equals an
            uninterrupted run with the same seed, thread count and number of ranks). Each rank's own
            torch RNG (CPU, and CUDA on a GPU) is gathered into the checkpoint and given back to
            that rank on resume.

    Returns:
        training history: a ``step`` 0 row with the first batch's losses before any update, then one
        dict per logged step with ``step``, ``lr`` (the new parts'; the backbone's is
        :func:`backbone_lr_scale` times it), ``loss`` and each enabled objective's loss (float,
        averaged over the steps since the last log), ``samples_per_s``.

    Raises:
        ValueError: ``train_df`` is empty, or ``cfg.batch_size`` is not a multiple of the world size.
    """
    from .checkpoint import load_latest_checkpoint

    if len(train_df) == 0:
        raise ValueError("pretrain(): the training split is empty")
    ctx, my_rows, step_model = _setup_ranks(model, cfg)
    weights = model.config.objective_weights()
    dataset = ListingDataset(train_df, processor)
    collate = PretrainingCollator(processor, seed=cfg.seed)
    order_rng = np.random.default_rng(cfg.seed)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(0.9, 0.98), eps=1e-6, fused=True)
    bf16 = cfg.use_bf16_autocast(ctx.device.type)
    logger.info("training %d steps of %d listings, forward under %s, fused AdamW", cfg.steps, cfg.batch_size,
                "bf16 autocast" if bf16 else "fp32")
    history: list[dict] = []
    order, cursor, start = order_rng.permutation(len(dataset)), 0, 0
    buckets, n_cluster_rows, cluster_rng = _title_batch_setup(dataset, cfg)
    sums: dict[str, float] = {}
    n_since = 0
    state = load_latest_checkpoint(checkpoint_dir) if (resume and checkpoint_dir) else None
    if state is not None:
        order, cursor, start, history, sums, n_since = _restore_checkpoint(
            state, model, optimizer, order_rng, cluster_rng, collate, ctx)
    model.train()
    t_since = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc="pretrain", disable=not (progress and ctx.is_main),
               mininterval=PROGRESS_INTERVAL, initial=start, total=cfg.steps)
    for step in bar:
        idx = title_clusters(buckets, n_cluster_rows, cfg.title_cluster_size, cluster_rng)
        order, cursor = _fill_batch(idx, order, cursor, order_rng, len(dataset), cfg.batch_size)
        batch = collate.collate_rows([dataset.titles[i] for i in idx], lambda j: dataset.image(idx[j]), my_rows)
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        lr = learning_rate(step, cfg)
        backbone_scale = backbone_lr_scale(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * backbone_scale if group["backbone"] else lr
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = step_model(**batch)
        loss, objective_means = _global_loss(out.losses, weights, batch, ctx)
        if not torch.is_tensor(loss):                   # nothing to learn from on this rank this step
            loss = out.last_hidden_state.sum() * 0.0
        if step == 0:
            _log_step_zero(history, objective_means, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        sums["loss"] = sums.get("loss", 0.0) + sum(weights[k] * v for k, v in objective_means.items())
        for k, v in objective_means.items():
            sums[k] = sums.get(k, 0.0) + v
        n_since += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            sums, n_since, t_since = _log_steps(history, bar, step + 1, cfg, lr, sums, n_since, t_since, out.losses)
        if checkpoint_dir and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save_checkpoint(checkpoint_dir, step + 1, cfg, ctx, model, optimizer, order, cursor, order_rng,
                             cluster_rng, collate, history, sums, n_since)
    model.eval()
    return history


def _log_step_zero(history: list[dict], objective_means: dict[str, float], weights: dict[str, float]) -> None:
    """The ``step`` 0 row of the history: the first batch's losses before any update."""
    history.append({"step": 0, "lr": 0.0, "loss": sum(weights[k] * v for k, v in objective_means.items()),
                    **objective_means})
    logger.info("step 0 (before any update): loss %.4f (%s)", history[0]["loss"],
                " ".join(f"{k} {v:.3f}" for k, v in objective_means.items()))


def _log_steps(history: list[dict], bar, step: int, cfg: TrainConfig, lr: float, sums: dict[str, float],
               n_since: int, t_since: float, losses: dict) -> tuple[dict[str, float], int, float]:
    """Append the history row of the steps since the last log (ending at ``step``, counted from 1), show
    and log it; returns the tallies started afresh: ``({}, 0, now)``."""
    dt = time.perf_counter() - t_since
    row = {"step": step, "lr": lr, **{k: v / n_since for k, v in sums.items()},
           "samples_per_s": n_since * cfg.batch_size / dt}
    history.append(row)
    bar.set_postfix(loss=f"{row['loss']:.3f}")
    logger.info("step %d/%d lr %.2e loss %.4f (%s) %.1f samples/s", step, cfg.steps, lr,
                row["loss"], " ".join(f"{k} {row[k]:.3f}" for k in losses), row["samples_per_s"])
    return {}, 0, time.perf_counter()


def _setup_ranks(model: ItemModel, cfg: TrainConfig):
    """The start of :func:`pretrain`: torch threads, the process group (``torchrun``), this rank's
    share of each batch, the seeds, the model on its device (wrapped in DDP when distributed).

    Returns:
        ``(ctx, my_rows, step_model)``: the distributed context, this rank's rows of each global
        batch, and the module the loop calls (``model`` itself on one process).
    """
    from .distributed import init_distributed

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = init_distributed()
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"train_config.batch_size={cfg.batch_size} is not a multiple of the world size "
                         f"{ctx.world_size}")
    local = cfg.batch_size // ctx.world_size
    my_rows = range(ctx.rank * local, (ctx.rank + 1) * local)
    seed_everything(cfg.seed)
    if ctx.enabled:
        torch.manual_seed(cfg.seed + ctx.rank)          # distinct dropout draws per rank
    model.to(ctx.device)
    step_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel
        step_model = DistributedDataParallel(model, find_unused_parameters=True)  # switched-off heads
    return ctx, my_rows, step_model


def _title_batch_setup(dataset: ListingDataset, cfg: TrainConfig
                       ) -> tuple[list[np.ndarray], int, np.random.Generator]:
    """``(buckets, rows a batch from same-title clusters, the clusters' generator)`` for
    ``cfg.title_batches`` (no buckets and 0 rows when it is 0)."""
    buckets = title_buckets(dataset.titles) if cfg.title_batches > 0 else []
    n_cluster_rows = int(round(cfg.title_batches * cfg.batch_size)) if buckets else 0
    cluster_rng = np.random.default_rng([cfg.seed, 1])         # apart from order_rng: off leaves runs unchanged
    if cfg.title_batches > 0:
        logger.info("title_batches %.2f: %d of %d rows a batch from same-title clusters of %d (%d titles shared by "
                    "%d training listings)", cfg.title_batches, n_cluster_rows, cfg.batch_size,
                    cfg.title_cluster_size, len(buckets), sum(len(b) for b in buckets))
    return buckets, n_cluster_rows, cluster_rng


def _restore_checkpoint(state: dict, model: ItemModel, optimizer, order_rng: np.random.Generator,
                        cluster_rng: np.random.Generator, collate: PretrainingCollator, ctx):
    """Put a checkpoint's model, optimizer and every RNG state back in place.

    Returns:
        ``(order, cursor, step, history, sums, n_since)``: the data position and the loop's tallies.
    """
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    order, cursor, start = np.asarray(state["order"], dtype=np.int64), state["cursor"], state["step"]
    order_rng.bit_generator.state = state["order_rng"]
    if "cluster_rng" in state:
        cluster_rng.bit_generator.state = state["cluster_rng"]
    collate.generator.set_state(state["collate_rng"])
    _restore_rng_states(state, ctx)
    name, key, pos, has_gauss, cached = state["numpy_rng"]       # key saved as an int64 tensor
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python_rng"])
    return order, cursor, start, state["history"], state["sums"], state["n_since"]


def _fill_batch(idx: list[int], order: np.ndarray, cursor: int, order_rng: np.random.Generator,
                n: int, batch_size: int) -> tuple[np.ndarray, int]:
    """Complete ``idx`` (in place) to ``batch_size`` rows from the permutation ``order`` at ``cursor``,
    drawing a new permutation of ``n`` rows when it runs out; returns the new ``(order, cursor)``."""
    while len(idx) < batch_size:
        if cursor >= len(order):
            order, cursor = order_rng.permutation(n), 0
        take = order[cursor: cursor + batch_size - len(idx)]
        idx.extend(take.tolist())
        cursor += len(take)
    return order, cursor


def _save_checkpoint(checkpoint_dir: str | Path, step: int, cfg: TrainConfig, ctx, model: ItemModel, optimizer,
                     order: np.ndarray, cursor: int, order_rng: np.random.Generator,
                     cluster_rng: np.random.Generator, collate: PretrainingCollator, history: list[dict],
                     sums: dict[str, float], n_since: int) -> None:
    """Write the checkpoint after ``step`` steps (rank 0; every rank gathers its RNG states first)."""
    from .checkpoint import save_checkpoint
    from .distributed import all_gather_object

    rank_rng = all_gather_object(_rng_states(ctx), ctx)       # a collective: every rank takes part
    if ctx.is_main:
        save_checkpoint(checkpoint_dir, step, {
            "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "order": order, "cursor": cursor, "order_rng": order_rng.bit_generator.state,
            "cluster_rng": cluster_rng.bit_generator.state,
            "collate_rng": collate.generator.get_state(), "rank_rng": rank_rng,
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "history": history, "sums": sums, "n_since": n_since}, keep=cfg.keep_checkpoints)


def _rng_states(ctx) -> dict[str, torch.Tensor]:
    """This rank's torch RNG states (dropout draws): ``cpu``, and ``cuda`` (its device's) on a GPU.
    uint8 tensors, as ``torch.get_rng_state`` / ``torch.cuda.get_rng_state`` return them."""
    states = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return states


def _restore_rng_states(state: dict, ctx) -> None:
    """Give this rank back its own RNG states from a checkpoint's ``rank_rng`` (one entry per rank,
    rank order; a checkpoint of an older version holds rank 0's CPU state alone as ``torch_rng``).

    A checkpoint written by another number of ranks cannot be resumed exactly: the ranks keep the
    states seeded at start-up and a warning says so.
    """
    per_rank = state.get("rank_rng") or [{"cpu": state["torch_rng"]}]
    if len(per_rank) != ctx.world_size:
        logger.warning("the checkpoint was written by %d rank(s) and this run has %d: each rank keeps its "
                       "seeded RNG, so dropout draws (not the data order) differ from an uninterrupted run",
                       len(per_rank), ctx.world_size)
        return
    mine = per_rank[ctx.rank]
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], ctx.device)
    elif "cuda" in mine or ctx.device.type == "cuda":
        logger.warning("the checkpoint's RNG states are from a %s run and this one runs on %s: dropout draws on "
                       "the GPU restart from the seed", "GPU" if "cuda" in mine else "CPU", ctx.device)


def _global_loss(losses: dict[str, torch.Tensor], weights: dict[str, float], batch: dict[str, torch.Tensor],
                 ctx) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to back-propagate on this rank and each objective's global mean (for logging).

    Each objective is a mean over its items on this rank (masked tokens for MLM/GMLM, masked
    patches for MIM/GMIM, pairs for ITM). With n_r items here and N over all ranks, this rank
    back-propagates ``sum_k w_k * mean_k,r * n_r / N * world_size``; DDP averages gradients over the
    ranks, so the update is that of the global weighted mean, as one process with the whole batch.
    For a single process every factor is 1 and the loss is ``sum_k w_k * mean_k``.

    Returns:
        (scalar loss tensor, ``{objective: global mean}`` floats in the order of ``losses``).
    """
    if not ctx.enabled:
        loss = sum(weights[k] * v for k, v in losses.items())
        return loss, {k: float(v.detach()) for k, v in losses.items()}
    n_tokens, n_patches = batch["mlm_labels"].ne(-100).sum(), batch["mim_mask"].sum()
    n_rows = torch.tensor(batch["itm_labels"].shape[0], device=batch["itm_labels"].device)
    counts = {"mlm": n_tokens, "gmlm": n_tokens, "mim": n_patches, "gmim": n_patches, "itm": n_rows,
              "infonce": n_rows}
    from .configuration_item import OBJECTIVES
    from .distributed import all_reduce_sum
    local = torch.stack([counts[k].float() for k in OBJECTIVES]).to(ctx.device)
    total = all_reduce_sum(local, ctx)
    share = {k: local[i] / total[i].clamp(min=1) for i, k in enumerate(OBJECTIVES)}
    loss = sum(weights[k] * v * share[k] * ctx.world_size for k, v in losses.items())
    part = torch.stack([(losses[k].detach().float() * share[k]) if k in losses else torch.zeros((), device=ctx.device)
                        for k in OBJECTIVES])
    means = all_reduce_sum(part, ctx)
    return loss, {k: float(means[i]) for i, k in enumerate(OBJECTIVES) if total[i] > 0 and weights[k] > 0}


def save_training_curve(history: list[dict], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``training_curve.json`` and ``training_curve.png`` (total and per-objective loss vs step)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    json_path, png_path = out_dir / "training_curve.json", out_dir / "training_curve.png"
    write_json_atomic(json_path, history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in history]
    axes[0].plot(steps, [r["loss"] for r in history], label="total (weighted)")
    axes[0].set_title("ITEm pre-training loss")
    for key, label in (("mlm", "MLM"), ("gmlm", "GMLM"), ("mim", "MIM"), ("gmim", "GMIM"), ("itm", "ITM"),
                       ("infonce", "InfoNCE")):
        if history and key in history[0]:
            axes[1].plot(steps, [r.get(key, float("nan")) for r in history], label=label)
    axes[1].set_title("per objective")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    from .io import atomic_path
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return json_path, png_path
