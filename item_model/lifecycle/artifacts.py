"""The artifact layout: every file, folder, key and schema that one part of the system writes and
another reads, named once (``docs/architecture.md``).

Validated catalog artifact (the ``validate`` step's output, read by ``pretrain``, ``evaluate`` and
``package``)::

    <catalog artifact>/catalog.parquet   canonical listings that passed validation (CATALOG_FILE)
                      /split.csv          product_id -> train | validation | test (SPLIT_FILE)
                      /catalog.json       fingerprint, counts, split spec (CATALOG_META)

Packaged model (BentoML store, ``serving`` reads it, drift monitoring takes its reference from it)::

    <bento model>/catalog_index/          the catalog index (INDEX_DIR; :mod:`item_model.lifecycle.index`)
                                          with one embedding matrix per kind (INDEX_KINDS)

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

from ..data import storage

#: the validated catalog artifact's files
CATALOG_FILE, SPLIT_FILE, CATALOG_META = "catalog.parquet", "split.csv", "catalog.json"

#: the catalog index's folder inside a packaged model
INDEX_DIR = "catalog_index"
#: modality -> kind name of its matrix in the catalog index (``/similar``'s ``kind`` searches it)
INDEX_KINDS = {"joint": "item", "text": "item_text_only", "image": "item_image_only"}

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
        item_model.data.storage.StorageError: a ``gs://`` object cannot be fetched.
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


__all__ = ["CATALOG_FILE", "SPLIT_FILE", "CATALOG_META", "INDEX_DIR", "INDEX_KINDS", "TRAFFIC_DIR",
           "TRAFFIC_SCHEMA", "TRAFFIC_REQUIRED", "TrafficLogError", "traffic_files", "read_traffic_files",
           "read_traffic_log"]
