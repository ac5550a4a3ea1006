"""A content-addressed cache of a frozen image encoder's features, so that a photo's CNN features are
computed once per run and reused by training, evaluation and the catalog index (issue 30).

The key of a photo is a BLAKE2b digest of the exact pixels the encoder sees (the decoded, resized,
normalised (3, H, W) float32 tensor: a changed photo, or a changed photo size, gives a new key) and of
the encoder's version (:func:`encoder_version`: the encoder's name, a digest of its weights, and the
precision its features are computed in). Nothing stale can be served: a different photo, encoder
weight or precision is a different key, never an overwrite.

Entries live in memory (least recently used dropped beyond ``max_items``) and, given a folder, as
one ``.npy`` file per photo (float16, (N, K)), written to a temporary name and moved into place, read
with ``allow_pickle=False`` (nothing read from the folder can run code). Several processes may share
a folder (the pipeline's steps): the same key always holds the same bytes, so a race between two
writers is harmless.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

#: environment variable naming a folder that every ITEm model with CNN image tokens in this process
#: (and its child processes: the pipeline's local steps) caches its photos' features in
CACHE_DIR_ENV = "ITEM_IMAGE_FEATURE_CACHE"


def encoder_version(name: str, module: torch.nn.Module, precision: str) -> str:
    """``"<name>-<16 hex digits of the weights' BLAKE2b>-<precision>"``: what a cached feature depends on
    besides the pixels. The digest covers every parameter and buffer (BatchNorm statistics included)
    in ``state_dict`` order, names and bytes."""
    h = hashlib.blake2b(digest_size=8)
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return f"{name}-{h.hexdigest()}-{precision}"


class ImageFeatureCache:
    """Features of photos keyed by their pixels and the encoder's version.

    Args:
        version: the encoder's :func:`encoder_version`.
        folder: where entries persist (None: memory only). Entries of each version live in their own
            sub-folder ``<folder>/<version>/``.
        max_items: entries kept in memory, least recently used dropped first (4,096 EfficientNet-Lite0
            entries of 20 cells: 210 MB; the folder keeps every entry).

    Attributes:
        hits / misses: lookups answered / not answered since construction (for logs and tests).
    """

    def __init__(self, version: str, folder: str | Path | None = None, max_items: int = 4096):
        self.version = version
        self.folder = Path(folder) / version if folder is not None else None
        self.max_items = max_items
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, pixels: torch.Tensor) -> str:
        """The key of one photo: ``pixels`` (3, H, W) float32, exactly as fed to the encoder."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.version.encode())
        h.update(str(tuple(pixels.shape)).encode())
        h.update(pixels.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        """The (N, K) float16 features under ``key``, or None."""
        hit = self._memory.get(key)
        if hit is None and self.folder is not None:
            path = self.folder / key[:2] / f"{key}.npy"
            try:
                hit = np.load(path, allow_pickle=False)
            except (OSError, ValueError):        # absent, or unreadable: computed again
                hit = None
            if hit is not None:
                self._remember(key, hit)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
            self._memory.move_to_end(key)
        return hit

    def put(self, key: str, features: np.ndarray) -> None:
        """Store (N, K) features (kept as float16) under ``key``, in memory and in the folder."""
        features = np.ascontiguousarray(features, dtype=np.float16)
        self._remember(key, features)
        if self.folder is None:
            return
        path = self.folder / key[:2] / f"{key}.npy"
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, features, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _remember(self, key: str, features: np.ndarray) -> None:
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def __len__(self) -> int:
        return len(self._memory)
