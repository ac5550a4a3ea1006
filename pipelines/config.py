"""Pipeline configuration, kept apart from the DAG: run profiles and the gate config (YAML files in
``pipelines/configs/``), merged into the training pipeline's parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components import storage
from components.storage import storage_root
from components.registry import default_registry
from components.promotion.gate import load_gate_config

CONFIG_DIR = Path(__file__).parent / "configs"
PROFILES_FILE = CONFIG_DIR / "profiles.yaml"
GATE_FILE = CONFIG_DIR / "gate.yaml"
DEFAULT_CATALOG = str((Path(__file__).resolve().parents[2] / "shared" / "datasets"
                       / "fashion-product-images-small"))
PROFILE_KEYS = {"description", "max_listings", "max_quarantine_fraction", "modality_ablation",
                "model_config", "train_config", "index"}


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


def parse_key_values(items: list[str] | tuple[str, ...], option: str = "override") -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE parsed as YAML}`` (later keys win), the one parser of the
    CLI's ``--set``, ``--param`` and ``--drift`` options.

    Raises:
        ValueError: an item without ``=`` (the message names ``option`` and the item).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"{option} {item!r} is not KEY=VALUE")
        out[key] = yaml.safe_load(raw)
    return out


def apply_overrides(profile: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (value parsed as YAML), e.g. ``train_config.steps=20``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in profile.items()}
    for key, value in parse_key_values(overrides).items():
        section, _, sub = key.partition(".")
        if sub:
            out.setdefault(section, {})[sub] = value
        else:
            out[section] = value
    return out


def location(path: str) -> str:
    """A CLI location as a pipeline parameter: ``gs://`` URIs unchanged, local paths made absolute
    (tasks run in other working folders)."""
    return storage.normalize(path) if path else path


def pipeline_arguments(catalog: str, profile: dict, gate_config: dict, bentoml_home: str = "",
                       model_name: str = "item", bert_path: str = "", registry_root: str = "",
                       checkpoint_root: str = "", resume: bool = False) -> dict:
    """The training pipeline's parameters (the arguments of
    :func:`pipelines.training.build_training_pipeline`'s pipeline, in its signature's order) for a
    catalog, a profile and a gate config; the profile's ``index`` section (optional) sets the index
    steps (:func:`components.index.build.index_settings`: ``num_shards``, ``kinds``, ...).

    Raises:
        ValueError: a bad ``index`` setting (naming the field).
    """
    from components.index.build import index_settings, local_threads
    settings = index_settings(**dict(profile.get("index") or {}))
    if not settings["threads"]:                 # kfp.local runs the shard tasks side by side on this machine
        settings["threads"] = local_threads(settings["num_shards"])
    return dict(
        catalog=location(str(catalog)),
        max_listings=int(profile.get("max_listings") or 0),
        max_quarantine_fraction=float(profile.get("max_quarantine_fraction", 0.01)),
        model_config=dict(profile.get("model_config") or {}),
        train_config=dict(profile.get("train_config") or {}),
        modality_ablation=bool(profile.get("modality_ablation", True)),
        bert_path=bert_path,
        # checkpoints stay on a local/mounted disk (item_model.checkpoint writes files); with a gs://
        # storage root they default to ./item-storage/checkpoints
        checkpoint_root=checkpoint_root or str((Path("item-storage") if storage.is_gcs(storage_root())
                                                else Path(storage_root())).resolve() / "checkpoints"),
        resume=bool(resume),
        gate_config=gate_config,
        registry_root=location(registry_root or default_registry()),
        model_name=model_name,
        bentoml_home=bentoml_home,
        storage_root=location(str(storage_root())),
        index_shards=list(range(settings["num_shards"])),
        index_settings=settings,
    )


__all__ = ["load_profile", "load_profiles", "apply_overrides", "parse_key_values", "pipeline_arguments", "load_gate_config",
           "DEFAULT_CATALOG", "GATE_FILE"]


# ------------------------------------------------------------------------------ cluster settings
CLUSTER_FILE = CONFIG_DIR / "cluster.yaml"
CLUSTER_KEYS = {"image", "image_pull_policy", "pipeline_root", "storage_root", "experiment", "parameters",
                "gcs_credentials", "resources", "ddp"}
RESOURCE_KEYS = {"cpu", "memory", "cpu_limit", "memory_limit", "accelerator", "accelerator_count"}


class ClusterConfigError(ValueError):
    """The cluster config is invalid; the message names the file and the field."""


def load_cluster_config(path: str | Path = CLUSTER_FILE) -> dict:
    """The cluster settings (``pipelines/configs/cluster.yaml``): image, pipeline root, storage root,
    experiment, run parameters, GCS credentials secret, per-task resources, DDP.

    Returns:
        the dict with defaults filled in: ``parameters`` {}, ``resources`` {}, ``gcs_credentials``
        {"secret": "", ...}, ``ddp`` {"enabled": False, ...}.

    Raises:
        ClusterConfigError: unreadable file, unknown key, missing ``image``/``pipeline_root``, a
            ``pipeline_root``/``storage_root`` that is not a URI, a bad resource entry.
    """
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterConfigError(f"cluster config {path}: unreadable: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ClusterConfigError(f"cluster config {path}: expected a mapping at the top level")
    unknown = set(cfg) - CLUSTER_KEYS
    if unknown:
        raise ClusterConfigError(f"cluster config {path}: unknown key(s) {sorted(unknown)}; known: {sorted(CLUSTER_KEYS)}")
    for key in ("image", "pipeline_root"):
        if not isinstance(cfg.get(key), str) or not cfg[key].strip():
            raise ClusterConfigError(f"cluster config {path}: field {key!r} is required (a string)")
    for key in ("pipeline_root", "storage_root"):
        if cfg.get(key) and "://" not in cfg[key]:
            raise ClusterConfigError(f"cluster config {path}: field {key!r} must be a URI such as gs://bucket/prefix, "
                                     f"got {cfg[key]!r}")
    cfg.setdefault("experiment", "item-training")
    cfg["parameters"] = dict(cfg.get("parameters") or {})
    creds = {"secret": "", "mount_path": "/var/secrets/google", "key_file": "key.json", **(cfg.get("gcs_credentials") or {})}
    cfg["gcs_credentials"] = creds
    resources = dict(cfg.get("resources") or {})
    for task, spec in resources.items():
        if not isinstance(spec, dict) or set(spec) - RESOURCE_KEYS:
            raise ClusterConfigError(f"cluster config {path}: resources.{task} must be a mapping of "
                                     f"{sorted(RESOURCE_KEYS)}, got {spec!r}")
    cfg["resources"] = resources
    ddp = {"enabled": False, "replicas": 2, "nproc_per_node": 1, "backend": "nccl", "timeout_s": 86400,
           "command": [], **(cfg.get("ddp") or {})}
    if ddp["enabled"] and (int(ddp["replicas"]) < 1 or not ddp["command"]):
        raise ClusterConfigError(f"cluster config {path}: ddp needs replicas >= 1 and a command")
    cfg["ddp"] = ddp
    return cfg


def task_threads(cluster: dict, task: str) -> int:
    """PyTorch threads for a cluster task: its CPU request (``resources.<task>.cpu``, whole cores), else
    0 (PyTorch's default)."""
    cpu = (cluster.get("resources", {}).get(task) or {}).get("cpu")
    return int(float(cpu)) if cpu and float(cpu) >= 1 else 0


def cluster_arguments(cluster: dict, profile: dict, gate_config: dict, overrides: dict | None = None) -> dict:
    """The training pipeline's parameters for a cluster run: the profile and gate as for ``item run``,
    the registry under the cluster's ``storage_root``, then the config's ``parameters``, then
    ``overrides``. Local paths are not resolved (they are paths inside the task's container)."""
    params = {**cluster.get("parameters", {}), **(overrides or {})}
    args = pipeline_arguments(params.get("catalog", DEFAULT_CATALOG), profile, gate_config)
    if cluster.get("storage_root"):
        args["registry_root"] = storage.join(cluster["storage_root"], "registry")
        args["storage_root"] = storage.normalize(cluster["storage_root"])
    args["checkpoint_root"] = ""
    args["bentoml_home"] = ""
    for key, value in params.items():
        if key not in args:
            raise ClusterConfigError(f"cluster parameter {key!r} is not a training pipeline parameter; "
                                     f"known: {sorted(args)}")
        args[key] = value
    from components.index.build import index_settings
    if "index_settings" not in params:          # each shard task gets its own pod: threads from its CPU request
        args["index_settings"]["threads"] = task_threads(cluster, "embed-shard")
    args["index_settings"] = index_settings(**args["index_settings"])
    if "index_shards" not in params:          # one ParallelFor iteration per shard of the settings
        args["index_shards"] = list(range(args["index_settings"]["num_shards"]))
    return args


def preflight(catalog: str) -> None:
    """Check in-process, before any task starts, that the catalog folder, its shards, their required
    columns and the group file can be read.

    Raises:
        components.catalog.CatalogError: naming the folder, file or column at fault.
    """
    from components import catalog as cat
    for path in cat.shard_paths(catalog):
        cat.check_columns(path, cat._open_shard(path).schema_arrow.names)
    cat.read_groups(catalog)
