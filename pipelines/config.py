"""Pipeline configuration, kept apart from the DAG: run profiles and the gate config (YAML files in
``pipelines/configs/``), merged into the training pipeline's parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from item_model.gate import load_gate_config

CONFIG_DIR = Path(__file__).parent / "configs"
PROFILES_FILE = CONFIG_DIR / "profiles.yaml"
GATE_FILE = CONFIG_DIR / "gate.yaml"
DEFAULT_CATALOG = str((Path(__file__).resolve().parents[2] / "shared" / "datasets"
                       / "fashion-product-images-small"))
PROFILE_KEYS = {"description", "max_listings", "max_quarantine_fraction", "modality_ablation",
                "model_config", "train_config"}


def load_profiles(path: str | Path = PROFILES_FILE) -> dict[str, dict]:
    """All run profiles: ``{name: profile}``."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_profile(name: str, path: str | Path = PROFILES_FILE) -> dict:
    """One run profile.

    Raises:
        KeyError: no such profile (names the known ones). ValueError: a profile has unknown keys.
    """
    profiles = load_profiles(path)
    if name not in profiles:
        raise KeyError(f"unknown profile {name!r}; known: {sorted(profiles)}")
    profile = dict(profiles[name])
    unknown = set(profile) - PROFILE_KEYS
    if unknown:
        raise ValueError(f"profile {name!r} has unknown key(s) {sorted(unknown)}")
    return profile


def apply_overrides(profile: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (value parsed as YAML), e.g. ``train_config.steps=20``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in profile.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        value: Any = yaml.safe_load(raw)
        section, _, sub = key.partition(".")
        if sub:
            out.setdefault(section, {})[sub] = value
        else:
            out[section] = value
    return out


def default_registry() -> str:
    """Registry root: ``$ITEM_REGISTRY``, else ``$ITEM_STORAGE_ROOT/registry`` (default ``./item-storage``)."""
    import os
    if os.environ.get("ITEM_REGISTRY"):
        return os.environ["ITEM_REGISTRY"]
    return str(storage_root() / "registry")


def storage_root() -> Path:
    """``$ITEM_STORAGE_ROOT`` (default ``./item-storage``), absolute."""
    import os
    return Path(os.environ.get("ITEM_STORAGE_ROOT", "item-storage")).resolve()


def pipeline_arguments(catalog: str, profile: dict, gate_config: dict, bentoml_home: str = "",
                       model_name: str = "item", bert_path: str = "", registry_root: str = "",
                       checkpoint_root: str = "", resume: bool = False) -> dict:
    """The training pipeline's parameters for a catalog, a profile and a gate config."""
    return {
        "catalog": str(Path(catalog).resolve()),
        "max_listings": int(profile.get("max_listings") or 0),
        "max_quarantine_fraction": float(profile.get("max_quarantine_fraction", 0.01)),
        "model_config": dict(profile.get("model_config") or {}),
        "train_config": dict(profile.get("train_config") or {}),
        "modality_ablation": bool(profile.get("modality_ablation", True)),
        "bert_path": bert_path,
        "checkpoint_root": checkpoint_root or str(storage_root() / "checkpoints"),
        "resume": bool(resume),
        "gate_config": gate_config,
        "registry_root": registry_root or default_registry(),
        "model_name": model_name,
        "bentoml_home": bentoml_home,
    }


__all__ = ["load_profile", "load_profiles", "apply_overrides", "pipeline_arguments", "load_gate_config",
           "DEFAULT_CATALOG", "GATE_FILE"]
