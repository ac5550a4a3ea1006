"""Locations of the storage interface: local paths and ``gs://bucket/name`` URIs (testing, splitting,
joining, normalizing), and the errors every storage operation raises.

Re-exported by :mod:`components.storage`; import them from there.
"""

from __future__ import annotations

import os
from pathlib import Path

GCS_SCHEME = "gs://"

Location = str | os.PathLike


class StorageError(RuntimeError):
    """A storage operation failed; the message names the location."""


class StorageNotFound(StorageError, FileNotFoundError):
    """The file or object does not exist."""


class UnsafeObjectName(StorageError):
    """An object name that would resolve outside the download folder (``..``, an absolute name)."""


class PreconditionFailed(StorageError):
    """A ``gs://`` write's generation precondition failed: the object changed since it was read."""


# ---------------------------------------------------------------------------------------- URIs
def is_gcs(location: Location) -> bool:
    """True for a ``gs://`` URI."""
    return isinstance(location, str) and location.startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``.

    Raises:
        StorageError: not a ``gs://`` URI, or no bucket name.
    """
    if not is_gcs(uri):
        raise StorageError(f"{uri!r} is not a gs://bucket/name URI")
    bucket, _, name = uri[len(GCS_SCHEME):].partition("/")
    if not bucket:
        raise StorageError(f"URI {uri!r} names no bucket (expected gs://bucket/name)")
    return bucket, name


def join(base: Location, *parts: str) -> str:
    """Join path parts onto a location with ``/`` (a ``gs://`` URI stays a URI). Returns ``str``."""
    if is_gcs(base):
        out = str(base).rstrip("/")
        for p in parts:
            p = str(p).strip("/")
            if p:
                out = f"{out}/{p}"
        return out
    return str(Path(base).joinpath(*[str(p) for p in parts]))


def normalize(location: Location) -> str:
    """A ``gs://`` URI unchanged (trailing ``/`` dropped), a local path made absolute."""
    if is_gcs(location):
        return str(location).rstrip("/")
    return str(Path(location).expanduser().resolve())
