"""The index pipeline for real: ``item index`` runs a ``dsl.ParallelFor`` over real shards of a real
catalog slice through kfp.local (a subprocess of the CLI, as a user runs it) with a registry version
of the tiny test model; then the incremental refresh on a modified copy (listings added, changed,
removed), the empty delta, a failed shard re-run alone, and an index mixing two model versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import CATALOG, write_slice

ITEM = str(Path(sys.executable).parent / "item")
SHARDS = 3


def run_index(catalog: Path, s: dict, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([ITEM, "index", "--catalog", str(catalog), "--registry", s["registry"], "--shards",
                           str(SHARDS), "--index-root", s["root"], "--output-dir", s["runs"], "--json", *extra],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    return proc


def summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def shard_counts(proc_summary: dict, run_dir: str) -> list[dict]:
    """Each embed-shard task's returned counts, read from kfp.local's executor outputs."""
    out = []
    for f in Path(run_dir).rglob("embed-shard/executor_output.json"):       # <run>/<pipeline run>/for-loop-*/
        out.append(json.loads(f.read_text())["parameterValues"]["Output"])
    return sorted(out, key=lambda c: c["shard"])


def modified(table: pa.Table) -> pa.Table:
    """3 listings removed, 2 titles changed, 4 listings added (real rows from elsewhere in the catalog)."""
    df = table.to_pandas()
    df = df.iloc[3:].reset_index(drop=True)
    df.loc[[0, 1], "productDisplayName"] = df.loc[[0, 1], "productDisplayName"] + " (new season)"
    extra = pq.read_table(sorted((CATALOG / "data").glob("*.parquet"))[1]).slice(0, 4).to_pandas()
    return pa.Table.from_pandas(pd.concat([df, extra], ignore_index=True), preserve_index=False)


@pytest.fixture(scope="module")
def setup(packaged_model, tmp_path_factory):
    from components.registry import ModelRegistry
    tmp = tmp_path_factory.mktemp("index")
    registry = ModelRegistry(str(tmp / "registry"))
    version = registry.register(packaged_model["model_dir"], {"eval.json": packaged_model["eval_path"]},
                                {"blessed": True})
    registry.promote(version, gate="test gate", automatic=True, reason="test", expected_generation=0)
    return {"registry": str(tmp / "registry"), "version": version, "root": str(tmp / "index-root"),
            "runs": str(tmp / "runs"), "tmp": tmp, "model_dir": packaged_model["model_dir"]}


def _index(root: str):
    from components.index.layout import load_catalog_index
    return load_catalog_index(Path(root) / "catalog_index")


@pytest.mark.e2e
def test_index_pipeline_parallel_shards_then_incremental_refresh(setup, packaged_model):
    from components.catalog import read_catalog
    from item_model.inference import embed_catalog
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor

    s = setup
    first = write_slice(s["tmp"] / "catalog-a", n_plain=40, n_groups=4)
    out = summary(run_index(first, s, "--model-version", s["version"]))
    tasks = [t["task"] for t in out["tasks"]]
    assert sum(t.startswith("embed-shard") for t in tasks) == SHARDS and tasks[-1].startswith("build-index")
    counts = shard_counts(out, out["run_dir"])
    rows = read_catalog(first)
    assert [c["shard"] for c in counts] == list(range(SHARDS))
    assert sum(c["embedded"] for c in counts) == len(rows) and all(c["listings"] > 0 for c in counts)
    listings, emb, meta = _index(s["root"])
    assert meta["model_version"] == s["version"] and meta["n"] == len(rows) and meta["search"] == "exact"
    assert sorted(listings["product_id"]) == sorted(rows["product_id"])
    assert set(emb) == {"joint", "text", "image"}
    # the index holds what the model gives for each listing, whatever shard embedded it
    model = ItemModel.from_pretrained(s["model_dir"]).eval()
    processor = ItemProcessor.from_pretrained(s["model_dir"], model.config)
    ordered = rows.set_index("product_id").loc[listings["product_id"]].reset_index()
    np.testing.assert_allclose(emb["joint"], embed_catalog(model, processor, ordered, progress=False), atol=1e-5)
    before = dict(zip(listings["product_id"], emb["joint"]))

    # a modified copy: only the 2 changed and the 4 new listings are embedded; 3 are removed
    second = write_slice(s["tmp"] / "catalog-b", n_plain=40, n_groups=4, mutate=modified)
    out = summary(run_index(second, s))                         # no --model-version: the champion
    counts = shard_counts(out, out["run_dir"])
    assert sum(c["embedded"] for c in counts) == 6 and sum(c["removed"] for c in counts) == 3
    assert sum(c["reused"] for c in counts) == len(rows) - 3 - 2
    listings2, emb2, _ = _index(s["root"])
    rows2 = read_catalog(second)
    assert sorted(listings2["product_id"]) == sorted(rows2["product_id"]) and len(rows2) == len(rows) + 1
    changed = set(rows2.loc[rows2["title"].str.endswith("(new season)"), "product_id"])
    assert len(changed) == 2
    for pid, vec in zip(listings2["product_id"], emb2["joint"]):
        if pid in before and pid not in changed:
            np.testing.assert_array_equal(vec, before[pid])           # reused, not re-embedded
    fresh = rows2.set_index("product_id").loc[sorted(changed)].reset_index()
    got = emb2["joint"][[list(listings2["product_id"]).index(p) for p in sorted(changed)]]
    np.testing.assert_allclose(got, embed_catalog(model, processor, fresh, progress=False), atol=1e-5)

    # the same catalog again: an empty delta is a no-op (no shard file and no index file rewritten)
    files = sorted(Path(s["root"]).rglob("*.*"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    out = summary(run_index(second, s))
    counts = shard_counts(out, out["run_dir"])
    assert sum(c["embedded"] for c in counts) == 0 and not any(c["written"] for c in counts)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert out["tasks"][-1]["key_figure"].startswith("unchanged: ")


@pytest.mark.e2e
def test_a_failed_shard_is_rerun_alone_and_two_model_versions_are_refused(setup, packaged_model):
    from components.index.build import ShardMissing, build_index, shard_file
    from components.index.backends import IndexVersionMismatch

    s = {**setup, "root": str(setup["tmp"] / "index-root-2"), "runs": str(setup["tmp"] / "runs-2")}
    catalog = write_slice(s["tmp"] / "catalog-c", n_plain=30, n_groups=2)
    summary(run_index(catalog, s, "--model-version", s["version"]))
    lost = Path(shard_file(s["root"], 1, SHARDS))
    kept = {i: Path(shard_file(s["root"], i, SHARDS)).read_bytes() for i in (0, 2)}
    lost.unlink()                                               # shard 1's task "failed": no output
    with pytest.raises(ShardMissing, match="shard 1 of 3 has no output; re-run it alone"):
        build_index(s["root"], s["version"], SHARDS)
    out = summary(run_index(catalog, s, "--model-version", s["version"], "--shard", "1"))
    counts = shard_counts(out, out["run_dir"])
    assert [c["shard"] for c in counts] == [1] and counts[0]["embedded"] == counts[0]["listings"] > 0
    assert lost.is_file() and all(Path(shard_file(s["root"], i, SHARDS)).read_bytes() == b for i, b in kept.items())
    n = _index(s["root"])[2]["n"]
    assert n == sum(len(pq.read_table(shard_file(s["root"], i, SHARDS))) for i in range(SHARDS))

    # the distributed backend: the same shards, the approximate index as Milvus collections (Milvus Lite)
    out = summary(run_index(catalog, s, "--model-version", s["version"], "--ann-backend", "milvus", "--exact-max", "10"))
    assert out["tasks"][-1]["key_figure"] == f"{n} listings, milvus search"
    from components.index.backends import load_index
    listings, emb, meta = _index(s["root"])
    assert meta["search"] == "milvus"
    for kind in ("joint", "text"):
        ann = load_index(Path(s["root"]) / "vector_index" / kind, model_version=s["version"])
        rows, scores = ann.search(emb[kind][:5], 3)
        exact = np.sort(emb[kind][:5] @ emb[kind].T, axis=1)[:, ::-1][:, :3]
        np.testing.assert_allclose(scores, exact, atol=1e-4)               # the true top-3 cosines
        ann.close()

    # the embedded SQ8 + re-rank backend from the same shards (plumbing: 20 x 3 candidates cover all 34
    # listings, so the re-ranked top-3 must be the exact one whatever SQ8 makes of the tiny model's vectors)
    built = build_index(s["root"], s["version"], SHARDS, exact_max=10, backend="faiss-hnsw-sq8+rerank",
                        ann={"m": 16, "ef_construction": 64, "ef_search": 64, "rerank_factor": 20})
    assert built["search"] == "faiss-hnsw-sq8+rerank" and _index(s["root"])[2]["search"] == built["search"]
    ann = load_index(Path(s["root"]) / "vector_index" / "joint", model_version=s["version"])
    rows, scores = ann.search(emb["joint"][:5], 3)
    np.testing.assert_allclose(scores, np.sort(emb["joint"][:5] @ emb["joint"].T, axis=1)[:, ::-1][:, :3], atol=2e-3)
    # and the IVF-PQ + re-rank backend (the one for 10^7 on a machine): nlist 1 at 34 listings, every
    # candidate re-scored, so again the exact top-3
    built = build_index(s["root"], s["version"], SHARDS, exact_max=10, backend="faiss-ivfpq+rerank",
                        ann={"m": 16, "nprobe": 4, "rerank_factor": 20})
    assert built["search"] == "faiss-ivfpq+rerank" and _index(s["root"])[2]["search"] == built["search"]
    ann = load_index(Path(s["root"]) / "vector_index" / "joint", model_version=s["version"])
    assert (ann.kind, ann.inner.settings["nlist"]) == ("faiss-ivfpq+rerank", 1)
    rows, scores = ann.search(emb["joint"][:5], 3)
    np.testing.assert_allclose(scores, np.sort(emb["joint"][:5] @ emb["joint"].T, axis=1)[:, ::-1][:, :3], atol=2e-3)
    with pytest.raises(ValueError, match="backend"):
        build_index(s["root"], s["version"], SHARDS, exact_max=10, backend="annoy")

    # shard 2 rewritten as if another model version had embedded it: the build refuses to mix them
    path = Path(shard_file(s["root"], 2, SHARDS))
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("model_version"), "model_version",
                             pa.array(["another-version"] * len(table)))
    pq.write_table(table, path)
    with pytest.raises(IndexVersionMismatch, match="'another-version'.*never mixes two models"):
        build_index(s["root"], s["version"], SHARDS)
    bad = run_index(catalog, s, "--model-version", "no-such-version")
    assert bad.returncode != 0 and "no-such-version" in bad.stdout + bad.stderr


def test_index_pipeline_compiles_with_a_parallel_for(tmp_path):
    from kfp import compiler

    from pipelines.index import index_pipeline
    compiler.Compiler().compile(index_pipeline, str(tmp_path / "index.yaml"))
    spec = yaml.safe_load((tmp_path / "index.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    loop = next(t for t in tasks.values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("shards")
    assert tasks["build-index"]["dependentTasks"] == [next(k for k, t in tasks.items() if "parameterIterator" in t)]


def test_item_index_names_the_option_of_the_bad_setting():
    """A bad index setting is reported under the option that set it, derived from the field the
    settings name (every field an option sets has one), before any catalog is read."""
    from click.testing import CliRunner

    from components.index.build import index_settings
    from pipelines.cli import main
    from pipelines.cli.index import SETTING_OPTIONS, index_cmd

    options = {o for p in index_cmd.params for o in p.opts}
    assert set(SETTING_OPTIONS.values()) <= options
    assert set(SETTING_OPTIONS) == set(index_settings()) - {"ann", "threads"}    # derived, not set by an option
    res = CliRunner().invoke(main, ["index", "--kinds", "text"])
    assert res.exit_code == 2 and "--kinds" in res.output and "field 'kinds'" in res.output
