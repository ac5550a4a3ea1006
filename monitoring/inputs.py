"""The two sides of a drift test: the reference (the champion's catalog index, stored with the packaged
model in the BentoML store) and the current window (a catalog batch folder, or a window of the serving
traffic log read through :func:`components.storage.layout.read_traffic_files`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.storage import layout as artifacts
from components.storage.layout import (INDEX_DIR, TrafficLogError, find_packaged_model,
                                            read_traffic_files)
from components.storage.embeddings import MODALITIES

from .drift import DriftInputError

#: traffic-log ``kind`` values -> modality, when the rows carry no has_title/has_image flags
TRAFFIC_KINDS = {"joint": "joint", "item": "joint", "text": "text", "item_text_only": "text", "title": "text",
                 "image": "image", "item_image_only": "image", "photo": "image"}


def resolve_model(model_tag: str = "item:latest", bentoml_home: str | None = None) -> tuple[str, Path]:
    """Find a model in a BentoML model store.

    Args:
        model_tag: ``name:version`` or ``name:latest`` (or just ``name``).
        bentoml_home: the store root (``<home>/models/...``); default ``$BENTOML_HOME`` or ``~/bentoml``.

    Returns:
        (the resolved tag ``name:version``, the model's folder).

    Raises:
        DriftInputError: no such model in that store.
    """
    found = find_packaged_model(model_tag, bentoml_home)
    if found is None:
        raise DriftInputError(f"model {model_tag!r} is not in the BentoML store "
                              f"{artifacts.bentoml_home(bentoml_home) / 'models'}")
    return found


def load_reference(model_path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The reference embeddings stored with a packaged model (its ``catalog_index/``).

    Returns:
        (``{modality: (n, D) float32}`` for the kinds the index holds, the index's ``index.json``
        plus ``"path"``).

    Raises:
        DriftInputError: the model has no catalog index.
    """
    from components.index.layout import load_catalog_index

    path = Path(model_path) / INDEX_DIR
    if not (path / "index.json").exists():
        raise DriftInputError(f"model folder {str(model_path)!r} has no {INDEX_DIR}/ (the reference embeddings "
                              "stored at package time); re-package the model with its catalog index")
    _, embeddings, meta = load_catalog_index(path)
    reference = {k: e for k, e in embeddings.items() if k in MODALITIES}   # index kinds are the modalities
    return reference, {**meta, "path": str(path)}


def source_type(path: str | Path) -> str:
    """``"catalog"`` for a folder in the catalog layout (``data/*.parquet``), ``"traffic"`` for a
    traffic-log parquet file or a folder of them.

    Raises:
        DriftInputError: the path does not exist or is neither.
    """
    p = Path(path)
    if not p.exists():
        raise DriftInputError(f"current {str(p)!r} does not exist")
    if p.is_dir() and (p / "data").is_dir():
        return "catalog"
    if (p.is_file() and p.suffix == ".parquet") or (p.is_dir() and next(p.rglob("*.parquet"), None)):
        return "traffic"
    raise DriftInputError(f"current {str(p)!r} is neither a catalog folder (data/*.parquet) nor a traffic log "
                          "(*.parquet files with timestamp, model_tag, kind, embedding)")


def _timestamp(value: str | None, name: str) -> pd.Timestamp | None:
    if not value:
        return None
    try:
        ts = pd.Timestamp(value)
    except ValueError as exc:
        raise DriftInputError(f"{name} {value!r} is not an ISO date/time: {exc}") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def load_traffic_window(path: str | Path, since: str | None = None, until: str | None = None) -> pd.DataFrame:
    """Rows of a traffic log with ``since <= timestamp < until`` (UTC; either bound optional).

    The log (written by serving) is parquet files under a folder, searched recursively, or one file,
    with columns ``timestamp``, ``model_tag``, ``kind``, ``embedding`` (list<float32>), ``has_title``,
    ``has_image``, ``title_length``; ``timestamp``, ``model_tag`` and ``embedding`` are required here.

    Returns:
        the window's rows sorted by ``timestamp`` (datetime64[ns, UTC]), RangeIndex.

    Raises:
        DriftInputError: no parquet file, an unreadable file, a missing column, an unparsable
            ``timestamp``, or an empty window (naming the log's time span).
    """
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.rglob("*.parquet"))
    if not files:
        raise DriftInputError(f"traffic log {str(p)!r} holds no *.parquet file")
    try:
        df = read_traffic_files(files)
    except TrafficLogError as exc:
        raise DriftInputError(str(exc)) from exc
    ts = pd.to_datetime(df["timestamp"], utc=True, errors="coerce")
    if ts.isna().any():
        rows = np.flatnonzero(ts.isna().to_numpy())[:5].tolist()
        raise DriftInputError(f"traffic log {str(p)!r}: field 'timestamp' is not a date/time in rows {rows}")
    df["timestamp"] = ts
    lo, hi = _timestamp(since, "since"), _timestamp(until, "until")
    keep = np.ones(len(df), dtype=bool)
    if lo is not None:
        keep &= (ts >= lo).to_numpy()
    if hi is not None:
        keep &= (ts < hi).to_numpy()
    if not keep.any():
        span = f"from {ts.min()} to {ts.max()}" if len(df) else "no rows at all"
        raise DriftInputError(f"empty window: traffic log {str(p)!r} has no rows with {since or '-inf'} <= "
                              f"timestamp < {until or '+inf'} ({len(df)} rows in the log, {span})")
    return df[keep].sort_values("timestamp", kind="stable").reset_index(drop=True)


def traffic_modalities(df: pd.DataFrame) -> np.ndarray:
    """The modality of each traffic row: from ``has_title``/``has_image`` when present (both ->
    joint, title only -> text, image only -> image), else from ``kind`` (:data:`TRAFFIC_KINDS`).

    Raises:
        DriftInputError: a row's modality cannot be told (names the field and values).
    """
    if {"has_title", "has_image"} <= set(df.columns):
        t = df["has_title"].fillna(False).astype(bool).to_numpy()
        i = df["has_image"].fillna(False).astype(bool).to_numpy()
        out = np.where(t & i, "joint", np.where(t, "text", np.where(i, "image", "")))
        if (out == "").any():
            rows = np.flatnonzero(out == "")[:5].tolist()
            raise DriftInputError(f"traffic rows {rows} have has_title=false and has_image=false")
        return out.astype(object)
    if "kind" not in df.columns:
        raise DriftInputError("traffic log has neither has_title/has_image nor 'kind' to tell each row's modality")
    out = df["kind"].map(TRAFFIC_KINDS)
    if out.isna().any():
        bad = sorted(set(df.loc[out.isna(), "kind"].astype(str)))[:5]
        raise DriftInputError(f"traffic log field 'kind' has unknown value(s) {bad}; known: {sorted(TRAFFIC_KINDS)}")
    return out.to_numpy(dtype=object)


def traffic_embeddings(df: pd.DataFrame, model_tag: str, dim: int | None = None) -> dict[str, np.ndarray]:
    """Split a traffic window into ``{modality: (n_m, D) float32}`` after checking it.

    Args:
        model_tag: the reference model's resolved tag; every row must have been served by it.
        dim: the reference's embedding dimension.

    Raises:
        DriftInputError: model version mismatch (field ``model_tag``), or embeddings of another or of
            mixed dimension (field ``embedding``).
    """
    tags = df["model_tag"].astype(str).value_counts()
    if set(tags.index) != {model_tag}:
        raise DriftInputError(f"model version mismatch: field 'model_tag' of the traffic window holds "
                              f"{tags.to_dict()}, but the reference is {model_tag}; choose a window served by "
                              f"{model_tag} (--since/--until) or the model that served it (--model-tag)")
    lengths = df["embedding"].map(lambda v: -1 if v is None else len(v)).to_numpy()
    found = sorted(set(lengths.tolist()))
    if len(found) > 1 or (dim is not None and found[0] != dim):
        raise DriftInputError(f"wrong embedding dimension: field 'embedding' of the traffic window has length(s) "
                              f"{found}, expected {dim if dim is not None else 'one length'} "
                              f"(the reference model {model_tag})")
    emb = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    modality = traffic_modalities(df)
    return {m: emb[modality == m] for m in MODALITIES if (modality == m).any()}


def reference_dim(model_path: str | Path) -> int | None:
    """The embedding dimension D of a packaged model's catalog index (``index.json``), or None."""
    meta = Path(model_path) / INDEX_DIR / "index.json"
    return int(json.loads(meta.read_text())["dim"]) if meta.exists() else None


__all__ = ["TRAFFIC_KINDS", "resolve_model", "load_reference", "source_type", "load_traffic_window",
           "traffic_embeddings", "traffic_modalities", "reference_dim"]
