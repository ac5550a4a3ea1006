"""The artifact layout: every file, folder, key and schema that one part of the system writes and
another reads, named once (``docs/architecture.md``).

Validated catalog artifact (the ``validate`` step's output, read by ``pretrain``, ``evaluate`` and
``package``)::

    <catalog artifact>/catalog.parquet   canonical listings that passed validation (CATALOG_FILE)
                      /split.csv          product_id -> train | validation | test (SPLIT_FILE)
                      /catalog.json       fingerprint, counts, split spec (CATALOG_META)

Packaged model (BentoML store, ``serving`` reads it, drift monitoring takes its reference from it)::

    <bento model>/catalog_index/          the catalog index (INDEX_DIR; :mod:`components.index.layout`)
                                          with one embedding matrix per kind (INDEX_KINDS:
                                          joint, text, image)

Traffic log (written by ``serving.traffic_log.TrafficLog``, read by drift monitoring through
:func:`read_traffic_files`)::

    <storage root>/traffic/traffic-*.parquet   rows of TRAFFIC_SCHEMA (TRAFFIC_DIR)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components import storage

#: the validated catalog artifact's files
CATALOG_FILE, SPLIT_FILE, CATALOG_META = "catalog.parquet", "split.csv", "catalog.json"

#: the catalog index's folder inside a packaged model
INDEX_DIR = "catalog_index"
#: the catalog index's kinds: one embedding matrix per modality, named as ``/embed`` names a vector's
#: ``kind``, drift monitoring its modalities and :func:`item_model.inference.embed_catalog` its
#: ``mode``; "joint" (title + photo, the product embedding) is always there
INDEX_KINDS = ("joint", "text", "image")
#: the names indexes written before 2026-12-06 gave the same matrices (the evaluation's model names);
#: read as the kinds they stand for, never written
LEGACY_INDEX_KINDS = {"item": "joint", "item_text_only": "text", "item_image_only": "image"}


def index_kind(name: str) -> str:
    """The index kind ``name`` stands for: itself for one of :data:`INDEX_KINDS`, the kind of a legacy
    name (:data:`LEGACY_INDEX_KINDS`).

    Raises:
        ValueError: ``name`` is neither (the message names it and the kinds).
    """
    kind = LEGACY_INDEX_KINDS.get(name, name)
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {name!r} is not one of {list(INDEX_KINDS)}")
    return kind

#: the traffic log's folder under the storage root, and its parquet schema
TRAFFIC_DIR = "traffic"
TRAFFIC_SCHEMA = pa.schema([
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("model_tag", pa.string()),
    ("kind", pa.string()),
    ("embedding", pa.list_(pa.float32())),
    ("has_title", pa.bool_()),
    ("has_image", pa.bool_()),
    ("title_length", pa.int32()),
])
#: the columns a traffic-log reader cannot do without (older logs may lack the others)
TRAFFIC_REQUIRED = ("timestamp", "model_tag", "embedding")


def bentoml_home(explicit: str | Path | None = None) -> Path:
    """The BentoML store root: ``explicit``, else ``$BENTOML_HOME``, else ``~/bentoml`` (BentoML's own default)."""
    import os
    return Path(explicit or os.environ.get("BENTOML_HOME") or "~/bentoml").expanduser()


def find_packaged_model(tag: str | None, home: str | Path | None = None) -> tuple[str, Path] | None:
    """A packaged model in a BentoML store, read from the store's folders (``<home>/models/<name>/<version>/
    model.yaml``, ``<name>/latest``) without importing BentoML, so that any process (the CLI, drift
    monitoring) can name the store it reads instead of the one BentoML fixed at import.

    Args:
        tag: ``name:version``, ``name:latest`` or ``name`` (default ``item:latest``).
        home: the store root (:func:`bentoml_home`).

    Returns:
        (``name:version``, the model's folder), or None when the store has no such model.
    """
    name, _, version = (tag or "item:latest").partition(":")
    models = bentoml_home(home) / "models" / name
    if version in ("", "latest"):
        latest = models / "latest"
        version = latest.read_text().strip() if latest.is_file() else ""
    if not version or not (models / version / "model.yaml").is_file():
        return None
    return f"{name}:{version}", models / version


def packaged_versions(name: str, home: str | Path | None = None) -> list[tuple[str, dict]]:
    """Every packaged ``name`` model in a BentoML store: ``[(store version, its model.yaml as a dict)]``."""
    import yaml
    return [(path.parent.name, yaml.safe_load(path.read_text()) or {})
            for path in sorted((bentoml_home(home) / "models" / name).glob("*/model.yaml"))]


class TrafficLogError(ValueError):
    """A traffic-log file is unreadable or lacks a required column (the message names the file)."""


def traffic_files(storage_root: str | Path) -> list[Path] | list[str]:
    """The traffic log's parquet files under ``storage_root``, oldest first (by name): ``Path``
    objects for a local root, ``gs://`` URI strings for a GCS root."""
    directory = storage.join(storage_root, TRAFFIC_DIR)
    names = [n for n in storage.list_files(directory) if n.count("/") == 1
             and n.split("/")[1].startswith("traffic-") and n.endswith(".parquet")]
    locations = [storage.join(directory, n) for n in sorted(names, key=lambda n: n.split("/")[1])]
    return [loc if storage.is_gcs(loc) else Path(loc) for loc in locations]


def read_traffic_files(files: Sequence[str | Path]) -> pd.DataFrame:
    """Read traffic-log parquet files (local paths or ``gs://`` URIs) into one DataFrame with the columns
    they hold (``embedding`` as float32 arrays, ``timestamp`` as written), in file order.

    Returns an empty frame with the columns of :data:`TRAFFIC_SCHEMA` when ``files`` is empty.

    Raises:
        TrafficLogError: a file is unreadable or lacks a column of :data:`TRAFFIC_REQUIRED` (names it).
        components.storage.StorageError: a ``gs://`` object cannot be fetched.
    """
    tables = []
    for f in files:
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(f)))
        except (OSError, pa.ArrowException) as exc:
            raise TrafficLogError(f"traffic log file {str(f)!r} is unreadable: {exc}") from exc
        missing = [c for c in TRAFFIC_REQUIRED if c not in table.column_names]
        if missing:
            raise TrafficLogError(f"traffic log file {str(f)!r} lacks column(s) {missing}; found {table.column_names}")
        tables.append(table)
    if not tables:
        return TRAFFIC_SCHEMA.empty_table().to_pandas()
    return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def read_traffic_log(storage_root: str | Path, since=None) -> pd.DataFrame:
    """The whole traffic log under ``storage_root`` (local or ``gs://``), optionally only rows at or after
    ``since`` (an aware datetime). Raises as :func:`read_traffic_files`."""
    df = read_traffic_files(traffic_files(storage_root))
    if since is not None and len(df):
        df = df[df["timestamp"] >= pd.Timestamp(since)].reset_index(drop=True)
    return df


__all__ = ["CATALOG_FILE", "SPLIT_FILE", "CATALOG_META", "INDEX_DIR", "INDEX_KINDS", "LEGACY_INDEX_KINDS", "index_kind", "TRAFFIC_DIR",
           "bentoml_home", "find_packaged_model", "packaged_versions",
           "TRAFFIC_SCHEMA", "TRAFFIC_REQUIRED", "TrafficLogError", "traffic_files", "read_traffic_files",
           "read_traffic_log"]
