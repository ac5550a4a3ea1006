"""Model registry: immutable model versions, a champion pointer and an append-only promotion history
over a storage root: a local folder or a ``gs://bucket/prefix`` (through :mod:`components.storage`).

Layout under the root::

    versions/<version>/            immutable once written: the Hugging Face model folder, eval.json,
                                   eval_details.npz, blessing.json, gate_report.html/.md, version.json
    champion.json                  {"version", "generation", "promoted_at", "actor", "automatic",
                                    "gate", "reason"}; moved atomically (write temp + os.replace)
    history.jsonl                  one JSON object per decision, oldest first, never rewritten

Crash safety: locally a version is first written under a temporary name and renamed into
``versions/`` (so it is either complete or absent). GCS has no rename: every file of a version is
uploaded under ``versions/<version>/`` (large files as resumable uploads) and ``version.json`` is
written last, with ``if_generation_match=0``; a version counts (``versions()``, ``resolve()``,
``version_path()``) only once its ``version.json`` exists, so a crashed upload never shows as a
finished version. Only then is the pointer replaced; a crash before that leaves the old champion in
place. The pointer is the source of truth for the champion; the history line is appended after it
(``check()`` reports a pointer without history; ``repair()`` and the next promotion recover the line
from the pointer, which holds all its fields). Staging left by a crashed registration (``versions/.V.*``
locally, a version prefix without ``version.json`` on GCS) is removed by the next registration once it
is older than ``STAGING_GRACE_S``.

Concurrent promotions: the pointer carries a ``generation``; :meth:`ModelRegistry.promote` takes
the generation it read and fails with :class:`ConcurrentPromotionError` if another promotion moved
the pointer in between. Locally that is a compare-and-swap under a file lock; on ``gs://`` the new
pointer is written with ``if_generation_match`` = the GCS generation of the pointer object that was
read, so of two promotions racing from the same pointer exactly one write succeeds and the other
gets :class:`ConcurrentPromotionError`. ``history.jsonl`` is appended on GCS by read + rewrite under
the same kind of precondition (retried), so no decision is lost.

Reading a version on ``gs://`` (``version_path``) downloads it once into a local cache
(``$ITEM_REGISTRY_CACHE``, default ``<tmp>/item-registry-cache``); versions are immutable, so the
cache never goes stale.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from components import storage
from components.registry.errors import ConcurrentPromotionError, CorruptRegistryFile, RegistryError
from components.registry.versions import CACHE_ENV, STAGING_GRACE_S, _VersionStore  # noqa: F401
from item_model.io import sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

#: fault-injection point for tests: when set to "before-pointer", promote() kills the process after
#: the version is written and before the pointer moves (a real crash, not an exception)
CRASH_ENV = "ITEM_REGISTRY_CRASH"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")



class ModelRegistry(_VersionStore):
    """Champion/challenger model registry over a local folder or a ``gs://bucket/prefix``.

    Args:
        root: folder or ``gs://`` URI of the registry (created on first write).
        client: ``google.cloud.storage.Client`` for a ``gs://`` root (None = :func:`storage.gcs_client`).
        cache_dir: local cache of versions read from ``gs://`` (None = ``$ITEM_REGISTRY_CACHE`` or
            ``<tmp>/item-registry-cache``).

    ``root``, ``versions_dir``, ``pointer_path`` and ``history_path`` are :class:`~pathlib.Path`
    for a local registry and ``str`` URIs for ``gs://``; :meth:`version_path` is always a local Path.
    """

    # ------------------------------------------------------------------ versions
    def register(self, model_dir: str | Path, files: dict[str, str | Path], info: dict) -> str:
        """Store a new immutable version: the model folder plus named extra files.

        Args:
            model_dir: Hugging Face model folder (``model.safetensors``, ``config.json``, tokenizer).
            files: ``{name in the version folder: source file or folder}`` (eval.json, blessing.json,
                reports, the catalog index); local paths.
            info: metadata for ``version.json`` (catalog fingerprint, code version, blessed, run).

        Returns:
            the version id ``<UTC timestamp>-<first 8 hex of the weights' SHA-256>``.

        Raises:
            RegistryError: the model folder has no ``model.safetensors``, or the version exists.
            storage.StorageError: an upload to ``gs://`` failed (the partial version stays invisible).
        """
        model_dir = Path(model_dir)
        weights = model_dir / "model.safetensors"
        if not weights.exists():
            raise RegistryError(f"{model_dir} holds no model.safetensors")
        digest = sha256_file(weights)
        version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + digest[:8]
        if self._complete(version):
            raise RegistryError(f"version {version} already exists; versions are immutable")
        self.clean_staging()
        if self.is_gcs:
            staging = Path(tempfile.mkdtemp(prefix=f"item-version-{version}."))
        else:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
        try:
            shutil.copytree(model_dir, staging / "model", dirs_exist_ok=True)
            if os.environ.get(CRASH_ENV) == "during-staging":
                os._exit(137)                                 # simulated crash (tests only)
            for name, src in files.items():
                if src and Path(src).is_dir():
                    shutil.copytree(src, staging / name)
                elif src and Path(src).exists():
                    shutil.copy2(src, staging / name)
            meta = {"version": version, "created_at": _now(), "weights_sha256": digest, **info}
            (staging / "version.json").write_text(json.dumps(meta, indent=2, default=str))
            if self.is_gcs:
                self._upload_version(staging, version)
            else:
                os.chmod(staging, 0o755)
                os.rename(staging, self.versions_dir / version)      # atomic: complete or absent
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("registered model version %s", version)
        return version

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
    def _read_pointer(self) -> tuple[dict | None, int | None]:
        """(pointer or None, GCS generation of the pointer object: 0 when absent, None locally)."""
        if self.is_gcs:
            data, generation = storage.read_with_generation(self.pointer_path, client=self.client)
            return (self._parse_pointer(data) if data else None), generation
        return self.champion(), None

    def _parse_pointer(self, data: bytes) -> dict:
        """The pointer object, checked. Raises CorruptRegistryFile naming the file."""
        try:
            pointer = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            pointer, why = None, f"not valid JSON ({exc})"
        else:
            why = "not an object with a 'version'"
        if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
            raise CorruptRegistryFile(
                f"champion pointer {self.pointer_path} is corrupt: {why}. The registry did not write it; restore "
                f"it from a backup, or name the champion again with 'item gate approve VERSION' (the last "
                f"'promote' line of {self.history_path} says which version it was)")
        return pointer

    def _write_pointer(self, pointer: dict | None, object_generation: int | None) -> None:
        """Replace (or, with None, remove) the pointer; on GCS only if it is still ``object_generation``.

        Raises:
            ConcurrentPromotionError: another writer replaced the pointer object first.
        """
        try:
            if pointer is None:
                storage.delete(self.pointer_path, if_generation_match=object_generation, client=self.client)
            elif self.is_gcs:
                storage.write_json(self.pointer_path, pointer, if_generation_match=object_generation,
                                   client=self.client)
            else:
                write_json_atomic(self.pointer_path, pointer)
        except storage.PreconditionFailed as exc:
            # a lost response: the write committed, the client library retried it, and the retry met the
            # generation its own first attempt created. The pointer then holds exactly what was written.
            if pointer is not None and self.is_gcs:
                with contextlib.suppress(Exception):
                    data, _ = storage.read_with_generation(self.pointer_path, client=self.client)
                    if data and json.loads(data) == json.loads(json.dumps(pointer, default=str)):
                        logger.info("champion pointer write was retried after a lost response; it had committed")
                        return
            raise ConcurrentPromotionError(
                f"champion pointer {self.pointer_path} was moved by another promotion while this one "
                f"decided (GCS generation {object_generation} is stale); re-read the champion and decide "
                f"again") from exc

    def champion(self) -> dict | None:
        """The champion pointer (dict) or None when there is no champion yet.

        Raises:
            CorruptRegistryFile: ``champion.json`` is not valid JSON or has no ``version``.
        """
        try:
            data = storage.read_bytes(self.pointer_path, client=self.client)
        except storage.StorageNotFound:
            return None
        return self._parse_pointer(data)

    def history(self) -> list[dict]:
        """Every recorded decision, oldest first.

        Raises:
            CorruptRegistryFile: a line is not a JSON object (a half-written last line after a crash,
                an edit by hand); the message names the file and the line.
        """
        try:
            text = storage.read_text(self.history_path, client=self.client)
        except storage.StorageNotFound:
            return []
        out = []
        lines = text.splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                entry, why = None, f"not valid JSON ({exc.msg})"
            else:
                why = "not a JSON object"
            if not isinstance(entry, dict):
                last = " (the last line: probably half-written by a crash during an append)" if number == len(lines) else ""
                raise CorruptRegistryFile(f"promotion history {self.history_path} line {number} is {why}{last}: "
                                          f"{line[:80]!r}; repair the file (remove or complete that line) and retry")
            out.append(entry)
        return out

    def _append_history(self, entry: dict) -> None:
        """Append one decision; a damaged history is refused first (an append after a half-written line
        would merge into it and be lost). Raises CorruptRegistryFile."""
        self.history()
        storage.append_line(self.history_path, json.dumps(entry, default=str), client=self.client)

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
            ConcurrentPromotionError: the pointer moved since ``expected_generation``, or (``gs://``)
                another promotion replaced the pointer object between this one's read and write.
        """
        self._require(version)
        with self._lock():
            current, object_generation = self._read_pointer()
            history = self.history()                          # read once; a damaged history stops here
            generation = current["generation"] if current else 0
            if expected_generation is not None and expected_generation != generation:
                raise ConcurrentPromotionError(
                    f"champion pointer moved (generation {generation}, expected {expected_generation}); "
                    f"re-read the champion and decide again")
            if automatic and self._rejected(version, history):
                raise RegistryError(f"version {version} was rejected by a human; only a manual approve promotes it")
            pointer = {"version": version, "generation": generation + 1, "promoted_at": _now(),
                       "actor": actor or getpass.getuser(), "automatic": automatic, "gate": gate,
                       "reason": reason, "previous": current["version"] if current else None}
            if os.environ.get(CRASH_ENV) == "before-pointer":
                os._exit(137)                                 # simulated crash (tests only)
            self._repair_locked(current, history)             # a line lost to an earlier crash goes first
            self._write_pointer(pointer, object_generation)
            if os.environ.get(CRASH_ENV) == "after-pointer":
                os._exit(137)                                 # simulated crash (tests only)
            self._append_history(self._promotion_line(pointer))
        logger.info("champion is now %s (%s)", version, "automatic" if automatic else "manual")
        return pointer

    @staticmethod
    def _promotion_line(pointer: dict, recovered: bool = False) -> dict:
        """The history line of the promotion that wrote ``pointer`` (the pointer holds all its fields)."""
        line = {"at": pointer["promoted_at"], "action": "promote", "version": pointer["version"],
                "actor": pointer.get("actor", ""), "automatic": pointer.get("automatic", False),
                "gate": pointer.get("gate", ""), "reason": pointer.get("reason", ""),
                "previous": pointer.get("previous"), "generation": pointer.get("generation")}
        if recovered:
            line["recovered"] = "the promotion's history line was lost (a crash between pointer and history)"
        return line

    def _repair_locked(self, pointer: dict | None, history: list[dict] | None = None) -> bool:
        if not pointer:
            return False
        if any(h["action"] == "promote" and h["version"] == pointer["version"]
               and h.get("generation", pointer.get("generation")) == pointer.get("generation")
               for h in (self.history() if history is None else history)):
            return False
        self._append_history(self._promotion_line(pointer, recovered=True))
        logger.warning("history line of the promotion of %s (generation %s) was missing; recovered from the "
                       "champion pointer", pointer["version"], pointer.get("generation"))
        return True

    def repair(self) -> bool:
        """Append the history line of the champion's promotion when a crash between the pointer write and
        the history append lost it (the pointer holds every field of that line). Returns True when a line
        was added. Raises CorruptRegistryFile when a file is damaged (repair it by hand first)."""
        with self._lock():
            return self._repair_locked(self.champion())

    def record(self, version: str, action: str, *, gate: str, automatic: bool, reason: str,
               actor: str | None = None) -> dict:
        """Append a decision that does not move the pointer (e.g. ``"blocked"`` by the gate)."""
        self._require(version)
        entry = {"at": _now(), "action": action, "version": version, "actor": actor or getpass.getuser(),
                 "automatic": automatic, "gate": gate, "reason": reason}
        with self._lock():
            self._append_history(entry)
        return entry

    def reject(self, version: str, *, reason: str, actor: str | None = None) -> dict:
        """A human blocks ``version``: recorded, and if it is the champion the pointer goes back to the
        latest earlier champion that was not rejected (or is removed when there is none).

        Raises:
            RegistryError: unknown version. ConcurrentPromotionError: (``gs://``) the pointer moved
                during the rollback; the rejection is recorded, re-run to roll back.
        """
        self._require(version)
        with self._lock():
            entry = {"at": _now(), "action": "reject", "version": version, "actor": actor or getpass.getuser(),
                     "automatic": False, "gate": "manual", "reason": reason}
            self._append_history(entry)
            current, object_generation = self._read_pointer()
            if current and current["version"] == version:
                rejected = {h["version"] for h in self.history() if h["action"] == "reject"}
                earlier = [h["version"] for h in self.history()
                           if h["action"] == "promote" and h["version"] not in rejected]
                if earlier:
                    pointer = {**current, "version": earlier[-1], "generation": current["generation"] + 1,
                               "promoted_at": _now(), "actor": entry["actor"], "automatic": False,
                               "gate": "manual", "reason": f"rollback: {version} rejected ({reason})",
                               "previous": version}
                    self._write_pointer(pointer, object_generation)
                    self._append_history({"at": pointer["promoted_at"], "action": "promote",
                                          "version": pointer["version"], "actor": entry["actor"],
                                          "automatic": False, "gate": "manual", "reason": pointer["reason"],
                                          "previous": version, "generation": pointer["generation"]})
                else:
                    self._write_pointer(None, object_generation)
        return entry

    def _rejected(self, version: str, history: list[dict] | None = None) -> bool:
        return any(h["action"] == "reject" and h["version"] == version
                   for h in (self.history() if history is None else history))

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


def default_registry() -> str:
    """Registry root: ``$ITEM_REGISTRY``, else ``<storage root>/registry``
    (:func:`components.storage.storage_root`); a folder or a ``gs://bucket/prefix``."""
    import os
    if os.environ.get("ITEM_REGISTRY"):
        return os.environ["ITEM_REGISTRY"]
    return storage.join(storage.storage_root(), "registry")
