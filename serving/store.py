"""Putting a blessed ITEm model into the BentoML model store (and finding it again)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

from components.storage.layout import INDEX_DIR

logger = logging.getLogger(__name__)



def _bentoml(bentoml_home: str | None):
    """Import bentoml with ``BENTOML_HOME`` set first (the store location is read at import time)."""
    from components.steps.environment import set_offline_defaults
    if bentoml_home:
        os.environ["BENTOML_HOME"] = str(bentoml_home)
    set_offline_defaults()
    import bentoml
    return bentoml


def save_to_bentoml(model_dir: str, eval_path: str, blessing_path: str, catalog_dir: str,
                    model_name: str = "item", bentoml_home: str | None = None,
                    tag_path: str | None = None, index_dir: str | Path | None = None,
                    registry_version: str = "", approved_by: str = "") -> str:
    """Save a blessed model folder into the BentoML model store with ``bentoml.models.create``.

    The store entry holds the Hugging Face model folder plus ``eval.json``, ``blessing.json`` and,
    when ``index_dir`` is given (a folder holding ``catalog_index/`` and, above the exact-search
    threshold, ``vector_index/``: the index the index steps built, :func:`components.index.build.local_index`),
    a copy of that index, so the package serves on its own;
    labels carry the verdict and catalog fingerprint, metadata the headline metrics and code version.
    BentoML writes the entry under a temporary name and moves it into the store when the ``with``
    block ends, so a failure leaves no half-written model.

    Returns:
        the model tag ``<model_name>:<version>`` (also written as JSON to ``tag_path`` if given).

    Args:
        approved_by: a human override (``item gate approve``): package a model the gate did not
            bless; recorded in the labels and metadata.

    Raises:
        ValueError: the blessing says the model is not blessed and there is no approval (nothing is saved).
    """
    from components.storage.layout import CATALOG_META
    from components.storage.results import Blessing, EvalResult
    from components.steps.training import code_version

    blessing = Blessing.from_json(blessing_path)
    if not blessing.blessed and not approved_by:
        raise ValueError(f"refusing to package: {blessing_path} says blessed=false")
    result = EvalResult.from_json(eval_path)
    meta = json.loads((Path(catalog_dir) / CATALOG_META).read_text())
    bentoml = _bentoml(bentoml_home)
    metadata = {k: result.metric("item", k) for k in ("category_accuracy", "category_macro_f1", "recall@1",
                                                      "recall@10", "mAP")}
    metadata.update({"catalog_fingerprint": meta["fingerprint"], "catalog_source": meta["source"],
                     "n_listings": int(result.n_listings), "code_version": code_version(),
                     "registry_version": registry_version})
    metadata["approved_by"] = approved_by
    labels = {"blessed": "true" if blessing.blessed else "false",
              "promotion": "manual" if approved_by else "gate", "framework": "transformers", "model": "item",
              "catalog_fingerprint": meta["fingerprint"][:16]}
    with bentoml.models.create(name=model_name, labels=labels, metadata=metadata) as bento_model:
        shutil.copytree(model_dir, bento_model.path, dirs_exist_ok=True)
        shutil.copy(eval_path, os.path.join(bento_model.path, "eval.json"))
        shutil.copy(blessing_path, os.path.join(bento_model.path, "blessing.json"))
        if index_dir:
            for part in (INDEX_DIR, "vector_index"):
                if (Path(index_dir) / part).is_dir():
                    shutil.copytree(Path(index_dir) / part, os.path.join(bento_model.path, part))
    tag = str(bento_model.tag)
    logger.info("saved %s to the BentoML model store", tag)
    if tag_path:
        from item_model.io import write_json_atomic
        write_json_atomic(tag_path, {"tag": tag, "bentoml_home": os.environ.get("BENTOML_HOME", "")})
    return tag


def package_registry_version(path: str | Path, version: str, bentoml_home: str | None = None,
                             approved_by: str = "", model_name: str = "item", storage_root: str | None = None) -> str:
    """Save a registry version folder (``model/``, ``eval.json``, ``blessing.json``, ``version.json``)
    into the BentoML store with the version's catalog index (``<storage root>/indexes/<version>/``,
    built from the catalog the version was trained on when it does not exist yet:
    :func:`components.index.build.ensure_index`), its catalog summary rebuilt from
    ``version.json``.

    Returns:
        the model tag ``<model_name>:<store version>``.

    Raises:
        ValueError: not blessed and no ``approved_by`` (see :func:`save_to_bentoml`).
    """
    import tempfile

    from item_model.io import write_json_atomic
    from components.index.build import ensure_index, index_root_of, local_index
    path = Path(path)
    info = json.loads((path / "version.json").read_text())
    if info.get("catalog_source"):
        ensure_index(info["catalog_source"], path / "model", version, storage_root)
    with tempfile.TemporaryDirectory() as tmp, local_index(index_root_of(version, storage_root)) as index_dir:
        write_json_atomic(Path(tmp) / "catalog.json", {"fingerprint": info.get("catalog_fingerprint", ""),
                                                       "source": info.get("catalog_source", "")})
        return save_to_bentoml(str(path / "model"), str(path / "eval.json"), str(path / "blessing.json"), tmp,
                               model_name, bentoml_home, index_dir=index_dir,
                               registry_version=version, approved_by=approved_by)


def package_of(registry_version: str, bentoml_home: str | Path | None = None, model_name: str = "item") -> str | None:
    """The BentoML tag of the newest store entry packaged from ``registry_version`` (its metadata's
    ``registry_version``), read from the store's folders; None when there is none."""
    from components.storage.layout import packaged_versions
    found = [(str(info.get("creation_time", "")), version) for version, info in packaged_versions(model_name, bentoml_home)
             if str((info.get("metadata") or {}).get("registry_version", "")) == registry_version]
    return f"{model_name}:{max(found)[1]}" if found else None


def registry_version_of(tag: str, bentoml_home: str | Path | None = None) -> str:
    """The registry version a store entry ``name:version`` was packaged from ("" when none is recorded)."""
    from components.storage.layout import packaged_versions
    name, _, version = tag.partition(":")
    info = next((i for v, i in packaged_versions(name, bentoml_home) if v == version), {})
    return str((info.get("metadata") or {}).get("registry_version") or "")


def production_tag(bentoml_home: str | None = None, registry_root: str | None = None, tag: str | None = None,
                   model_name: str = "item") -> tuple[str, str]:
    """The model in production, one rule for every command (``item serve``, ``item monitor``): a tag
    given explicitly (pinned), else the registry's champion (:func:`champion_tag`), else, while the
    registry has no champion yet, the newest ``<model_name>`` model in the store.

    Returns:
        ``(tag, source)``: ``source`` is ``"pinned"``, ``"champion"`` or ``"newest"``.

    Raises:
        LookupError: the registry's champion has no package in the store (:func:`champion_tag`).
        components.registry.RegistryError: the registry cannot be read.
    """
    if tag:
        return tag, "pinned"
    champion = champion_tag(bentoml_home, registry_root, model_name)
    return (champion, "champion") if champion else (f"{model_name}:latest", "newest")


def champion_tag(bentoml_home: str | None = None, registry_root: str | None = None,
                 model_name: str = "item") -> str | None:
    """The BentoML tag of the model registry's champion, read from the store's folders (no BentoML
    import, so the CLI can check it before starting a server).

    The pipeline's ``package`` step and ``item gate approve`` record the registry version a store
    entry was packaged from in its metadata (``registry_version``); the newest entry for the
    champion's version wins.

    Args:
        bentoml_home: the store (default ``$BENTOML_HOME``, else ``~/bentoml``).
        registry_root: the registry (default :func:`components.registry.default_registry`:
            ``$ITEM_REGISTRY``, else ``$ITEM_STORAGE_ROOT/registry``); a folder or ``gs://`` URI.

    Returns:
        ``<model_name>:<store version>``, or None when the registry has no champion (yet).

    Raises:
        LookupError: the registry has a champion but the store holds no package of it (the message
            names the version, the store and how to package it).
    """
    from components.storage.layout import bentoml_home as store_root
    from components.registry import ModelRegistry, default_registry

    root = registry_root or default_registry()
    pointer = ModelRegistry(root).champion()
    if not pointer:
        return None
    home = store_root(bentoml_home)
    tag = package_of(pointer["version"], home, model_name)
    if tag is None:
        raise LookupError(f"the registry {root} names {pointer['version']} as champion, but the BentoML store "
                          f"at {home} holds no package of it: run 'item gate approve {pointer['version']}' "
                          f"(packages it) or pass --tag / ITEM_MODEL_TAG")
    return tag


@contextlib.contextmanager
def served_index_folder(tag: str, path: str | Path, bentoml_home: str | Path | None = None,
                        registry_version: str | None = None):
    """The folder whose ``catalog_index/`` a served model searches, and where it comes from:
    ``(folder, "catalog")`` when the storage root holds the catalog index of the registry version
    ``tag`` was packaged from (``<storage root>/indexes/<version>/``, written by the training pipeline's
    index steps and refreshed by ``item index``; downloaded while the context is open when the storage
    root is ``gs://``), else ``(path, "package")``: the copy of that index packaged with the model in
    its store folder ``path``. ``registry_version``: ``tag``'s (:func:`registry_version_of`) when the
    caller has read it already (the store's model list is then not read again)."""
    from components.index.build import index_root_of, local_index

    version = registry_version_of(tag, bentoml_home) if registry_version is None else registry_version
    if not version:
        yield Path(path), "package"
        return
    with local_index(index_root_of(version)) as folder:
        yield (folder, "catalog") if folder is not None else (Path(path), "package")
