"""Shared fixtures: the real fashion catalog in ../shared (never a synthetic stand-in), small real
slices of it written in the same folder layout, and telemetry off for every library."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from components.steps.environment import OFFLINE_ENV  # noqa: E402

os.environ.update(OFFLINE_ENV)           # telemetry off and offline in every test, whatever the shell says
# no test reads or writes the developer's own ./item-storage (registry, calibrations, traffic log) or
# $ITEM_REGISTRY: a `make run` before `make test` must not change what the tests see
import tempfile  # noqa: E402

os.environ["ITEM_STORAGE_ROOT"] = tempfile.mkdtemp(prefix="item-tests-storage-")
os.environ.pop("ITEM_REGISTRY", None)

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT.parent / "shared" / "datasets" / "fashion-product-images-small"

# The tests run on the real catalog; its absence is a broken set-up, not a reason to skip.
assert (CATALOG / "data").is_dir(), f"the real catalog is missing at {CATALOG} (expected ../shared beside the repo)"


def write_slice(dest: Path, n_plain: int = 300, n_groups: int = 50, mutate=None) -> Path:
    """Write a real slice of the catalog in its own folder layout: the first ``n_plain`` listings
    of shard 0 plus every member of ``n_groups`` same-product groups, as one parquet shard and a
    ``same_product_groups.csv``. ``mutate(table: pa.Table) -> pa.Table`` injects faults."""
    groups = pd.read_csv(CATALOG / "same_product_groups.csv")
    chosen = groups[groups["group_id"].isin(sorted(groups["group_id"].unique())[:n_groups])]
    shards = sorted((CATALOG / "data").glob("*.parquet"))
    first = pq.read_table(shards[0]).slice(0, n_plain)
    want = set(chosen["id"].tolist()) - set(first.column("id").to_pylist())
    parts = [first]
    for shard in shards:
        t = pq.read_table(shard)
        mask = pa.array(np.isin(t.column("id").to_numpy(), list(want)))
        parts.append(t.filter(mask))
    table = pa.concat_tables(parts)
    if mutate is not None:
        table = mutate(table)
    (dest / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dest / "data" / "train-00000-of-00001.parquet")
    chosen.to_csv(dest / "same_product_groups.csv", index=False)
    return dest


def write_subset(dest: Path, column: str, value: str, n_plain: int, seed: int = 0) -> Path:
    """Write another catalog cut from the real one, in its folder layout: every listing whose
    ``column`` (a source column, e.g. ``masterCategory``) equals ``value`` that is in a same-product
    group, plus ``n_plain`` of its other listings drawn with ``seed``; the group file keeps the
    groups of the listings kept."""
    groups = pd.read_csv(CATALOG / "same_product_groups.csv")
    parts = [pq.read_table(shard) for shard in sorted((CATALOG / "data").glob("*.parquet"))]
    table = pa.concat_tables([t.filter(pa.compute.equal(t.column(column), value)) for t in parts])
    ids = table.column("id").to_numpy()
    grouped = np.isin(ids, groups["id"].to_numpy())
    keep = grouped.copy()
    plain = np.flatnonzero(~grouped)
    keep[np.random.default_rng(seed).choice(plain, min(n_plain, len(plain)), replace=False)] = True
    table = table.filter(pa.array(keep))
    (dest / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dest / "data" / "train-00000-of-00001.parquet")
    groups[groups["id"].isin(table.column("id").to_numpy())].to_csv(dest / "same_product_groups.csv", index=False)
    return dest


@pytest.fixture(scope="session")
def slice_catalog(tmp_path_factory) -> Path:
    """A clean real slice (~400 listings, 50 same-product groups) in the catalog layout."""
    return write_slice(tmp_path_factory.mktemp("slice"))


TINY_MODEL = {"num_hidden_layers": 2}
TINY_TRAIN = {"steps": 8, "batch_size": 8, "warmup_steps": 2, "log_every": 4, "seed": 0}


@pytest.fixture(scope="session")
def packaged_model(tmp_path_factory, slice_catalog) -> dict:
    """A real tiny ITEm run through the training pipeline's own steps (no KFP): validated slice,
    8 training steps of a 2-layer model, evaluation with the modality ablation, a gate with a zero floor,
    the catalog index built by the index steps' code (one shard; joint, text-only and image-only
    embeddings of every valid listing of the slice), and ``save_to_bentoml`` into a fresh BentoML store.

    Returns ``{"bentoml_home", "tag", "model_dir", "catalog_dir", "index_root", "index_dir", "eval_path"}``
    (``index_root`` holds ``catalog_index/``, which is ``index_dir``).
    """
    from components.steps import training as steps
    from components.index.build import build_index, embed_shard

    root = tmp_path_factory.mktemp("packaged")
    paths = {k: str(root / k) for k in ("catalog", "model", "index", "docs")}
    steps.validate_step(str(slice_catalog), paths["catalog"], str(root / "quarantine.parquet"),
                        str(root / "validation.json"), paths["docs"])
    steps.pretrain_step(paths["catalog"], paths["model"], TINY_MODEL, TINY_TRAIN, progress=False)
    steps.evaluate_step(paths["catalog"], paths["model"], str(root / "eval.json"), modality_ablation=True,
                        progress=False)
    embed_shard(str(slice_catalog), 0, 1, paths["model"], "fixture", paths["index"])
    build_index(paths["index"], "fixture", 1)
    steps.gate_step(str(root / "eval.json"), {"criteria": [{"metric": "item.recall@10", "min": 0.0}]},
                    str(root / "blessing.json"), str(root / "report.md"))
    from serving.store import save_to_bentoml
    home = root / "bentoml"
    tag = save_to_bentoml(paths["model"], str(root / "eval.json"), str(root / "blessing.json"), paths["catalog"],
                          "item", str(home), index_dir=paths["index"])
    return {"bentoml_home": str(home), "tag": tag, "model_dir": paths["model"], "catalog_dir": paths["catalog"],
            "index_root": paths["index"], "index_dir": str(root / "index" / "catalog_index"),
            "eval_path": str(root / "eval.json")}


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real ``gcp-storage-emulator`` (the pinned one) in its own process on a free loopback port,
    in memory, with bucket ``item-test``. ``STORAGE_EMULATOR_HOST`` is set for this process and the
    processes it starts (the ``item`` CLI, kfp.local tasks), and restored afterwards.

    Yields ``{"host": "http://127.0.0.1:PORT", "bucket": "item-test"}``.
    """
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from components import storage
    
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--in-memory", "--default-bucket", "item-test", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(host + "/", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"gcp-storage-emulator did not start on {host}")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ["STORAGE_EMULATOR_HOST"], os.environ["GOOGLE_CLOUD_PROJECT"] = host, "test"
    storage._default_client = None                     # the next client talks to the emulator
    try:
        yield {"host": host, "bucket": "item-test"}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage._default_client = None
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def gcs_prefix(gcs_emulator, request) -> str:
    """A fresh ``gs://item-test/<test name>-<random>`` prefix on the emulator."""
    import uuid
    return f"gs://{gcs_emulator['bucket']}/{request.node.name.replace('[', '-').strip(']')}-{uuid.uuid4().hex[:6]}"
