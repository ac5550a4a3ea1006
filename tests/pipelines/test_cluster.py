"""Compiling for a Kubeflow cluster: both pipelines' IR YAML loads back, names the configured image,
resources, GPU and GCS secret (kfp-kubernetes), never `pip install`s at run time; the DDP variant
launches a multi-replica PyTorchJob; `item submit --dry-run`; the Dockerfile installs the pinned set
and the project; and the pipeline `item run` runs locally carries no cluster settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipelines import config as pconfig
from pipelines.cli.compile import compile_monitoring, compile_pipeline

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example/item/item-mlops:test-1"


def _cluster(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(pconfig.CLUSTER_FILE.read_text())
    cfg.update(image=IMAGE, pipeline_root="gs://item-bucket/kfp-root", storage_root="gs://item-bucket/storage")
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _load(path: Path) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) of a compiled IR YAML file."""
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"] if len(docs) > 1 else {}
    return spec, platform


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def _no_runtime_install(spec: dict) -> None:
    for name, ex in _executors(spec).items():
        text = json.dumps(ex["container"])
        assert "pip install" not in text and "pip3 install" not in text, name


def test_cluster_yaml_names_image_resources_secret_and_loads_back(tmp_path):
    cluster = pconfig.load_cluster_config(_cluster(tmp_path))
    training = compile_pipeline(tmp_path / "training.yaml", "tiny", cluster)
    monitoring = compile_monitoring(tmp_path / "monitoring.yaml", "tiny", cluster)
    for path, name in ((training, "item-training"), (monitoring, "item-monitoring")):
        spec, platform = _load(path)
        assert spec["pipelineInfo"]["name"] == name and spec["schemaVersion"] == "2.1.0"
        _no_runtime_install(spec)
        executors = _executors(spec)
        assert executors and {ex["container"]["image"] for ex in executors.values()} == {IMAGE}
        creds = {ex["container"]["env"][0]["value"] for ex in executors.values()}
        assert creds == {"/var/secrets/google/key.json"}
        k8s = platform["deploymentSpec"]["executors"]
        assert set(k8s) == set(executors)
        for ex in k8s.values():
            assert ex["secretAsVolume"][0]["secretName"] == "gcs-credentials"
            assert ex["secretAsVolume"][0]["mountPath"] == "/var/secrets/google"
            assert ex["imagePullPolicy"] == "IfNotPresent"
    spec, _ = _load(training)
    res = {name: ex["container"]["resources"] for name, ex in _executors(spec).items()}
    assert res["exec-pretrain"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert res["exec-pretrain"]["accelerator"]["resourceCount"] == "1"
    assert res["exec-pretrain"]["resourceCpuRequest"] == "8" and res["exec-pretrain"]["resourceMemoryRequest"] == "32Gi"
    assert res["exec-evaluate"]["resourceMemoryRequest"] == "16Gi" and "accelerator" not in res["exec-evaluate"]
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["registry_root"]["defaultValue"] == "gs://item-bucket/storage/registry"
    assert defaults["catalog"]["defaultValue"].startswith("gs://")
    assert defaults["max_listings"]["defaultValue"] == 400                     # the tiny profile
    # the monitoring pipeline nests the training one with the same settings
    mon, _ = _load(monitoring)
    assert "comp-item-training" in mon["components"] and "exec-pretrain" in _executors(mon)
    # the IR loads back into kfp (as a component of another pipeline)
    from kfp import components, dsl
    loaded = components.load_component_from_file(str(training))
    assert loaded.name == "item-training"

    @dsl.pipeline(name="wrapper")
    def wrapper():
        loaded(catalog="gs://b/c")
    from kfp import compiler
    compiler.Compiler().compile(wrapper, str(tmp_path / "wrapper.yaml"))


def test_ddp_pretrain_compiles_as_a_multi_replica_pytorchjob(tmp_path):
    ddp = {**yaml.safe_load(pconfig.CLUSTER_FILE.read_text())["ddp"], "enabled": True, "replicas": 3}
    cluster = pconfig.load_cluster_config(_cluster(tmp_path, ddp=ddp))
    spec, platform = _load(compile_pipeline(tmp_path / "training.yaml", "tiny", cluster))
    assert "comp-pretrain-ddp" in spec["components"] and "exec-pretrain" not in _executors(spec)
    _no_runtime_install(spec)
    job = spec["root"]["dag"]["tasks"]["pretrain-ddp"]["inputs"]["parameters"]["job_config"]["runtimeValue"]["constant"]
    assert job["replicas"] == 3 and job["image"] == IMAGE and job["resources"]["accelerator"] == "nvidia.com/gpu"
    assert job["command"][0] == "torchrun"
    # the launcher's manifest: 1 master + 2 workers of the image, GPU each, the secret mounted
    from components.steps.pytorchjob import pytorchjob_manifest
    manifest = pytorchjob_manifest("item-pretrain-x", "kubeflow", job["image"], job["command"], job["replicas"],
                                   job["nproc_per_node"], job["resources"], job["gcs_credentials"],
                                   values={"validated_catalog_path": "/gcs/b/root/validated", "model_path": "/gcs/b/root/model",
                                           "model_config": {"num_hidden_layers": 2}, "train_config": {"steps": 8}},
                                   fuse_buckets=["b"])
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert manifest["kind"] == "PyTorchJob" and replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["command"][:5] == ["torchrun", "--nproc_per_node", "1", "-m", "components.steps.torchrun_pretrain"]
    assert "/gcs/b/root/model" in container["command"] and '{"steps": 8}' in container["command"]
    assert {"name": "gcs-fuse-0", "mountPath": "/gcs/b"} in container["volumeMounts"]
    assert replicas["Worker"]["template"]["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    assert container["env"][0]["name"] == "GOOGLE_APPLICATION_CREDENTIALS"
    with pytest.raises(ValueError, match="placeholder 'nope'"):
        pytorchjob_manifest("x", "ns", IMAGE, ["{nope}"], 1, 1)


def test_local_pipeline_has_no_cluster_settings(tmp_path):
    spec, platform = _load(compile_pipeline(tmp_path / "local.yaml", "tiny"))
    assert platform == {}
    assert not any("resources" in ex["container"] or "env" in ex["container"] for ex in _executors(spec).values())
    _no_runtime_install(spec)


def test_cli_compile_both_and_submit_dry_run(tmp_path):
    from click.testing import CliRunner

    from pipelines.cli import main
    cli = lambda *args: CliRunner().invoke(main, list(args))              # in-process: the real commands
    cluster_file = _cluster(tmp_path)
    out = cli("compile", "--output", str(tmp_path / "b" / "training_pipeline.yaml"), "--cluster", str(cluster_file),
              "--profile", "tiny")
    assert out.exit_code == 0, out.output[-2000:]
    assert (tmp_path / "b" / "training_pipeline.yaml").exists() and (tmp_path / "b" / "monitoring_pipeline.yaml").exists()
    dry = cli("submit", "--host", "http://127.0.0.1:9", "--cluster", str(cluster_file), "--profile", "tiny",
              "--param", "catalog=gs://item-bucket/catalog", "--run-name", "r1", "--output-dir", str(tmp_path / "s"),
              "--dry-run")
    assert dry.exit_code == 0, dry.output[-2000:]
    plan = json.loads(dry.output)
    assert plan["pipeline_root"] == "gs://item-bucket/kfp-root" and plan["run_name"] == "r1"
    assert plan["arguments"]["catalog"] == "gs://item-bucket/catalog"
    assert plan["arguments"]["registry_root"] == "gs://item-bucket/storage/registry"
    # the training run indexes the whole catalog under the cluster's storage root, one task per shard
    assert plan["arguments"]["storage_root"] == "gs://item-bucket/storage"
    assert plan["arguments"]["index_shards"] == list(range(plan["arguments"]["index_settings"]["num_shards"]))
    assert plan["arguments"]["index_settings"]["threads"] == 8
    # the index pipeline: a ParallelFor over --param num_shards shard tasks, each with resources.embed-shard
    dry = cli("submit", "--host", "http://127.0.0.1:9", "--cluster", str(cluster_file), "--pipeline", "index",
              "--param", "model_version=v7", "--param", "num_shards=4", "--output-dir", str(tmp_path / "s"), "--dry-run")
    assert dry.exit_code == 0, dry.output[-2000:]
    args = json.loads(dry.output)["arguments"]
    assert args["shards"] == [0, 1, 2, 3] and args["index_root"] == "gs://item-bucket/storage/indexes/v7"
    assert args["registry_root"] == "gs://item-bucket/storage/registry"
    assert args["settings"]["backend"] == "faiss-hnsw-sq8+rerank" and args["settings"]["num_shards"] == 4
    assert args["settings"]["threads"] == 8            # the shard task's CPU request, not this machine's cores
    spec, _ = _load(tmp_path / "s" / "index_pipeline.yaml")
    shard_exec = next(e for name, e in _executors(spec).items() if "embed-shard" in name)
    assert shard_exec["container"]["image"] == IMAGE and shard_exec["container"]["resources"]["cpuRequest"] == 8
    no_version = cli("submit", "--host", "http://127.0.0.1:9", "--cluster", str(cluster_file), "--pipeline", "index",
                     "--dry-run", "--output-dir", str(tmp_path / "s"))
    assert no_version.exit_code != 0 and "model_version" in no_version.output
    bad = cli("submit", "--host", "http://127.0.0.1:9", "--cluster", str(cluster_file), "--param", "no_such=1",
              "--dry-run", "--output-dir", str(tmp_path / "s"))
    assert bad.exit_code != 0 and "no_such" in bad.output
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"image": IMAGE, "pipeline_root": "/local/path"}))
    with pytest.raises(pconfig.ClusterConfigError, match="pipeline_root"):
        pconfig.load_cluster_config(broken)


def _hashed_pins(path: Path) -> dict[str, list[str]]:
    """``{normalised name==version: [sha256, ...]}`` of a ``pip-compile --generate-hashes`` style file."""
    pins: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("--hash"):
            name, _, version = line.split(" ")[0].partition("==")
            current = f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"
            pins[current] = []
        else:
            pins[current].append(line.split("sha256:")[1].rstrip(" \\"))
    return pins


def test_dockerfile_installs_the_pinned_set_hash_checked_from_a_pinned_base():
    """The component image: base pinned by digest, the exact set of requirements.lock installed with
    --require-hashes (every pin hashed), the project without dependencies, an unprivileged user."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if not l.strip().startswith("#")]
    assert re.fullmatch(r"FROM python:3\.11-slim@sha256:[0-9a-f]{64}", lines[0]), lines[0]
    body = "\n".join(lines)
    assert body.count("--require-hashes") == 2 and "-r requirements.container.lock" in body
    assert "pip install --no-deps ." in body and "download.pytorch.org/whl/cpu" in body
    assert re.search(r"^USER 10001", body, re.M) and "pip check" in body
    hashed = _hashed_pins(ROOT / "requirements.container.lock")
    locked = {f"{re.sub(r'[-_.]+', '-', l.split('==')[0]).lower()}=={l.split('==')[1]}"
              for l in (ROOT / "requirements.lock").read_text().splitlines() if "==" in l}
    torch = _hashed_pins(ROOT / "requirements.torch-cpu.lock")
    assert set(hashed) == {p for p in locked if not p.startswith("torch==")}   # same set, torch apart
    assert all(len(h) >= 1 and all(len(x) == 64 for x in h) for h in hashed.values())
    (torch_pin, torch_hashes), = torch.items()
    assert torch_pin.startswith("torch==2.13.0") and "torch==2.13.0" in locked and len(torch_hashes) == 1
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pyproject = (ROOT / "pyproject.toml").read_text()
    kk = [l for l in lock if l.startswith("kfp-kubernetes==")]
    assert len(kk) == 1 and f'"{kk[0]}"' in pyproject
