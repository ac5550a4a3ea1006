"""The package step on its own: a blessed model lands in the BentoML store with its catalog index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from components.index.layout import load_catalog_index


def test_packaged_model_holds_weights_index_and_metadata(packaged_model):
    name, version = packaged_model["tag"].split(":")
    stored = Path(packaged_model["bentoml_home"]) / "models" / name / version
    meta = yaml.safe_load((stored / "model.yaml").read_text())
    assert meta["labels"]["blessed"] == "true"
    assert {"recall@1", "category_accuracy", "code_version", "catalog_fingerprint"} <= set(meta["metadata"])
    listings, emb, index_meta = load_catalog_index(stored / "catalog_index")
    assert set(emb) == {"joint", "text", "image"}
    assert emb["joint"].dtype == np.float32 and emb["joint"].shape == (len(listings), 384)
    assert listings["product_id"].is_unique and index_meta["kinds"] == sorted(emb)


def test_unblessed_model_is_refused(packaged_model, tmp_path):
    from serving.store import save_to_bentoml
    blessing = tmp_path / "blessing.json"
    blessing.write_text('{"blessed": false, "criteria": []}')
    with pytest.raises(ValueError, match="blessed=false"):
        save_to_bentoml(packaged_model["model_dir"], packaged_model["eval_path"], str(blessing),
                        packaged_model["catalog_dir"], "item", packaged_model["bentoml_home"])


def test_serving_check_config_is_read_from_the_gate_config_and_checked():
    from serving.serving_check import ServingCheckConfig, ServingCheckError
    assert ServingCheckConfig.from_gate_config({}) == ServingCheckConfig()
    cfg = ServingCheckConfig.from_gate_config({"serving_check": {"max_latency_ms": 250, "n_listings": 2}})
    assert (cfg.max_latency_ms, cfg.n_listings, cfg.tolerance) == (250, 2, 1e-5)
    for bad, field in (({"max_latency_ms": -1}, "max_latency_ms"), ({"latency": 5}, "latency"),
                       ({"enabled": "yes"}, "enabled"), ([1], "mapping")):
        with pytest.raises(ServingCheckError, match=field):
            ServingCheckConfig.from_gate_config({"serving_check": bad})


#: what the service imports (serving/service.py and the item_model modules it loads, the approximate-index
#: backends included), plus the optional speed-ups uvicorn uses when present; serving/requirements.lock is
#: their closure
SERVING_ROOTS = ("bentoml", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pyarrow",
                 "pillow", "pydantic", "google-cloud-storage", "psutil", "pyyaml", "tqdm", "anyio", "starlette",
                 "httpx", "uvloop", "httptools", "usearch", "pymilvus", "milvus-lite", "bm25s", "scipy")


def _pins(path: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name
    return {canonicalize_name(line.split("==")[0]): line.strip() for line in path.read_text().splitlines()
            if "==" in line and not line.startswith("#")}


def test_serving_lock_is_the_closure_of_what_the_service_needs():
    """serving/requirements.lock = the required-dependency closure of SERVING_ROOTS (from the installed
    packages' metadata), each at requirements.lock's exact version; no pipeline, validation, monitoring
    or test library in it."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    seen, todo = set(), [canonicalize_name(r) for r in SERVING_ROOTS]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for raw in distribution(name).requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    root = Path(__file__).resolve().parents[2]
    full, serving = _pins(root / "requirements.lock"), _pins(root / "serving" / "requirements.lock")
    assert set(serving) == seen, (sorted(seen - set(serving)), sorted(set(serving) - seen))
    assert all(serving[n] == full[n] for n in serving)                    # the same exact versions
    for absent in ("great-expectations", "evidently", "kfp", "pytest", "scikit-learn", "sentence-transformers",
                   "matplotlib", "gcp-storage-emulator", "import-linter"):
        assert absent not in serving, absent
    bentofile = (root / "serving" / "bentofile.yaml").read_text()
    assert 'requirements_txt: "serving/requirements.lock"' in bentofile and '"item_model/**/*.py"' in bentofile


@pytest.mark.e2e
def test_serving_check_packages_from_the_registry_when_the_task_store_lacks_the_model(packaged_model, slice_catalog,
                                                                                      tmp_path):
    """On a cluster the package task's store lives in another pod: the serving-check task finds the
    tag missing in its own (empty) store, packages the registry's copy of the version there, serves it
    on loopback and passes; its result is written and nothing is recorded as blocked."""
    import json

    from components.registry import ModelRegistry
    registry = ModelRegistry(tmp_path / "registry")
    blessing = str(Path(packaged_model["eval_path"]).parent / "blessing.json")
    version = registry.register(packaged_model["model_dir"], {"eval.json": packaged_model["eval_path"],
                                                              "blessing.json": blessing}, {})
    # the version's catalog index, where the training pipeline's index steps write it (the storage root)
    from components.index.build import build_index, embed_shard, index_root_of
    storage_root = tmp_path / "storage"
    embed_shard(slice_catalog, 0, 1, packaged_model["model_dir"], version, index_root_of(version, storage_root))
    build_index(index_root_of(version, storage_root), version, 1)
    out = tmp_path / "result.json"
    import os
    import subprocess
    import sys
    script = ("import sys, json; from serving.serving_check import serving_check_step; "
              "print(json.dumps(serving_check_step(*sys.argv[1:3], {}, *sys.argv[3:6])))")
    proc = subprocess.run([sys.executable, "-c", script, "item:notinthisstore", str(tmp_path / "empty-store"),
                           str(registry.root), version, str(out)], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "BENTOML_HOME": "", "ITEM_STORAGE_ROOT": str(storage_root)})
    assert proc.returncode == 0, proc.stderr[-3000:]           # a fresh process, as the pipeline task is
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["passed"] is True, result["reason"]
    assert result["tag"].startswith("item:") and result["tag"] != "item:notinthisstore"
    assert (tmp_path / "empty-store" / "models" / "item").is_dir()
    assert json.loads(out.read_text())["passed"] is True and registry.history() == []
    assert max(result["max_abs_diff"].values()) <= 1e-5 and "similar by product_id" in result["latency_ms"]
    packaged = next((tmp_path / "empty-store" / "models" / "item").glob("*/catalog_index/index.json"))
    assert json.loads(packaged.read_text())["model_version"] == version     # the version's own index, packaged
