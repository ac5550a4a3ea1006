"""Inference with a trained ITEm: embed listings or catalog rows, and search by cosine similarity.

What serving, the catalog index and evaluation share: :func:`embed_listings` (requests with both, only
a title, or only a photo), :func:`embed_catalog_modes` (catalog rows, several embedding kinds in one
pass) and :func:`top_k` (exact inner-product search over L2-normalised rows).
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .io import PROGRESS_INTERVAL
from .modeling_item import ItemModel
from .processing_item import ItemProcessor

#: the three embeddings of a listing: title + photo (the served vector), title alone, photo alone
MODES = ("joint", "text", "image")
#: the tolerance of a faster inference precision: every checked vector's cosine to its fp32 vector
DEFAULT_MIN_COSINE = 0.99

logger = logging.getLogger(__name__)


@torch.no_grad()
def embed_listings(model: ItemModel, processor: ItemProcessor, titles: list[str | None] | None,
                   images: list[np.ndarray | None] | None, batch_size: int = 128) -> np.ndarray:
    """ITEm product embeddings of listings with both, only a title, or only an image.

    Args:
        titles: n titles (None or "" = no title), or None for image-only listings.
        images: n uint8 (H, W, 3) arrays already at the model's image size (None = no image), or None.

    Returns:
        (n, D) float32, L2-normalised rows.

    Raises:
        ValueError: a listing has neither a title nor an image (names its position), or the two
            lists differ in length.
    """
    n = len(titles) if titles is not None else len(images)
    titles = titles if titles is not None else [None] * n
    images = images if images is not None else [None] * n
    if len(titles) != len(images):
        raise ValueError(f"titles ({len(titles)}) and images ({len(images)}) differ in length")
    has_t = np.array([isinstance(t, str) and t.strip() != "" for t in titles])
    has_i = np.array([im is not None for im in images])
    if (~has_t & ~has_i).any():
        raise ValueError(f"listing(s) at position {np.flatnonzero(~has_t & ~has_i)[:5].tolist()} "
                         f"have neither 'title' nor 'image'")
    out = np.zeros((n, model.config.hidden_size), dtype=np.float32)
    model.eval()
    for kind, sel in (("joint", has_t & has_i), ("text", has_t & ~has_i), ("image", ~has_t & has_i)):
        idx = np.flatnonzero(sel)
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            enc = processor.tokenize([titles[i] for i in b]) if kind != "image" else {}
            px = processor.pixel_values([images[i] for i in b]) if kind != "text" else None
            out[b] = model.embed(enc.get("input_ids"), enc.get("attention_mask"), px).numpy()
    return out


@torch.no_grad()
def embed_catalog(model: ItemModel, processor: ItemProcessor, df: pd.DataFrame, mode: str = "joint",
                  batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """Embed canonical catalog rows with ITEm, images decoded batch by batch.

    Args:
        mode: ``"joint"`` (title + photo), ``"text"`` (title stream alone) or ``"image"`` (photo alone).

    Returns:
        (len(df), D) float32, L2-normalised.
    """
    return embed_catalog_modes(model, processor, df, (mode,), batch_size, progress)[mode]


@torch.no_grad()
def embed_catalog_modes(model: ItemModel, processor: ItemProcessor, df: pd.DataFrame,
                        modes: tuple[str, ...] = MODES, batch_size: int = 128,
                        progress: bool = True) -> dict[str, np.ndarray]:
    """Embed canonical catalog rows in several modes at once: each batch's titles tokenised and photos
    decoded once, each encoder pass run once (:meth:`ItemModel.embed_kinds`); each mode's rows equal
    :func:`embed_catalog`'s for that mode alone.

    Returns:
        ``{mode: (len(df), D) float32}``, L2-normalised rows.

    Raises:
        ValueError: an unknown mode.
    """
    if not modes or set(modes) - set(MODES):
        raise ValueError(f"modes must be among {MODES}, got {list(modes)}")
    titles = df["title"].tolist()
    rows = df[["product_id", "image_bytes", "image_uri"]].to_dict("records")
    out = {m: np.zeros((len(df), model.config.hidden_size), dtype=np.float32) for m in modes}
    model.eval()
    for s in tqdm(range(0, len(df), batch_size), desc=f"embed ITEm ({', '.join(modes)})", disable=not progress,
                  mininterval=PROGRESS_INTERVAL):
        e = min(s + batch_size, len(df))
        enc = processor.tokenize(titles[s:e]) if set(modes) - {"image"} else {}
        px = processor.pixel_values([processor.image_array(r) for r in rows[s:e]]) if set(modes) - {"text"} else None
        for mode, vectors in model.embed_kinds(enc.get("input_ids"), enc.get("attention_mask"), px, modes).items():
            out[mode][s:e] = vectors.numpy()
    return out


@contextlib.contextmanager
def precision(model: ItemModel, value: str):
    """Embed with ``model`` in ``value`` (``"fp32"`` / ``"bf16"``) inside the block, whatever its config or
    ``ITEM_INFERENCE_PRECISION`` say; both restored after."""
    from .modeling_item import PRECISION_ENV

    saved_config, saved_env = model.config.inference_precision, os.environ.pop(PRECISION_ENV, None)
    model.config.inference_precision = value
    try:
        yield model
    finally:
        model.config.inference_precision = saved_config
        if saved_env is not None:
            os.environ[PRECISION_ENV] = saved_env


def check_inference_precision(model: ItemModel, processor: ItemProcessor, df: pd.DataFrame,
                              min_cosine: float = DEFAULT_MIN_COSINE, max_rows: int = 256) -> dict:
    """Compare the vectors of ``model.config.inference_precision`` with float32 on real catalog rows and
    fall back to float32 when they drift: if any kind's lowest cosine to its float32 vector is below
    ``min_cosine``, ``model.config.inference_precision`` is set to ``"fp32"`` (logged with the reason),
    so a model never serves vectors that drifted.

    Args:
        df: canonical catalog rows (the first ``max_rows`` are used).
        min_cosine: the tolerance, in cosine similarity of a row's vector to its float32 vector.

    Returns:
        ``{"precision": asked, "kept": bool, "reason": str, "n_rows", "min_cosine": {kind: float},
        "mean_cosine": {kind: float}, "same_nearest": {kind: share of rows whose nearest neighbour
        among the rows is unchanged}, "tolerance": min_cosine}``; ``{"precision": "fp32", "kept": True}``
        when there is nothing to compare.
    """
    asked = model.config.inference_precision
    if asked == "fp32" or len(df) == 0:
        return {"precision": asked, "kept": True, "reason": "fp32 is the reference", "n_rows": 0}
    rows = df.head(max_rows)
    with precision(model, "fp32"):
        ref = embed_catalog_modes(model, processor, rows, progress=False)
    with precision(model, asked):
        fast = embed_catalog_modes(model, processor, rows, progress=False)
    record = {"precision": asked, "tolerance": float(min_cosine), "n_rows": int(len(rows)), "min_cosine": {},
              "mean_cosine": {}, "same_nearest": {}}
    for kind in MODES:
        cos = (ref[kind] * fast[kind]).sum(1)
        record["min_cosine"][kind] = float(cos.min())
        record["mean_cosine"][kind] = float(cos.mean())
        if len(rows) > 1:
            record["same_nearest"][kind] = float((top_k(ref[kind], np.arange(len(rows)), 1)[:, 0] ==
                                                  top_k(fast[kind], np.arange(len(rows)), 1)[:, 0]).mean())
    worst = min(record["min_cosine"], key=record["min_cosine"].get)
    record["kept"] = record["min_cosine"][worst] >= min_cosine
    if record["kept"]:
        record["reason"] = (f"{asked} vectors within tolerance: lowest cosine to fp32 "
                            f"{record['min_cosine'][worst]:.5f} ({worst}) >= {min_cosine}")
        logger.info("inference precision %s kept: %s", asked, record["reason"])
    else:
        record["reason"] = (f"{asked} vectors drift: lowest cosine to fp32 {record['min_cosine'][worst]:.5f} "
                            f"({worst}) < tolerance {min_cosine}; falling back to fp32")
        model.config.inference_precision = "fp32"
        logger.warning("inference precision: %s", record["reason"])
    return record


def top_k(embeddings: np.ndarray, query_index: np.ndarray, k: int = 5, chunk: int = 256) -> np.ndarray:
    """Indices of each query's k best-scoring gallery items (itself excluded), best first. (q, k) int64."""
    out = np.empty((len(query_index), k), dtype=np.int64)
    for s in range(0, len(query_index), chunk):
        q = query_index[s:s + chunk]
        scores = embeddings[q] @ embeddings.T
        scores[np.arange(len(q)), q] = -np.inf
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, axis=1)
    return out
