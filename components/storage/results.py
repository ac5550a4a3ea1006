"""The results one step writes and others read, as types: ``eval.json`` (:class:`EvalResult`), the
gate's ``blessing.json`` (:class:`Blessing`) and the drift report's summary (:class:`DriftSummary`).

Each carries ``schema_version`` in its JSON. Reading checks the required fields and the version and
raises :class:`ResultFileError` naming the file, so a reader never meets a ``KeyError`` deep inside;
files written before versions existed (no ``schema_version``) read as version 1. Keys a writer adds
beyond the declared fields are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from item_model.io import write_json_atomic

T = TypeVar("T", bound="_Result")


class ResultFileError(ValueError):
    """A result file is unreadable, misses a required field, or has a newer schema (names the file)."""


@dataclass
class _Result:
    SCHEMA_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "result"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field, ``extra`` merged in, ``schema_version`` set."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out, "schema_version": self.SCHEMA_VERSION}

    def to_json(self, path: str | Path) -> None:
        """Write atomically as indented JSON."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls: type[T], data: Any, source: str = "<dict>") -> T:
        """Build from a JSON object.

        Raises:
            ResultFileError: not an object, a required field missing, or ``schema_version`` newer than
                this code reads (the message names ``source``).
        """
        if not isinstance(data, dict):
            raise ResultFileError(f"{cls.KIND} {source}: not a JSON object")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > cls.SCHEMA_VERSION:
            raise ResultFileError(f"{cls.KIND} {source}: schema_version {version!r} is newer than this code "
                                  f"reads ({cls.SCHEMA_VERSION}); upgrade item-mlops")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "schema_version"}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ResultFileError(f"{cls.KIND} {source}: missing field(s) {missing}")
        extra = {k: v for k, v in data.items() if k not in names and k != "schema_version"}
        return cls(**{k: data[k] for k in names if k in data}, extra=extra)

    @classmethod
    def from_json(cls: type[T], path: str | Path) -> T:
        """Read ``path``. Raises ResultFileError naming the file (unreadable, invalid JSON, see from_dict)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResultFileError(f"{cls.KIND} {path}: unreadable: {exc}") from exc
        return cls.from_dict(data, str(path))


@dataclass
class EvalResult(_Result):
    """``eval.json``: every embedding's metrics on one split and gallery.

    Attributes:
        models: embedding name (``item``, ``item_text_only``, ``champion``, ``baseline_*``) ->
            metric name (``recall@1``, ``mAP``, ``category_accuracy``, ...) -> value (floats in [0, 1]
            unless the name says otherwise, e.g. ``n_queries``).
        n_listings: listings searched (the gallery); 0 when not recorded.
        catalog_fingerprint: SHA-256 of the validated catalog ("" when not recorded).
    """

    KIND: ClassVar[str] = "eval.json"
    models: dict[str, dict[str, Any]]
    n_listings: int = 0
    catalog_fingerprint: str = ""
    catalog_source: str = ""
    split_counts: dict[str, int] = field(default_factory=dict)
    protocol: str = ""
    checks: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    champion: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def metric(self, model: str, name: str) -> float | None:
        """``models[model][name]`` as a float, or None when either is absent."""
        value = self.models.get(model, {}).get(name)
        return None if value is None else float(value)


@dataclass
class Blessing(_Result):
    """The gate's verdict (``blessing.json``).

    Attributes:
        blessed: every criterion passed.
        criteria: one row per criterion: ``criterion``, ``metric``, ``value``, ``threshold``,
            ``comparison``, ``passed``, ``reason``, ``message`` (:func:`components.promotion.gate.evaluate_gate`).
    """

    KIND: ClassVar[str] = "blessing.json"
    blessed: bool
    criteria: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    def failed(self) -> list[str]:
        """The metrics of the criteria that failed, in order."""
        return [c["metric"] for c in self.criteria if not c.get("passed")]


@dataclass
class DriftSummary(_Result):
    """The drift report's summary (``monitoring.steps.drift_report_step``).

    Attributes:
        drift: any tested modality drifted.
        drifted_modalities / tested_modalities: modality names (``joint``, ``text``, ``image``).
        modalities: modality -> ``{"status", "score", "threshold", "drift", ...}``.
    """

    KIND: ClassVar[str] = "drift summary"
    drift: bool
    drifted_modalities: list[str]
    tested_modalities: list[str]
    modalities: dict[str, dict[str, Any]]
    model_tag: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


__all__ = ["EvalResult", "Blessing", "DriftSummary", "ResultFileError"]
