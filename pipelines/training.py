"""The ITEm training pipeline (KFP v2): validate -> pretrain -> evaluate (challenger, champion,
baselines) -> gate -> register -> (if blessed) embed the whole catalog, shard by shard in a
``dsl.ParallelFor``, and build its index (the index pipeline's own components: one path for the
catalog index) -> package -> serving check -> (if served) promote.

A profile may train on a sample (``max_listings``); the index covers every listing of the catalog.

The champion pointer moves last, only to a model that was packaged and answered canned requests
from a real ``bentoml serve`` exactly as the in-process model does (TFX's InfraValidator order).

The DAG only; parameters come from ``pipelines/config.py`` (profiles and gate config).
:data:`training_pipeline` is the pipeline ``item run`` runs through ``kfp.local``, with no cluster
settings. :func:`build_training_pipeline` with a cluster config (``pipelines/configs/cluster.yaml``)
builds the same DAG for a Kubeflow cluster: every task on the configured image, resource requests
and a GPU for ``pretrain`` (KFP task settings), the GCS credentials secret mounted through
``kfp-kubernetes``, and, with ``ddp.enabled``, ``pretrain`` as a multi-replica PyTorchJob.
"""

from kfp import dsl

from components.build_index import build_index
from components.embed_shard import embed_shard
from components.evaluate import evaluate
from components.gate import gate
from components.package import package
from components.pretrain import pretrain
from components.pretrain_ddp import pretrain_ddp
from components.promote import promote
from components.register_model import register_model
from components.serving_check import serving_check
from components.validate_catalog import validate_catalog
from pipelines.params import TRAINING_SPECS, pipeline_signature

PIPELINE_NAME = "item-training"
#: the DAG's task names (kfp.local writes each task's outputs to a folder of that name)
TASKS = ("validate-catalog", "pretrain", "evaluate", "gate", "register-model", "embed-shard", "build-index", "package",
         "serving-check", "promote")


def apply_cluster(task, name: str, cluster: dict | None):
    """Apply a cluster config's settings to one task (no-op without a config).

    Sets: the image (``image``), CPU/memory requests and limits and the accelerator
    (``resources.<name>`` else ``resources.default``), and, through ``kfp-kubernetes``, the image
    pull policy and the GCS credentials secret as a volume with ``GOOGLE_APPLICATION_CREDENTIALS``.
    Returns the task.
    """
    if not cluster:
        return task
    from kfp import kubernetes

    task.set_container_image(cluster["image"])
    res = cluster.get("resources", {}).get(name) or cluster.get("resources", {}).get("default") or {}
    if res.get("cpu"):
        task.set_cpu_request(str(res["cpu"]))
    if res.get("cpu_limit"):
        task.set_cpu_limit(str(res["cpu_limit"]))
    if res.get("memory"):
        task.set_memory_request(str(res["memory"]))
    if res.get("memory_limit"):
        task.set_memory_limit(str(res["memory_limit"]))
    if res.get("accelerator"):
        task.set_accelerator_type(str(res["accelerator"]))
        task.set_accelerator_limit(int(res.get("accelerator_count", 1)))
    if cluster.get("image_pull_policy"):
        kubernetes.set_image_pull_policy(task, cluster["image_pull_policy"])
    creds = cluster.get("gcs_credentials") or {}
    if creds.get("secret"):
        kubernetes.use_secret_as_volume(task, secret_name=creds["secret"], mount_path=creds["mount_path"])
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS",
                              f"{creds['mount_path'].rstrip('/')}/{creds['key_file']}")
    return task


def ddp_job_config(cluster: dict) -> dict:
    """What the ``pretrain_ddp`` launcher needs from the cluster config (compiled in as a constant)."""
    ddp = cluster["ddp"]
    return {"image": cluster["image"], "image_pull_policy": cluster.get("image_pull_policy", "IfNotPresent"),
            "command": list(ddp["command"]), "replicas": int(ddp["replicas"]),
            "nproc_per_node": int(ddp["nproc_per_node"]), "backend": ddp.get("backend", "nccl"),
            "timeout_s": float(ddp.get("timeout_s", 86400)),
            "resources": cluster.get("resources", {}).get("pretrain") or {},
            "gcs_credentials": cluster.get("gcs_credentials") or {}}


def build_training_pipeline(cluster: dict | None = None):
    """The training pipeline; with ``cluster`` (:func:`pipelines.config.load_cluster_config`) its
    tasks carry the cluster settings (see :func:`apply_cluster`). Returns a KFP pipeline."""
    ddp = bool(cluster and cluster.get("ddp", {}).get("enabled"))

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Validate a product catalog, pre-train ITEm, evaluate it beside baselines, "
                              "gate it, and package it for BentoML when blessed.")
    @pipeline_signature(TRAINING_SPECS)
    def training_pipeline(p: dict):
        """The DAG over :class:`pipelines.params.TrainingParams` (``p``: name -> pipeline channel)."""
        catalog, max_listings, max_quarantine_fraction = p["catalog"], p["max_listings"], p["max_quarantine_fraction"]
        model_config, train_config, modality_ablation = p["model_config"], p["train_config"], p["modality_ablation"]
        bert_path, checkpoint_root, resume = p["bert_path"], p["checkpoint_root"], p["resume"]
        gate_config, registry_root = p["gate_config"], p["registry_root"]
        model_name, bentoml_home = p["model_name"], p["bentoml_home"]
        validated = apply_cluster(validate_catalog(catalog=catalog, max_listings=max_listings,
                                                   max_quarantine_fraction=max_quarantine_fraction),
                                  "validate-catalog", cluster)
        if ddp:
            # the launcher itself is light; the replicas get resources.pretrain (ddp_job_config)
            trained = pretrain_ddp(validated_catalog=validated.outputs["validated_catalog"], model_config=model_config,
                                   train_config=train_config, bert_path=bert_path,
                                   job_config=ddp_job_config(cluster)).set_display_name("pretrain (DDP)")
            apply_cluster(trained, "pretrain-ddp-launcher", {**cluster, "resources": {
                "default": cluster.get("resources", {}).get("default") or {}}})
        else:
            trained = apply_cluster(pretrain(validated_catalog=validated.outputs["validated_catalog"],
                                             model_config=model_config, train_config=train_config,
                                             bert_path=bert_path, checkpoint_root=checkpoint_root, resume=resume),
                                    "pretrain", cluster)
        evaluated = apply_cluster(evaluate(validated_catalog=validated.outputs["validated_catalog"],
                                           model=trained.outputs["model"], bert_path=bert_path,
                                           modality_ablation=modality_ablation, registry_root=registry_root),
                                  "evaluate", cluster)
        verdict = apply_cluster(gate(eval_json=evaluated.outputs["eval_json"],
                                     eval_details=evaluated.outputs["eval_details"],
                                     validated_catalog=validated.outputs["validated_catalog"], gate_config=gate_config),
                                "gate", cluster)
        registered = apply_cluster(register_model(
            model=trained.outputs["model"], eval_json=evaluated.outputs["eval_json"],
            eval_details=evaluated.outputs["eval_details"], blessing=verdict.outputs["blessing"],
            report=verdict.outputs["report"], report_html=verdict.outputs["report_html"],
            validated_catalog=validated.outputs["validated_catalog"],
            registry_root=registry_root, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), "register-model", cluster)
        with dsl.If(verdict.outputs["Output"] == True, name="blessed"):  # noqa: E712 (KFP condition syntax)
            # the whole catalog (not the training sample), with the code and tasks of the index pipeline
            with dsl.ParallelFor(items=p["index_shards"], name="index-shards") as shard:
                embedded = apply_cluster(embed_shard(catalog=catalog, shard=shard, model_version=registered.output,
                                                     registry_root=registry_root, storage_root=p["storage_root"],
                                                     index_root="", settings=p["index_settings"]),
                                         "embed-shard", cluster)
            indexed = apply_cluster(build_index(model_version=registered.output, storage_root=p["storage_root"],
                                                index_root="", settings=p["index_settings"]).after(embedded),
                                    "build-index", cluster)
            packaged = apply_cluster(package(model=trained.outputs["model"], eval_json=evaluated.outputs["eval_json"],
                                             blessing=verdict.outputs["blessing"],
                                             validated_catalog=validated.outputs["validated_catalog"],
                                             registry_version=registered.output, storage_root=p["storage_root"],
                                             model_name=model_name, bentoml_home=bentoml_home).after(indexed),
                                     "package", cluster)
            served = apply_cluster(serving_check(bento_model=packaged.outputs["bento_model"], gate_config=gate_config,
                                                 registry_root=registry_root, registry_version=registered.output,
                                                 bentoml_home=bentoml_home), "serving-check", cluster)
            with dsl.If(served.outputs["Output"] == True, name="served"):  # noqa: E712
                apply_cluster(promote(eval_json=evaluated.outputs["eval_json"], registry_root=registry_root,
                                      registry_version=registered.output), "promote", cluster)

    return training_pipeline


#: the pipeline without cluster settings (``item run`` through kfp.local, ``item compile``)
training_pipeline = build_training_pipeline()
