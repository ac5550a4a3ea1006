"""Training checkpoints: everything needed to continue a run bit for bit (model, optimizer, RNG
states, data position, history), written atomically with a SHA-256 manifest so that a corrupted or
partial checkpoint is detected and skipped in favour of the previous one.

Files in the checkpoint folder, per saved step ``S``::

    ckpt-<S:08d>.pt     torch.save of the state dict          (written first, atomically)
    ckpt-<S:08d>.json   {"step", "sha256", "bytes", "saved_at"} (written second, atomically)

A checkpoint counts only when its manifest exists and the ``.pt`` file's SHA-256 matches it, and it
is read with ``torch.load(weights_only=True)``: tensors and plain containers of numbers and strings only,
so a file placed in a shared checkpoint folder cannot run code when read (PyTorch docs,
"torch.load ... weights_only"). :func:`save_checkpoint` stores NumPy arrays and scalars as tensors and
Python numbers for that reason (:func:`to_weights_only`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from .io import atomic_path, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)


def to_weights_only(obj):
    """``obj`` with NumPy arrays as tensors (unsigned integers widened to int64) and NumPy scalars as
    Python numbers, recursively through dicts, lists and tuples: what ``torch.load(weights_only=True)``
    reads back. Other objects are returned unchanged (``torch.save`` then refuses nothing, but loading
    refuses them)."""
    import numpy as np
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind == "u" else obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_weights_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_weights_only(v) for v in obj)
    return obj


def save_checkpoint(folder: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write the state of step ``step``; keep the newest ``keep`` valid checkpoints, delete older ones.

    Returns:
        the path of the ``.pt`` file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pt = folder / f"ckpt-{step:08d}.pt"
    with atomic_path(pt) as tmp:
        torch.save(to_weights_only(state), tmp)
    write_json_atomic(pt.with_suffix(".json"), {"step": step, "sha256": sha256_file(pt), "bytes": pt.stat().st_size,
                                                "saved_at": time.time()})
    for old in sorted(folder.glob("ckpt-*.json"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt").unlink(missing_ok=True)
    logger.info("checkpoint at step %d -> %s", step, pt)
    return pt


def load_latest_checkpoint(folder: str | Path) -> dict | None:
    """The newest checkpoint whose manifest and checksum verify and that ``torch.load(weights_only=True)``
    reads.

    Invalid ones (no manifest, checksum mismatch, unreadable, holding anything but tensors and plain
    containers) are skipped with a warning; nothing in the file is executed.

    Returns:
        the saved state dict, or None when the folder holds no valid checkpoint.
    """
    folder = Path(folder)
    if not folder.exists():
        return None
    candidates = sorted(folder.glob("ckpt-*.pt"), reverse=True)
    for pt in candidates:
        manifest = pt.with_suffix(".json")
        try:
            meta = json.loads(manifest.read_text())
            digest = sha256_file(pt)
            if digest != meta["sha256"]:
                raise ValueError(f"SHA-256 {digest[:12]} does not match the manifest's {meta['sha256'][:12]}")
            state = torch.load(pt, map_location="cpu", weights_only=True)
            logger.info("resuming from %s (step %d)", pt, state["step"])
            return state
        except FileNotFoundError:
            logger.warning("skipping checkpoint %s: no manifest (partial write)", pt)
        except Exception as exc:  # corrupted file, bad JSON, a pickle weights_only refuses
            logger.warning("skipping checkpoint %s: %s", pt, exc)
    return None
