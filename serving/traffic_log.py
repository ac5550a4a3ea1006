"""Traffic log for monitoring: a sample of the embeddings the service served, appended to a rotating
parquet log under the storage root. No raw images and no titles are kept, only what drift
monitoring needs.

Layout::

    <storage root>/traffic/<YYYY-MM-DD>/traffic-<YYYYmmddTHHMMSS>Z-<pid>-<seq>.parquet

The storage root is a local folder or a ``gs://bucket/prefix`` (:mod:`components.storage`). Each
file holds at most ``rows_per_file`` rows, all from one UTC hour, and is written atomically (locally a
temporary file moved into place; on GCS one upload, which only appears once complete), so readers
never see half a file. Rows are buffered in memory
and written when the file is full, when the hour changes, when the oldest buffered row is older
than ``flush_seconds``, and when the service shuts down.

Columns:

    timestamp      timestamp[us, UTC]   when the embedding was served
    model_tag      string               BentoML tag of the model, ``item:<version>``
    kind           string               ``joint`` (title + photo), ``text`` or ``image``
    embedding      list<float32>        the served L2-normalised vector (D floats)
    has_title      bool
    has_image      bool
    title_length   int32                characters of the title (0 without one)

Configuration (environment, read by :meth:`TrafficLogConfig.from_env`): ``ITEM_STORAGE_ROOT``
(default ``./item-storage``), ``ITEM_TRAFFIC_SAMPLE`` (share of embeddings logged, 0..1, default
0.1), ``ITEM_TRAFFIC_ROWS_PER_FILE`` (default 10000), ``ITEM_TRAFFIC_FLUSH_SECONDS`` (default 300).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components import storage
from components.storage.layout import TRAFFIC_DIR, TRAFFIC_SCHEMA

logger = logging.getLogger("bentoml.item.traffic_log")   # printed by BentoML's handlers in the server

@dataclass(frozen=True)
class TrafficLogConfig:
    """Where and how much to log.

    Attributes:
        storage_root: the project's storage root (folder or ``gs://bucket/prefix``); files go under
            ``<storage_root>/traffic/``.
        sample_rate: probability that a served embedding is logged, in [0, 1] (0 switches it off).
        rows_per_file: most rows in one parquet file (>= 1).
        flush_seconds: longest time a sampled row waits in memory before it is written (> 0).
    """

    storage_root: str = "./item-storage"
    sample_rate: float = 0.1
    rows_per_file: int = 10_000
    flush_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"traffic sample rate must be in [0, 1], got {self.sample_rate}")
        if self.rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {self.rows_per_file}")
        if self.flush_seconds <= 0:
            raise ValueError(f"flush_seconds must be > 0, got {self.flush_seconds}")

    @classmethod
    def from_env(cls) -> "TrafficLogConfig":
        """Read ``ITEM_STORAGE_ROOT``, ``ITEM_TRAFFIC_SAMPLE``, ``ITEM_TRAFFIC_ROWS_PER_FILE``,
        ``ITEM_TRAFFIC_FLUSH_SECONDS`` (unset or empty = default).

        Raises:
            ValueError: a value that is not a number or out of range, naming the variable.
        """
        def get(name: str, conv, default):
            raw = os.environ.get(name, "").strip()
            if not raw:
                return default
            try:
                return conv(raw)
            except ValueError:
                raise ValueError(f"environment variable {name}={raw!r} is not a number") from None

        try:
            return cls(storage_root=os.environ.get("ITEM_STORAGE_ROOT", "").strip() or cls.storage_root,
                       sample_rate=get("ITEM_TRAFFIC_SAMPLE", float, cls.sample_rate),
                       rows_per_file=get("ITEM_TRAFFIC_ROWS_PER_FILE", int, cls.rows_per_file),
                       flush_seconds=get("ITEM_TRAFFIC_FLUSH_SECONDS", float, cls.flush_seconds))
        except ValueError as exc:
            if "environment variable" in str(exc):
                raise
            raise ValueError(f"traffic log configuration (ITEM_TRAFFIC_*): {exc}") from None


class TrafficLog:
    """Samples served embeddings and appends them to the rotating parquet log. Thread-safe.

    Args:
        config: :class:`TrafficLogConfig`.
        model_tag: written in every row.
        seed: seed of the sampling generator (None = from the OS).
        clock: ``() -> datetime`` (UTC) for the rows' timestamps; tests pass a fake one.
    """

    def __init__(self, config: TrafficLogConfig, model_tag: str, seed: int | None = None, clock=None):
        self.config = config
        self.model_tag = model_tag
        #: ``<storage root>/traffic`` (str; a ``gs://`` URI or a local path)
        self.directory = storage.join(config.storage_root, TRAFFIC_DIR)
        self._rng = np.random.default_rng(seed)
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()
        self._rows: list[tuple] = []
        self._hour: str | None = None
        self._oldest = 0.0
        self._seq = 0
        self.rows_written = 0
        self.files_written: list[Path | str] = []

    def record(self, embeddings: np.ndarray, kinds: Sequence[str], has_title: Sequence[bool],
               has_image: Sequence[bool], title_length: Sequence[int], model_tag: str | None = None) -> int:
        """Sample rows of a served batch and buffer them (writing files as they fill).

        Args:
            embeddings: (n, D) float32, the vectors served.
            kinds, has_title, has_image, title_length: n values each, aligned with ``embeddings``.
            model_tag: the model that served them (default: the log's ``model_tag``); rows of another
                model than the buffered ones start a new file (a file holds one model's vectors).

        Returns:
            the number of rows sampled into the log.

        Never raises for a write failure (the failure is logged and the rows dropped): monitoring
        must not take the service down.
        """
        n = len(embeddings)
        if n == 0 or self.config.sample_rate <= 0.0:
            return 0
        with self._lock:
            keep = np.flatnonzero(self._rng.random(n) < self.config.sample_rate)
            if len(keep) == 0:
                self._maybe_flush_locked(time.monotonic())
                return 0
            tag = model_tag or self.model_tag
            now = self._clock()
            hour = now.strftime("%Y-%m-%dT%H")
            if (self._hour is not None and hour != self._hour) or (self._rows and self._rows[-1][1] != tag):
                self._flush_locked()
            if not self._rows:
                self._hour, self._oldest = hour, time.monotonic()
            emb = np.asarray(embeddings, dtype=np.float32)
            for i in keep:
                self._rows.append((now, tag, str(kinds[i]), emb[i], bool(has_title[i]),
                                   bool(has_image[i]), int(title_length[i])))
                if len(self._rows) >= self.config.rows_per_file:
                    self._flush_locked()
                    self._hour, self._oldest = hour, time.monotonic()
            self._maybe_flush_locked(time.monotonic())
            return len(keep)

    def flush(self) -> Path | str | None:
        """Write the buffered rows now (if any). Returns the file written (Path, or a ``gs://`` URI), or None."""
        with self._lock:
            return self._flush_locked()

    close = flush

    def _maybe_flush_locked(self, now_monotonic: float) -> None:
        if self._rows and now_monotonic - self._oldest >= self.config.flush_seconds:
            self._flush_locked()

    def _flush_locked(self) -> Path | str | None:
        rows, self._rows, self._hour = self._rows, [], None
        if not rows:
            return None
        first = rows[0][0]
        self._seq += 1
        name = f"traffic-{first.strftime('%Y%m%dT%H%M%S')}Z-{os.getpid()}-{self._seq:06d}.parquet"
        path = storage.join(self.directory, first.strftime("%Y-%m-%d"), name)
        path = path if storage.is_gcs(path) else Path(path)
        try:
            cols = list(zip(*rows))
            dim = len(cols[3][0])
            flat = np.concatenate(cols[3]).astype(np.float32, copy=False)
            embedding = pa.ListArray.from_arrays(np.arange(0, len(rows) * dim + 1, dim, dtype=np.int32),
                                                 pa.array(flat, type=pa.float32()))
            table = pa.Table.from_arrays([
                pa.array(cols[0], type=TRAFFIC_SCHEMA.field("timestamp").type),
                pa.array(cols[1], type=pa.string()),
                pa.array(cols[2], type=pa.string()),
                embedding,
                pa.array(cols[4], type=pa.bool_()),
                pa.array(cols[5], type=pa.bool_()),
                pa.array(cols[6], type=pa.int32()),
            ], schema=TRAFFIC_SCHEMA)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            storage.write_bytes(path, sink.getvalue().to_pybytes())   # atomic locally and on GCS
        except Exception:
            logger.exception("traffic log: could not write %d rows to %s; dropped", len(rows), path)
            return None
        self.rows_written += len(rows)
        self.files_written.append(path)
        logger.info("traffic log: wrote %d rows to %s", len(rows), path)
        return path
