"""Model registry: immutable model versions, a champion pointer and an append-only promotion history
over a storage root (a local folder; a ``gs://`` root slots in through the same file operations).

Layout under the root::

    versions/<version>/            immutable once written: the Hugging Face model folder, eval.json,
                                   eval_details.npz, blessing.json, gate_report.html/.md, version.json
    champion.json                  {"version", "generation", "promoted_at", "actor", "automatic",
                                    "gate", "reason"}; moved atomically (write temp + os.replace)
    history.jsonl                  one JSON object per decision, oldest first, never rewritten

Crash safety: a version is first written under a temporary name and renamed into ``versions/``
(so it is either complete or absent); only then is the pointer replaced. A crash before the
pointer is replaced leaves the old champion in place. The pointer is the source of truth for the
champion; the history line is appended after it (``check()`` reports a pointer without history).

Concurrent promotions: the pointer carries a ``generation``; :meth:`ModelRegistry.promote` takes
the generation it read and fails with :class:`ConcurrentPromotionError` if another promotion moved
the pointer in between (compare-and-swap under a file lock here; a GCS generation precondition on
``gs://``).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .io import sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

#: fault-injection point for tests: when set to "before-pointer", promote() kills the process after
#: the version is written and before the pointer moves (a real crash, not an exception)
CRASH_ENV = "ITEM_REGISTRY_CRASH"


class RegistryError(RuntimeError):
    """A registry operation is impossible (unknown version, version exists, bad reference)."""


class ConcurrentPromotionError(RegistryError):
    """Another promotion moved the champion pointer since it was read; re-read and retry or stop."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")



class ModelRegistry:
    """Champion/challenger model registry over a local storage root.

    Args:
        root: folder of the registry (created on first write).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths and locking
    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def pointer_path(self) -> Path:
        return self.root / "champion.json"

    @property
    def history_path(self) -> Path:
        return self.root / "history.jsonl"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ versions
    def register(self, model_dir: str | Path, files: dict[str, str | Path], info: dict) -> str:
        """Store a new immutable version: the model folder plus named extra files.

        Args:
            model_dir: Hugging Face model folder (``model.safetensors``, ``config.json``, tokenizer).
            files: ``{name in the version folder: source file or folder}`` (eval.json, blessing.json,
                reports, the catalog index).
            info: metadata for ``version.json`` (catalog fingerprint, code version, blessed, run).

        Returns:
            the version id ``<UTC timestamp>-<first 8 hex of the weights' SHA-256>``.

        Raises:
            RegistryError: the model folder has no ``model.safetensors``, or the version exists.
        """
        model_dir = Path(model_dir)
        weights = model_dir / "model.safetensors"
        if not weights.exists():
            raise RegistryError(f"{model_dir} holds no model.safetensors")
        digest = sha256_file(weights)
        version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + digest[:8]
        final = self.versions_dir / version
        if final.exists():
            raise RegistryError(f"version {version} already exists; versions are immutable")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
        try:
            shutil.copytree(model_dir, staging / "model", dirs_exist_ok=True)
            for name, src in files.items():
                if src and Path(src).is_dir():
                    shutil.copytree(src, staging / name)
                elif src and Path(src).exists():
                    shutil.copy2(src, staging / name)
            meta = {"version": version, "created_at": _now(), "weights_sha256": digest, **info}
            (staging / "version.json").write_text(json.dumps(meta, indent=2, default=str))
            os.chmod(staging, 0o755)
            os.rename(staging, final)                       # atomic: complete or absent
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("registered model version %s", version)
        return version

    def versions(self) -> list[str]:
        """All complete versions, oldest first."""
        if not self.versions_dir.exists():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def version_path(self, version: str) -> Path:
        """Folder of a version. Raises RegistryError if unknown."""
        path = self.versions_dir / version
        if not (path / "version.json").exists():
            raise RegistryError(f"unknown model version {version!r}; known: {self.versions()[-5:]}")
        return path

    def info(self, version: str) -> dict:
        """``version.json`` of a version."""
        return json.loads((self.version_path(version) / "version.json").read_text())

    def resolve(self, ref: str = "latest") -> str:
        """``"latest"`` (newest version), ``"champion"``, or a version id / unique prefix -> version id.

        Raises:
            RegistryError: nothing matches, or a prefix is ambiguous.
        """
        versions = self.versions()
        if ref == "latest":
            if not versions:
                raise RegistryError(f"registry {self.root} holds no version")
            return versions[-1]
        if ref == "champion":
            champ = self.champion()
            if champ is None:
                raise RegistryError(f"registry {self.root} has no champion")
            return champ["version"]
        matches = [v for v in versions if v == ref or v.startswith(ref)]
        if len(matches) != 1:
            raise RegistryError(f"version reference {ref!r} matches {len(matches)} versions")
        return matches[0]

    # ------------------------------------------------------------------ champion and history
    def champion(self) -> dict | None:
        """The champion pointer (dict) or None when there is no champion yet."""
        if not self.pointer_path.exists():
            return None
        return json.loads(self.pointer_path.read_text())

    def history(self) -> list[dict]:
        """Every recorded decision, oldest first."""
        if not self.history_path.exists():
            return []
        return [json.loads(line) for line in self.history_path.read_text().splitlines() if line.strip()]

    def _append_history(self, entry: dict) -> None:
        with open(self.history_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def promote(self, version: str, *, gate: str, automatic: bool, reason: str, actor: str | None = None,
                expected_generation: int | None = None) -> dict:
        """Make ``version`` the champion and record the decision.

        Args:
            gate: which gate (or override) decided, e.g. ``"item-training gate"`` or ``"manual"``.
            automatic: True when the pipeline's gate decided, False for a human override.
            expected_generation: the pointer generation the caller based its decision on (None = the
                current one); a different current generation raises ConcurrentPromotionError.

        Returns:
            the new pointer.

        Raises:
            RegistryError: unknown version, or the version was rejected by a human.
            ConcurrentPromotionError: the pointer moved since ``expected_generation``.
        """
        self.version_path(version)
        with self._lock():
            current = self.champion()
            generation = current["generation"] if current else 0
            if expected_generation is not None and expected_generation != generation:
                raise ConcurrentPromotionError(
                    f"champion pointer moved (generation {generation}, expected {expected_generation}); "
                    f"re-read the champion and decide again")
            if automatic and self._rejected(version):
                raise RegistryError(f"version {version} was rejected by a human; only a manual approve promotes it")
            pointer = {"version": version, "generation": generation + 1, "promoted_at": _now(),
                       "actor": actor or getpass.getuser(), "automatic": automatic, "gate": gate,
                       "reason": reason, "previous": current["version"] if current else None}
            if os.environ.get(CRASH_ENV) == "before-pointer":
                os._exit(137)                                 # simulated crash (tests only)
            write_json_atomic(self.pointer_path, pointer)
            self._append_history({"at": pointer["promoted_at"], "action": "promote", "version": version,
                                  "actor": pointer["actor"], "automatic": automatic, "gate": gate,
                                  "reason": reason, "previous": pointer["previous"],
                                  "generation": pointer["generation"]})
        logger.info("champion is now %s (%s)", version, "automatic" if automatic else "manual")
        return pointer

    def record(self, version: str, action: str, *, gate: str, automatic: bool, reason: str,
               actor: str | None = None) -> dict:
        """Append a decision that does not move the pointer (e.g. ``"blocked"`` by the gate)."""
        self.version_path(version)
        entry = {"at": _now(), "action": action, "version": version, "actor": actor or getpass.getuser(),
                 "automatic": automatic, "gate": gate, "reason": reason}
        with self._lock():
            self._append_history(entry)
        return entry

    def reject(self, version: str, *, reason: str, actor: str | None = None) -> dict:
        """A human blocks ``version``: recorded, and if it is the champion the pointer goes back to the
        latest earlier champion that was not rejected (or is removed when there is none)."""
        self.version_path(version)
        with self._lock():
            entry = {"at": _now(), "action": "reject", "version": version, "actor": actor or getpass.getuser(),
                     "automatic": False, "gate": "manual", "reason": reason}
            self._append_history(entry)
            current = self.champion()
            if current and current["version"] == version:
                rejected = {h["version"] for h in self.history() if h["action"] == "reject"}
                earlier = [h["version"] for h in self.history()
                           if h["action"] == "promote" and h["version"] not in rejected]
                if earlier:
                    pointer = {**current, "version": earlier[-1], "generation": current["generation"] + 1,
                               "promoted_at": _now(), "actor": entry["actor"], "automatic": False,
                               "gate": "manual", "reason": f"rollback: {version} rejected ({reason})",
                               "previous": version}
                    write_json_atomic(self.pointer_path, pointer)
                    self._append_history({"at": pointer["promoted_at"], "action": "promote",
                                          "version": pointer["version"], "actor": entry["actor"],
                                          "automatic": False, "gate": "manual", "reason": pointer["reason"],
                                          "previous": version, "generation": pointer["generation"]})
                else:
                    self.pointer_path.unlink()
        return entry

    def _rejected(self, version: str) -> bool:
        return any(h["action"] == "reject" and h["version"] == version for h in self.history())

    def check(self) -> list[str]:
        """Consistency problems: a champion that is not a complete version, or without a history line."""
        problems = []
        champ = self.champion()
        if champ:
            if champ["version"] not in self.versions():
                problems.append(f"champion {champ['version']} is not a complete version")
            if not any(h["action"] == "promote" and h["version"] == champ["version"] for h in self.history()):
                problems.append(f"champion {champ['version']} has no promotion in the history")
        return problems
