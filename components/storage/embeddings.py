"""A window of ITEm embeddings per modality, as a folder artifact, and embedding a catalog in several
modalities at once. Written by the monitoring pipeline's embed step and read by its drift step
(no Kubeflow, BentoML or Evidently imports here).

Modalities are the three vectors of a listing, named as everywhere else (the catalog index's kinds,
:data:`components.storage.layout.INDEX_KINDS`; ``/embed``'s ``kind``; ``embed_catalog``'s ``mode``):

=============  =============================================================
modality       embedding
=============  =============================================================
``joint``      title + photo, the product embedding
``text``       the title stream alone
``image``      the photo stream alone
=============  =============================================================

Layout of the folder::

    embeddings.npz    one float32 (n_m, D) array per modality present, L2-normalised rows; the row
                      counts n_m may differ (a traffic window holds each request under its own modality)
    embeddings.json   {"model_tag", "dim", "counts": {modality: n_m}, "source", "source_type", ...}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from components.storage.layout import INDEX_KINDS
from item_model.io import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

#: the modalities: the index's kinds, each also a ``mode`` of :func:`item_model.inference.embed_catalog`
MODALITIES = INDEX_KINDS
EMBEDDINGS_FILE, META_FILE = "embeddings.npz", "embeddings.json"


def check_embeddings(embeddings: dict[str, np.ndarray], dim: int | None = None, what: str = "embeddings") -> int:
    """Check a ``{modality: (n, D)}`` dict: known modalities, 2-D, one common width, finite values.

    Args:
        dim: the width every matrix must have (e.g. the reference's), or None to only require one
            common width.
        what: a name for messages (a file, a window).

    Returns:
        the common width D.

    Raises:
        ValueError: naming the modality and the field at fault (``embedding`` width, rows, NaN/inf).
    """
    if not embeddings:
        raise ValueError(f"{what}: no embeddings (empty window)")
    widths = {}
    for modality, emb in embeddings.items():
        if modality not in MODALITIES:
            raise ValueError(f"{what}: unknown modality {modality!r}; expected one of {MODALITIES}")
        if emb.ndim != 2:
            raise ValueError(f"{what}: field 'embedding' of modality {modality!r} has shape {emb.shape}, "
                             f"expected (n, D)")
        if not np.isfinite(emb).all():
            bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))[:5].tolist()
            raise ValueError(f"{what}: field 'embedding' of modality {modality!r} holds NaN/inf in rows {bad}")
        widths[modality] = emb.shape[1]
    expected = dim if dim is not None else next(iter(widths.values()))
    wrong = {m: w for m, w in widths.items() if w != expected}
    if wrong:
        raise ValueError(f"{what}: field 'embedding' has dimension {wrong}, expected {expected}"
                         + (" (the reference model's dimension)" if dim is not None else ""))
    return int(expected)


def save_embeddings(path: str | Path, embeddings: dict[str, np.ndarray], meta: dict) -> Path:
    """Write the folder (each file atomically).

    Args:
        embeddings: ``{modality: (n_m, D) float32}``; modalities with 0 rows are dropped.
        meta: at least ``model_tag``; ``dim`` and ``counts`` are filled in.

    Raises:
        ValueError: see :func:`check_embeddings`; ``meta`` lacks ``model_tag``.
    """
    if not meta.get("model_tag"):
        raise ValueError("embeddings meta lacks field 'model_tag' (which model made them)")
    embeddings = {m: np.ascontiguousarray(e, dtype=np.float32) for m, e in embeddings.items() if len(e)}
    dim = check_embeddings(embeddings, what=str(path))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / EMBEDDINGS_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **embeddings)
    meta = {**meta, "dim": dim, "counts": {m: int(len(e)) for m, e in embeddings.items()}}
    write_json_atomic(path / META_FILE, meta)
    return path


def load_embeddings(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read the folder: (``{modality: (n_m, D) float32}``, ``embeddings.json`` dict).

    Raises:
        FileNotFoundError: a file of the layout is missing. ValueError: see :func:`check_embeddings`.
    """
    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    with np.load(path / EMBEDDINGS_FILE, allow_pickle=False) as z:
        embeddings = {k: z[k] for k in z.files}
    check_embeddings(embeddings, what=str(path))
    return embeddings, meta


def usable_listings(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Canonical catalog rows that every modality can embed: a non-blank title and an image
    (``image_bytes`` or ``image_uri``).

    Returns:
        (the kept rows, RangeIndex; ``{"no_title": n, "no_image": n}`` dropped counts).
    """
    has_title = df["title"].map(lambda t: isinstance(t, str) and t.strip() != "").to_numpy(dtype=bool)
    has_image = np.array([(isinstance(b, (bytes, bytearray)) and len(b) > 0) or (isinstance(u, str) and u != "")
                          for b, u in zip(df["image_bytes"], df["image_uri"])], dtype=bool)
    dropped = {"no_title": int((~has_title).sum()), "no_image": int((has_title & ~has_image).sum())}
    return df[has_title & has_image].reset_index(drop=True), dropped


def embed_modalities(model, processor, df: pd.DataFrame, modalities: tuple[str, ...] = MODALITIES,
                     batch_size: int = 128, progress: bool = True) -> dict[str, np.ndarray]:
    """ITEm embeddings of canonical catalog rows in each modality (joint, text-only, image-only).

    Args:
        model, processor: an :class:`~item_model.modeling_item.ItemModel` and its processor.
        df: canonical rows with a title and an image each (see :func:`usable_listings`).

    Returns:
        ``{modality: (len(df), D) float32}``, L2-normalised rows aligned with ``df``.
    """
    from item_model.inference import embed_catalog

    out = {}
    for modality in modalities:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        out[modality] = embed_catalog(model, processor, df, modality, batch_size=batch_size,
                                      progress=progress)
    return out


def sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    """``min(n, k)`` distinct row positions out of ``n`` drawn with ``numpy.random.default_rng(seed)``,
    sorted. int64 (min(n, k),)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
