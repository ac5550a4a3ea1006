"""What every vector-index backend shares: the ``vector_index.json`` file name, the
:class:`VectorIndex` protocol, the version-mismatch error and the check of a vector matrix.

Re-exported by :mod:`components.index.backends`, which describes the backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

META_FILE = "vector_index.json"


class IndexVersionMismatch(ValueError):
    """An index built from another model version's vectors than the one asked for."""


class VectorIndex(Protocol):
    """Maximum-inner-product search over L2-normalised vectors (= cosine similarity)."""

    kind: str
    model_version: str

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows for each query.

        Args:
            queries: (q, D) float32, L2-normalised.
            k: results per query (fewer when the index is smaller).

        Returns:
            (rows (q, k) int64, scores (q, k) float32 cosine similarities), best first.
        """

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (vectors and graph)."""

    def save(self, folder: str | Path) -> None:
        """Write the index into ``folder`` (its own files plus ``vector_index.json``)."""


def _check(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty (n, D) matrix, got shape {vectors.shape}")
    return vectors
