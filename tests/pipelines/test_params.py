"""The pipelines' parameters are declared once (pipelines/params.py) and every list is derived from it."""

from __future__ import annotations

import yaml

from pipelines import config as pconfig
from pipelines.cli import compile_monitoring, compile_pipeline
from pipelines.params import MONITORING_SPECS, TRAINING_FIELDS, MonitoringOnlyParams, TrainingParams


def test_compiled_pipelines_take_the_declared_parameters(tmp_path):
    training = yaml.safe_load(compile_pipeline(tmp_path / "t.yaml").read_text())
    monitoring = yaml.safe_load(compile_monitoring(tmp_path / "m.yaml").read_text())
    assert set(training["root"]["inputDefinitions"]["parameters"]) == set(TRAINING_FIELDS)
    assert set(monitoring["root"]["inputDefinitions"]["parameters"]) == {n for n, _ in MONITORING_SPECS}
    own = {f for f in MonitoringOnlyParams.__dataclass_fields__}
    assert {n for n, _ in MONITORING_SPECS} == own | set(TRAINING_FIELDS)
    # the nested training run receives every training parameter
    nested = next(c for name, c in monitoring["components"].items() if name.startswith("comp-item-training"))
    assert set(nested["inputDefinitions"]["parameters"]) == set(TRAINING_FIELDS)
    types = training["root"]["inputDefinitions"]["parameters"]
    assert types["max_listings"]["parameterType"] == "NUMBER_INTEGER" and types["model_config"]["parameterType"] == "STRUCT"


def test_item_run_and_cluster_arguments_are_the_dataclass_fields():
    prof, gate = pconfig.load_profile("tiny"), pconfig.load_gate_config(pconfig.GATE_FILE)
    args = pconfig.pipeline_arguments("../shared/datasets/fashion-product-images-small", prof, gate)
    assert list(args) == list(TrainingParams.__dataclass_fields__)
    cluster = pconfig.load_cluster_config()
    assert set(pconfig.cluster_arguments(cluster, prof, gate)) == set(TRAINING_FIELDS)


def test_index_settings_from_a_profile_reach_the_training_run_and_bad_ones_name_the_field():
    """A profile's ``index`` section sets the training run's index steps (one dict for the pipeline, the
    profiles, ``item index`` and the cluster); the shard list follows ``num_shards``; a bad setting is
    refused before anything runs, naming the field."""
    import pytest
    gate = pconfig.load_gate_config(pconfig.GATE_FILE)
    default = pconfig.pipeline_arguments("/catalog", pconfig.load_profile("default"), gate)
    assert default["index_settings"]["kinds"] == ["item", "item_text_only", "item_image_only"]
    assert default["index_shards"] == list(range(default["index_settings"]["num_shards"]))
    # kfp.local runs the shard tasks side by side: they split this machine's cores
    import os
    assert default["index_settings"]["threads"] == max(1, os.cpu_count() // default["index_settings"]["num_shards"])
    prof = {**pconfig.load_profile("tiny"), "index": {"num_shards": 3, "kinds": ["item"], "exact_max": 10.0}}
    args = pconfig.pipeline_arguments("/catalog", prof, gate)
    assert args["index_shards"] == [0, 1, 2] and args["index_settings"]["kinds"] == ["item"]
    assert args["index_settings"]["exact_max"] == 10 and isinstance(args["index_settings"]["exact_max"], int)
    for bad, field in (({"num_shards": 0}, "num_shards"), ({"kinds": ["item_text_only"]}, "kinds"),
                       ({"backend": "annoy"}, "backend"), ({"batch_size": -1}, "batch_size"),
                       ({"threads": -2}, "threads")):
        with pytest.raises(ValueError, match=field):
            pconfig.pipeline_arguments("/catalog", {**prof, "index": bad}, gate)
    cluster = pconfig.cluster_arguments(pconfig.load_cluster_config(), pconfig.load_profile("default"), gate,
                                        {"index_settings": {"num_shards": 8}})
    assert cluster["index_shards"] == list(range(8)) and cluster["index_settings"]["backend"] == "faiss-hnsw-sq8+rerank"
