"""One storage interface for local paths and Google Cloud Storage URIs (``gs://bucket/prefix``).

Every part of the project that keeps files outside a KFP artifact (the model registry, the serving
traffic log, catalog shards and images, the run outputs of ``item run``) goes through the functions
here, so the same code runs on a laptop and on a Kubeflow cluster with data and models on GCS.

A *location* is a ``str`` or :class:`pathlib.Path`: a local path, or ``gs://bucket/name`` (the
object name may end in ``/`` for a "folder"; GCS has no folders, only names sharing a prefix).

=====================  =========================================  ============================================
function               local path                                 ``gs://``
=====================  =========================================  ============================================
``read_bytes``         file contents                              object contents (``google-cloud-storage``)
``write_bytes``        temp file + ``os.replace`` (atomic)        one upload (an object appears only complete);
                                                                  ``if_generation_match`` = GCS precondition
``upload_file``        ``shutil.copy2`` via a temp file           resumable upload in ``CHUNK_SIZE`` chunks for
                                                                  files >= ``RESUMABLE_THRESHOLD``
``list_files``         files under a folder, relative names       objects under a prefix, relative names
``local_copy``         the path itself                            a download into a temporary folder
=====================  =========================================  ============================================

Credentials: ``google.cloud.storage.Client()`` (Application Default Credentials, e.g.
``GOOGLE_APPLICATION_CREDENTIALS`` pointing at a service-account key mounted from a Kubernetes
secret). With ``STORAGE_EMULATOR_HOST`` set (tests, ``gcp-storage-emulator``) the client talks to
the emulator with anonymous credentials and project ``$GOOGLE_CLOUD_PROJECT`` (default ``test``).

Errors: :class:`StorageNotFound` (a ``FileNotFoundError``) for a missing file/object,
:class:`PreconditionFailed` when a generation precondition does not hold (another writer won), and
:class:`StorageError` for a malformed URI or another failure; every message names the location.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from components.storage.uris import (GCS_SCHEME, Location, PreconditionFailed, StorageError,  # noqa: F401
                                     StorageNotFound, UnsafeObjectName, is_gcs, join, normalize, split_gcs)

#: files at least this large are uploaded with a resumable upload (in CHUNK_SIZE pieces)
RESUMABLE_THRESHOLD = 8 * 1024 * 1024
#: chunk of a resumable upload; GCS wants a multiple of 256 KiB
CHUNK_SIZE = 8 * 1024 * 1024


# -------------------------------------------------------------------------------------- client
_client_lock = threading.Lock()
_default_client = None


def gcs_client():
    """The process's ``google.cloud.storage.Client`` (created on first use).

    With ``STORAGE_EMULATOR_HOST`` set: anonymous credentials, project ``$GOOGLE_CLOUD_PROJECT``
    (default ``"test"``). Otherwise Application Default Credentials.
    """
    global _default_client
    with _client_lock:
        if _default_client is None:
            from google.cloud import storage
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials
                _default_client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                                                 credentials=AnonymousCredentials())
            else:
                _default_client = storage.Client()
        return _default_client


def _blob(uri: str, client=None, chunk_size: int | None = None):
    bucket, name = split_gcs(uri)
    if not name:
        raise StorageError(f"URI {uri!r} names a bucket but no object")
    return (client or gcs_client()).bucket(bucket).blob(name, chunk_size=chunk_size)


@contextlib.contextmanager
def _gcs_errors(uri: str, what: str) -> Iterator[None]:
    from google.api_core import exceptions as gexc
    try:
        yield
    except gexc.NotFound as exc:
        raise StorageNotFound(f"{what} {uri}: not found ({exc.message})") from exc
    except gexc.PreconditionFailed as exc:
        raise PreconditionFailed(f"{what} {uri}: generation precondition failed; the object was changed "
                                 f"by another writer since it was read") from exc
    except gexc.GoogleAPIError as exc:
        raise StorageError(f"{what} {uri}: {exc}") from exc


# ----------------------------------------------------------------------------------- reading
def exists(location: Location, client=None) -> bool:
    """True if the file/object exists (for a local folder: True if the folder exists)."""
    if is_gcs(location):
        with _gcs_errors(str(location), "checking"):
            return _blob(str(location), client).exists()
    return Path(location).exists()


def read_bytes(location: Location, client=None) -> bytes:
    """Contents of a file/object.

    Raises:
        StorageNotFound: it does not exist. StorageError: another failure.
    """
    if is_gcs(location):
        with _gcs_errors(str(location), "reading"):
            return _blob(str(location), client).download_as_bytes()
    try:
        return Path(location).read_bytes()
    except FileNotFoundError as exc:
        raise StorageNotFound(f"reading {location}: not found") from exc


def read_text(location: Location, client=None) -> str:
    """UTF-8 text of a file/object (see :func:`read_bytes`)."""
    return read_bytes(location, client).decode("utf-8")


def read_json(location: Location, client=None) -> Any:
    """Parsed JSON of a file/object.

    Raises:
        StorageNotFound, StorageError: see :func:`read_bytes`; StorageError also for invalid JSON.
    """
    try:
        return json.loads(read_bytes(location, client))
    except json.JSONDecodeError as exc:
        raise StorageError(f"{location} is not valid JSON: {exc}") from exc


def read_with_generation(location: str, client=None) -> tuple[bytes | None, int]:
    """``gs://`` only: (contents or None when absent, the object's generation or 0 when absent).

    The generation is the one to pass as ``if_generation_match`` to replace exactly this content.
    """
    with _gcs_errors(location, "reading"):
        blob = _blob(location, client)
        bucket = blob.bucket
        current = bucket.get_blob(blob.name)
        if current is None:
            return None, 0
        generation = int(current.generation)
        try:
            data = current.download_as_bytes(if_generation_match=generation)
        except Exception as exc:  # changed in between: report the newer state via a re-read
            from google.api_core import exceptions as gexc
            if isinstance(exc, (gexc.PreconditionFailed, gexc.NotFound)):
                return read_with_generation(location, client)
            raise
        return data, generation


def list_files(location: Location, client=None, glob: str | None = None) -> list[str]:
    """Names of every file under a folder/prefix, relative to it with ``/`` separators, sorted.

    Args:
        glob: optional pattern on the relative name (``fnmatch`` locally, GCS ``matchGlob`` on gs://).

    A missing folder/prefix lists as empty.
    """
    if is_gcs(location):
        bucket, name = split_gcs(str(location))
        prefix = name.rstrip("/") + "/" if name else ""
        with _gcs_errors(str(location), "listing"):
            kwargs = {"match_glob": prefix + glob} if glob else {}
            blobs = (client or gcs_client()).list_blobs(bucket, prefix=prefix, **kwargs)
            return sorted(b.name[len(prefix):] for b in blobs if not b.name.endswith("/"))
    root = Path(location)
    if not root.is_dir():
        return []
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    if glob:
        import fnmatch
        names = [n for n in names if fnmatch.fnmatchcase(n, glob)]
    return names


def newest_change(location: Location, client=None) -> float | None:
    """Epoch seconds of the latest change to any file under a folder/prefix (file mtime; object
    ``updated`` time on ``gs://``), or None when nothing is there."""
    if is_gcs(location):
        bucket, name = split_gcs(str(location))
        prefix = name.rstrip("/") + "/" if name else ""
        with _gcs_errors(str(location), "listing"):
            times = [b.updated.timestamp() for b in (client or gcs_client()).list_blobs(bucket, prefix=prefix)
                     if b.updated is not None]
        return max(times) if times else None
    root = Path(location)
    if not root.exists():
        return None
    times = [p.stat().st_mtime for p in [root, *root.rglob("*")]]
    return max(times)


def download_file(location: Location, dest: Location, client=None) -> Path:
    """Copy a file/object to a local path (parent folders created). Returns the local path.

    Raises:
        StorageNotFound: the source does not exist.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_gcs(location):
        with _gcs_errors(str(location), "downloading"):
            _blob(str(location), client).download_to_filename(str(dest))
        return dest
    try:
        shutil.copy2(location, dest)
    except FileNotFoundError as exc:
        raise StorageNotFound(f"downloading {location}: not found") from exc
    return dest


def download_tree(location: Location, dest: Location, client=None) -> Path:
    """Copy every file under a folder/prefix into local folder ``dest`` (same relative names).

    Object names are checked before anything is written: GCS allows names such as
    ``versions/V/../../x`` or ``/etc/x``, which would resolve outside ``dest``.

    Raises:
        StorageNotFound: nothing exists under ``location``.
        UnsafeObjectName: an object's name resolves outside ``dest`` (nothing was downloaded).
    """
    dest = Path(dest)
    names = list_files(location, client)
    if not names:
        raise StorageNotFound(f"downloading {location}: no file under it")
    root = dest.resolve()
    for rel in names:
        target = (dest / rel).resolve()
        if not rel or rel.startswith("/") or ".." in Path(rel).parts or not target.is_relative_to(root):
            raise UnsafeObjectName(f"downloading {location}: object {join(location, rel)!r} would be written "
                                   f"outside {dest} ({target}); refused, nothing downloaded")
    for rel in names:
        download_file(join(location, rel), dest / rel, client)
    return dest


@contextlib.contextmanager
def local_copy(location: Location, client=None) -> Iterator[Path]:
    """A local path holding the file or folder at ``location``: the path itself when local, else a
    download into a temporary folder (removed on exit). A ``gs://`` location is a folder when
    objects exist under ``<location>/``, else a single object."""
    if not is_gcs(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="item-gcs-") as tmp:
        uri = str(location).rstrip("/")
        target = Path(tmp) / (uri.rsplit("/", 1)[-1] or "object")
        if list_files(uri, client):
            download_tree(uri, target, client)
        else:
            download_file(uri, target, client)
        yield target


# ----------------------------------------------------------------------------------- writing
def write_bytes(location: Location, data: bytes, *, if_generation_match: int | None = None,
                content_type: str = "application/octet-stream", client=None) -> int | None:
    """Write a whole file/object; readers never see it half-written.

    Args:
        if_generation_match: ``gs://`` only: write only if the object's current generation is this
            (0: only if it does not exist). Ignored locally (callers lock there).

    Returns:
        the new object's generation on ``gs://``, None locally.

    Raises:
        PreconditionFailed: the precondition did not hold (someone else wrote it).
    """
    if is_gcs(location):
        with _gcs_errors(str(location), "writing"):
            blob = _blob(str(location), client)
            blob.upload_from_string(data, content_type=content_type, if_generation_match=if_generation_match)
            return int(blob.generation) if blob.generation is not None else None
    from item_model.io import atomic_path
    with atomic_path(location) as tmp:
        tmp.write_bytes(data)
    return None


def write_text(location: Location, text: str, **kwargs) -> int | None:
    """UTF-8 text, see :func:`write_bytes`."""
    return write_bytes(location, text.encode("utf-8"), content_type="text/plain; charset=utf-8", **kwargs)


def write_json(location: Location, obj: Any, **kwargs) -> int | None:
    """Indented JSON, see :func:`write_bytes`."""
    from item_model.io import json_text
    return write_bytes(location, json_text(obj).encode("utf-8"), content_type="application/json", **kwargs)


def upload_file(src: Location, location: Location, *, if_generation_match: int | None = None,
                client=None) -> int | None:
    """Copy a local file to a file/object. On ``gs://`` files of at least :data:`RESUMABLE_THRESHOLD`
    bytes go up as a resumable upload in :data:`CHUNK_SIZE` chunks (a dropped connection resumes
    the upload, and the object only appears once every chunk arrived); smaller ones in one request.

    Returns:
        the object's generation on ``gs://``, None locally.

    Raises:
        StorageNotFound: ``src`` does not exist. PreconditionFailed: see :func:`write_bytes`.
    """
    src = Path(src)
    if not src.is_file():
        raise StorageNotFound(f"uploading {src}: no such file")
    if is_gcs(location):
        size = src.stat().st_size
        with _gcs_errors(str(location), "uploading to"):
            blob = _blob(str(location), client, chunk_size=CHUNK_SIZE if size >= RESUMABLE_THRESHOLD else None)
            blob.upload_from_filename(str(src), if_generation_match=if_generation_match)
            return int(blob.generation) if blob.generation is not None else None
    from item_model.io import atomic_path
    with atomic_path(location) as tmp:
        shutil.copy2(src, tmp)
    return None


def upload_tree(src: Location, location: Location, client=None, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy every file under local folder ``src`` to ``location`` (same relative names).

    Args:
        skip: relative names not to copy (e.g. a completion marker the caller writes last).

    Returns:
        the relative names copied, sorted.
    """
    names = [n for n in list_files(src) if n not in skip]
    for rel in names:
        upload_file(Path(src) / rel, join(location, rel), client=client)
    return names


def copy(src: Location, dest: Location, client=None) -> None:
    """Copy a local file or folder to ``dest`` (local or ``gs://``)."""
    if Path(src).is_dir():
        if is_gcs(dest):
            upload_tree(src, dest, client)
        else:
            shutil.copytree(src, dest, dirs_exist_ok=True)
    else:
        upload_file(src, dest, client=client)


def update(location: str, change: Callable[[bytes | None], bytes], client=None, timeout_s: float = 60.0,
           content_type: str = "application/octet-stream") -> bytes:
    """Read-modify-write of one ``gs://`` object that never loses a concurrent writer's change.

    Reads the object and its generation, writes ``change(content)`` (``None`` when absent) with
    ``if_generation_match`` = that generation (0 = must still be absent), and on
    :class:`PreconditionFailed` (another writer came first) reads again and re-applies ``change``,
    with exponential backoff and jitter (``google.api_core.retry.Retry``: 50 ms doubling to 2 s;
    GCS docs, "Request preconditions" and "Retry strategy"). ``change`` must be a pure function of the
    content it is given, as it may run several times.

    Returns:
        the bytes written.

    Raises:
        StorageError: still contended after ``timeout_s`` seconds.
        ValueError: ``location`` is not ``gs://`` (local callers hold a file lock instead).
    """
    if not is_gcs(location):
        raise ValueError(f"storage.update() is for gs:// objects, got {location}")
    from google.api_core import exceptions as gexc
    from google.api_core.retry import Retry, if_exception_type

    written: list[bytes] = []

    def attempt() -> None:
        data, generation = read_with_generation(str(location), client)
        new = change(data)
        write_bytes(location, new, if_generation_match=generation, content_type=content_type, client=client)
        written.append(new)

    retry = Retry(predicate=if_exception_type(PreconditionFailed), initial=0.05, maximum=2.0, multiplier=2.0,
                  timeout=timeout_s)
    try:
        retry(attempt)()
    except gexc.RetryError as exc:
        raise StorageError(f"updating {location}: still changed by other writers after {timeout_s:.0f} s") from exc
    return written[-1]


def append_line(location: Location, line: str, client=None, timeout_s: float = 60.0) -> None:
    """Append one line (a ``\\n`` is added) to a text file/object.

    Locally: ``O_APPEND`` write + fsync (callers hold their lock). On ``gs://`` objects cannot be
    appended to: :func:`update` re-writes the object with the line added under a generation
    precondition, retrying with backoff on a concurrent writer, so no line is ever lost.

    Raises:
        StorageError: still contended after ``timeout_s`` seconds.
    """
    if not is_gcs(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        with open(location, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return
    update(str(location), lambda data: (data or b"") + line.encode("utf-8") + b"\n", client=client,
           timeout_s=timeout_s, content_type="text/plain; charset=utf-8")


def delete(location: Location, *, if_generation_match: int | None = None, client=None) -> None:
    """Remove a file/object (no error if it is absent).

    Raises:
        PreconditionFailed: ``gs://`` object changed since generation ``if_generation_match``.
    """
    if is_gcs(location):
        from google.api_core import exceptions as gexc
        with _gcs_errors(str(location), "deleting"):
            try:
                _blob(str(location), client).delete(if_generation_match=if_generation_match)
            except gexc.NotFound:
                pass
        return
    Path(location).unlink(missing_ok=True)


def delete_tree(location: Location, client=None) -> None:
    """Remove every file under a folder/prefix (no error if there is none)."""
    if is_gcs(location):
        for rel in list_files(location, client):
            delete(join(location, rel), client=client)
        return
    shutil.rmtree(location, ignore_errors=True)



#: the environment variable naming the project's storage root, and its default (a local folder)
STORAGE_ENV = "ITEM_STORAGE_ROOT"
DEFAULT_STORAGE_ROOT = "item-storage"


def storage_root(root: str | Path | None = None) -> Path | str:
    """The project's storage root (registry, checkpoints, calibrations, traffic log): ``root`` if given,
    else ``$ITEM_STORAGE_ROOT``, else ``./item-storage``; an absolute ``Path``, or a ``gs://`` URI (str)."""
    root = str(root or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE_ROOT)
    return normalize(root) if is_gcs(root) else Path(root).resolve()

# gs:// image URIs of catalog rows are read through this module (item_model.image_utils stays platform-free)
from item_model.image_utils import register_uri_reader  # noqa: E402

register_uri_reader("gs", read_bytes)
