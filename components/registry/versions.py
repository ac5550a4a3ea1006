"""The version store under a model registry's root: its paths and lock, and the immutable versions
(listing, reading, the local cache of ``gs://`` versions, uploads, clean-up of crashed registrations).

:class:`components.registry.ModelRegistry` builds on it with registration, the champion pointer and the
promotion history; the module docstring of :mod:`components.registry` describes the layout.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from components import storage
from components.registry.errors import RegistryError

logger = logging.getLogger("components.registry")

#: staging left by a crashed registration is removed by the next one once it is older than this
STAGING_GRACE_S = 3600.0
#: local cache of versions read from a gs:// registry
CACHE_ENV = "ITEM_REGISTRY_CACHE"


class _VersionStore:
    """Paths, lock and the complete versions of a registry root (the base of ``ModelRegistry``)."""

    def __init__(self, root: str | Path, client=None, cache_dir: str | Path | None = None,
                 staging_grace_s: float = STAGING_GRACE_S):
        self.staging_grace_s = staging_grace_s
        self.is_gcs = storage.is_gcs(root)
        self.root: Path | str = storage.normalize(root) if self.is_gcs else Path(root)
        self.client = client
        self.cache_dir = Path(cache_dir or os.environ.get(CACHE_ENV)
                              or Path(tempfile.gettempdir()) / "item-registry-cache")

    # ------------------------------------------------------------------ paths and locking
    def _at(self, *parts: str) -> Path | str:
        return storage.join(self.root, *parts) if self.is_gcs else self.root.joinpath(*parts)

    @property
    def versions_dir(self) -> Path | str:
        return self._at("versions")

    @property
    def pointer_path(self) -> Path | str:
        return self._at("champion.json")

    @property
    def history_path(self) -> Path | str:
        return self._at("history.jsonl")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if self.is_gcs:           # no lock on GCS: every write that must not race carries a precondition
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ versions
    def clean_staging(self, grace_s: float | None = None) -> list[str]:
        """Remove what crashed registrations left: local ``versions/.V.*`` staging folders, and on
        ``gs://`` version prefixes without their ``version.json`` marker (orphan objects), once their
        newest file is older than ``grace_s`` (default: the registry's ``staging_grace_s``), so that a
        registration still in progress elsewhere is never touched.

        Returns:
            the names removed.
        """
        import time
        grace = self.staging_grace_s if grace_s is None else grace_s
        now, removed = time.time(), []
        if self.is_gcs:
            names = storage.list_files(self.versions_dir, client=self.client)
            prefixes = sorted({n.split("/", 1)[0] for n in names if "/" in n})
            complete = {n.split("/", 1)[0] for n in names if n.endswith("/version.json") and n.count("/") == 1}
            for v in prefixes:
                if v in complete:
                    continue
                changed = storage.newest_change(self._at("versions", v), client=self.client)
                if changed is not None and now - changed >= grace:
                    storage.delete_tree(self._at("versions", v), client=self.client)
                    removed.append(v)
        elif Path(self.versions_dir).is_dir():
            for p in Path(self.versions_dir).iterdir():
                if p.name.startswith(".") and p.is_dir():
                    changed = storage.newest_change(p)
                    if changed is not None and now - changed >= grace:
                        shutil.rmtree(p, ignore_errors=True)
                        removed.append(p.name)
        if removed:
            logger.warning("removed %d staging leftover(s) of crashed registrations: %s", len(removed), removed)
        return removed

    def _upload_version(self, staging: Path, version: str) -> None:
        """Upload a staged version to GCS: every file, then ``version.json`` last as the marker."""
        final = self._at("versions", version)
        try:
            storage.upload_tree(staging, final, client=self.client, skip=("version.json",))
            storage.upload_file(staging / "version.json", storage.join(final, "version.json"),
                                if_generation_match=0, client=self.client)
        except storage.PreconditionFailed as exc:
            raise RegistryError(f"version {version} already exists in {self.root}; versions are immutable") from exc
        except BaseException:
            with contextlib.suppress(Exception):             # best effort: it is invisible anyway
                storage.delete_tree(final, client=self.client)
            raise

    def _complete(self, version: str) -> bool:
        marker = self._at("versions", version, "version.json")
        return storage.exists(marker, client=self.client) if self.is_gcs else Path(marker).exists()

    def _require(self, version: str) -> None:
        if not self._complete(version):
            raise RegistryError(f"unknown model version {version!r}; known: {self.versions()[-5:]}")

    def versions(self) -> list[str]:
        """All complete versions (with their ``version.json``), oldest first."""
        if self.is_gcs:
            names = storage.list_files(self.versions_dir, client=self.client, glob="*/version.json")
            return sorted({n.split("/")[0] for n in names if n.count("/") == 1 and not n.startswith(".")})
        if not self.versions_dir.exists():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def version_path(self, version: str) -> Path:
        """Local folder of a version (for ``gs://``: its copy in the local cache, downloaded once).

        Raises:
            RegistryError: unknown (or incomplete) version.
        """
        if not self.is_gcs:
            path = self.versions_dir / version
            if not (path / "version.json").exists():
                raise RegistryError(f"unknown model version {version!r}; known: {self.versions()[-5:]}")
            return path
        self._require(version)
        bucket, name = storage.split_gcs(self.root)
        cached = self.cache_dir / bucket / name / version
        if (cached / "version.json").exists():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=cached.parent))
        try:
            storage.download_tree(self._at("versions", version), tmp, client=self.client)
            try:
                os.rename(tmp, cached)
            except OSError:                                   # another process cached it first
                if not (cached / "version.json").exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cached

    def info(self, version: str) -> dict:
        """``version.json`` of a version. Raises RegistryError if unknown."""
        if self.is_gcs:
            try:
                return storage.read_json(self._at("versions", version, "version.json"), client=self.client)
            except storage.StorageNotFound:
                raise RegistryError(f"unknown model version {version!r}; known: {self.versions()[-5:]}") from None
        return json.loads((self.version_path(version) / "version.json").read_text())
