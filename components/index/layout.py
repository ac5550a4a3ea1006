"""The catalog index: the model's embeddings of the catalog it was validated on, with the listings'
ids, titles and attributes. Written by the index pipeline's ``build-index`` step
(:func:`components.index.build.build_index`, also run by the training pipeline for a blessed model),
copied into the BentoML model at package time, and read by serving (``/similar``) and drift monitoring
(the reference window).

Layout of the folder::

    listings.parquet   product_id, title, the filter columns (FILTER_COLUMNS: category,
                       category_path, gender, colour, season, year, usage, and a catalog's own
                       scalar columns), split, group_id   (n rows; older indexes: fewer columns)
    lexical/           BM25 over the titles (components.index.lexical), rebuilt on load if absent
    embeddings.npz     one float32 (n, D) array per embedding kind (INDEX_KINDS): "joint" (title +
                       photo), and when computed "text", "image"; rows aligned with listings.
                       Indexes written before 2026-12-06 name them "item", "item_text_only",
                       "item_image_only": read as the kinds they stand for
    index.json         {"n", "dim", "kinds", "catalog_fingerprint"}, and from the index pipeline
                       (:mod:`components.index.build`) "model_version", "search", "shards"
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.storage.layout import INDEX_KINDS, LEGACY_INDEX_KINDS, index_kind
from components.index.lexical import LEXICAL_DIR, LexicalIndex
from item_model.io import atomic_path, write_json_atomic

#: the catalog's attributes kept in the index for filtered search (components.index.filters), beside
#: any scalar column a catalog adds (components.catalog.extra_columns)
FILTER_COLUMNS = ["category", "category_path", "gender", "colour", "season", "year", "usage"]
LISTING_COLUMNS = ["product_id", "title", *FILTER_COLUMNS, "split", "group_id"]
#: columns of a canonical catalog table or a shard file that are not listing attributes
INTERNAL_COLUMNS = {"image_bytes", "image_uri", "content_hash", "model_version"}


def listing_columns(df: pd.DataFrame) -> list[str]:
    """The columns of ``df`` the index keeps: :data:`LISTING_COLUMNS` present, then a catalog's own
    scalar attributes (every other column but :data:`INTERNAL_COLUMNS`)."""
    known = [c for c in LISTING_COLUMNS if c in df.columns]
    return known + [c for c in df.columns if c not in LISTING_COLUMNS and c not in INTERNAL_COLUMNS]


def save_catalog_index(path: str | Path, df: pd.DataFrame, embeddings: dict[str, np.ndarray],
                       catalog_fingerprint: str, extra: dict | None = None) -> Path:
    """Write the index folder (each file atomically).

    Args:
        df: canonical catalog rows (with ``split``), aligned with every embedding matrix.
        embeddings: ``{kind: (n, D) float32}``, kinds of :data:`INDEX_KINDS`; must contain ``"joint"``.
        extra: more ``index.json`` fields (the index pipeline's ``model_version``, ``search``, ``shards``).

    Raises:
        ValueError: ``"joint"`` missing, a kind outside :data:`INDEX_KINDS`, or a matrix whose row count
            or width disagrees.
    """
    if "joint" not in embeddings or set(embeddings) - set(INDEX_KINDS):
        raise ValueError(f"catalog index: kinds {sorted(embeddings)} must include 'joint' and only {list(INDEX_KINDS)}")
    n, dim = len(df), embeddings["joint"].shape[1]
    for kind, emb in embeddings.items():
        if emb.shape != (n, dim):
            raise ValueError(f"embeddings[{kind!r}] has shape {emb.shape}, expected ({n}, {dim})")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    listings = df[listing_columns(df)].reset_index(drop=True)
    with atomic_path(path / "listings.parquet") as tmp:
        listings.to_parquet(tmp, index=False)
    LexicalIndex.build(listings["title"]).save(path / LEXICAL_DIR)
    with atomic_path(path / "embeddings.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in embeddings.items()})
    write_json_atomic(path / "index.json", {"n": n, "dim": int(dim), "kinds": sorted(embeddings),
                                            "catalog_fingerprint": catalog_fingerprint,
                                            **(extra or {})})
    return path


def load_catalog_index(path: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict]:
    """Read an index folder: (listings DataFrame, ``{kind: (n, D) float32}``, ``index.json`` dict), the
    kinds those of :data:`INDEX_KINDS` (an older index's legacy names read as the kinds they stand for,
    ``index.json``'s ``kinds`` likewise).

    Raises:
        FileNotFoundError: a file of the layout is missing. ValueError: row counts disagree.
    """
    path = Path(path)
    meta = json.loads((path / "index.json").read_text())
    listings = pd.read_parquet(path / "listings.parquet")
    with np.load(path / "embeddings.npz", allow_pickle=False) as z:
        embeddings = {index_kind(k): z[k] for k in z.files}
    if "kinds" in meta:
        meta["kinds"] = sorted(LEGACY_INDEX_KINDS.get(k, k) for k in meta["kinds"])
    for kind, emb in embeddings.items():
        if emb.shape[0] != len(listings):
            raise ValueError(f"{path}: embeddings[{kind!r}] has {emb.shape[0]} rows, listings {len(listings)}")
    return listings, embeddings, meta
