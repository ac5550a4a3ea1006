"""The errors of the model registry (re-exported by :mod:`components.registry`)."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry operation is impossible (unknown version, version exists, bad reference)."""


class CorruptRegistryFile(RegistryError):
    """``champion.json`` or a line of ``history.jsonl`` is not what the registry wrote (the message names
    the file, the line, and how to repair it)."""


class ConcurrentPromotionError(RegistryError):
    """Another promotion moved the champion pointer since it was read; re-read and retry or stop."""
