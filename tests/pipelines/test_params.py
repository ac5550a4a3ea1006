"""The pipelines' parameters are the pipeline functions' signatures; what `item run`, the cluster and
the monitoring pipeline pass must match them."""

from __future__ import annotations

import inspect

import pytest
import yaml

from pipelines import config as pconfig
from pipelines.cli.compile import compile_monitoring, compile_pipeline
from pipelines.training import TRAINING_PARAMETERS

CATALOG = "../shared/datasets/fashion-product-images-small"


def test_compiled_pipelines_take_the_parameters_of_their_signatures(tmp_path):
    from pipelines.monitoring import build_monitoring_pipeline
    from pipelines.training import build_training_pipeline
    training = yaml.safe_load(compile_pipeline(tmp_path / "t.yaml").read_text())
    monitoring = yaml.safe_load(compile_monitoring(tmp_path / "m.yaml").read_text())
    assert list(training["root"]["inputDefinitions"]["parameters"]) == sorted(TRAINING_PARAMETERS)
    assert TRAINING_PARAMETERS[:3] == ("catalog", "max_listings", "max_quarantine_fraction")
    # the monitoring pipeline: its own eight, then every training parameter (two shared)
    own = ("current", "model_tag", "bentoml_home", "storage_root", "since", "until", "drift_config", "retrain")
    monitoring_params = tuple(build_monitoring_pipeline().component_spec.inputs)
    assert monitoring_params[:8] == own
    assert set(monitoring_params) == set(own) | set(TRAINING_PARAMETERS)
    assert set(monitoring["root"]["inputDefinitions"]["parameters"]) == set(monitoring_params)
    # the nested training run receives every training parameter, each from the monitoring parameter of its name
    # (inside the drift and retrain conditions KFP names each forwarded channel pipelinechannel--<name>)
    (nested_task,) = [task for comp in monitoring["components"].values() for task in comp.get("dag", {}).get(
        "tasks", {}).values() if task["componentRef"]["name"].startswith("comp-item-training")]
    wiring = {k: v["componentInputParameter"].removeprefix("pipelinechannel--")
              for k, v in nested_task["inputs"]["parameters"].items()}
    assert wiring == {name: name for name in TRAINING_PARAMETERS}
    types = training["root"]["inputDefinitions"]["parameters"]
    assert types["max_listings"]["parameterType"] == "NUMBER_INTEGER" and types["model_config"]["parameterType"] == "STRUCT"
    assert types["index_shards"]["parameterType"] == "LIST" and types["resume"]["parameterType"] == "BOOLEAN"
    # a KFP user reads them in the function itself: a real signature, documented parameter by parameter
    doc = inspect.getdoc(build_training_pipeline().pipeline_func)
    assert all(f"{name}:" in doc for name in TRAINING_PARAMETERS)


def test_item_run_and_cluster_arguments_are_the_pipeline_parameters():
    prof, gate = pconfig.load_profile("tiny"), pconfig.load_gate_config(pconfig.GATE_FILE)
    args = pconfig.pipeline_arguments(CATALOG, prof, gate)
    assert tuple(args) == TRAINING_PARAMETERS
    assert args["max_listings"] == 400 and args["model_config"]["num_hidden_layers"] == 2
    cluster = pconfig.load_cluster_config()
    assert tuple(pconfig.cluster_arguments(cluster, prof, gate)) == TRAINING_PARAMETERS
    with pytest.raises(pconfig.ClusterConfigError, match="'max_listing' is not a training pipeline parameter"):
        pconfig.cluster_arguments(cluster, prof, gate, {"max_listing": 5})


def test_local_threads_split_the_cores_between_side_by_side_shards():
    from components.index.build import local_threads
    assert [local_threads(n, cpus=16) for n in (1, 2, 3, 4, 16, 64)] == [16, 8, 5, 4, 1, 1]
    assert local_threads(2, cpus=2) == 1 and local_threads(0, cpus=8) == 8


def test_index_settings_from_a_profile_reach_the_training_run_and_bad_ones_name_the_field():
    """A profile's ``index`` section sets the training run's index steps (one dict for the pipeline, the
    profiles, ``item index`` and the cluster); the shard list follows ``num_shards``; a bad setting is
    refused before anything runs, naming the field."""
    import os
    gate = pconfig.load_gate_config(pconfig.GATE_FILE)
    default = pconfig.pipeline_arguments("/catalog", pconfig.load_profile("default"), gate)
    assert default["index_settings"]["kinds"] == ["joint", "text", "image"]
    assert default["index_settings"]["num_shards"] == 2 and default["index_shards"] == [0, 1]
    # kfp.local runs the two shard tasks side by side: together they use no more than this machine's cores
    threads = default["index_settings"]["threads"]
    assert threads >= 1 and (threads * 2 <= os.cpu_count() or threads == 1)
    prof = {**pconfig.load_profile("tiny"), "index": {"num_shards": 3, "kinds": ["joint"], "exact_max": 10.0}}
    args = pconfig.pipeline_arguments("/catalog", prof, gate)
    assert args["index_shards"] == [0, 1, 2] and args["index_settings"]["kinds"] == ["joint"]
    # an older profile's kind names are read as the kinds they stand for, in order, once each
    legacy = {**prof, "index": {**prof["index"], "kinds": ["item_image_only", "item", "image"]}}
    assert pconfig.pipeline_arguments("/catalog", legacy, gate)["index_settings"]["kinds"] == ["image", "joint"]
    assert args["index_settings"]["exact_max"] == 10 and isinstance(args["index_settings"]["exact_max"], int)
    for bad, field in (({"num_shards": 0}, "num_shards"), ({"kinds": ["text"]}, "kinds"), ({"kinds": ["joint", "title"]}, "kinds"),
                       ({"backend": "annoy"}, "backend"), ({"batch_size": -1}, "batch_size"),
                       ({"threads": -2}, "threads")):
        with pytest.raises(ValueError, match=field):
            pconfig.pipeline_arguments("/catalog", {**prof, "index": bad}, gate)
    cluster = pconfig.cluster_arguments(pconfig.load_cluster_config(), pconfig.load_profile("default"), gate,
                                        {"index_settings": {"num_shards": 8}})
    assert cluster["index_shards"] == list(range(8)) and cluster["index_settings"]["backend"] == "faiss-hnsw-sq8+rerank"
