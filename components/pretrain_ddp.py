"""KFP component for a cluster: pre-train ITEm data-parallel (PyTorch DDP) as a multi-replica
PyTorchJob (Kubeflow Training Operator, ``kubeflow.org/v1``), launched and awaited by this task.

Compiled in place of :mod:`components.pretrain` when ``ddp.enabled`` is set in
``pipelines/configs/cluster.yaml`` (``item compile --cluster`` / ``item submit``); ``item run``
(kfp.local) always uses the single-process ``pretrain``. Each replica runs the configured command
under ``torchrun`` (``torchrun -m components.steps.torchrun_pretrain``; see ``item_model/train.py`` and
``item_model/distributed.py``): the pipeline-root bucket is mounted at ``/gcs/<bucket>`` in every
replica (GKE Cloud Storage FUSE), so the replicas read the validated catalog at its artifact path and
rank 0 writes the model folder at this task's ``model`` artifact path (``/gcs/...`` = its ``gs://`` URI).

The task's service account needs RBAC to create, get and delete ``pytorchjobs.kubeflow.org`` in its
namespace (docs/deploy.md). The manifest and the Kubernetes calls live in :mod:`components.steps.pytorchjob`.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def pretrain_ddp(
    validated_catalog: Input[Dataset],
    model_config: dict,
    train_config: dict,
    bert_path: str,
    job_config: dict,
    model: Output[Model],
):
    """Launch the DDP pre-training PyTorchJob described by ``job_config`` (compiled from the cluster
    config: image, command, replicas, nproc_per_node, resources, gcs_credentials, timeout_s) and wait
    for it; the replicas write the model folder to ``model.uri``."""
    import logging
    import os
    import uuid

    from components.steps.pytorchjob import pytorchjob_manifest, run_pytorchjob

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    namespace = os.environ.get("POD_NAMESPACE") or open(
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace").read().strip()
    name = f"item-pretrain-{uuid.uuid4().hex[:8]}"
    manifest = pytorchjob_manifest(
        name, namespace, job_config["image"], job_config["command"], int(job_config["replicas"]),
        int(job_config["nproc_per_node"]), job_config.get("resources"), job_config.get("gcs_credentials"),
        values={"validated_catalog": validated_catalog.uri, "model": model.uri,
                "validated_catalog_path": validated_catalog.path, "model_path": model.path,
                "model_config": model_config, "train_config": train_config, "bert_path": bert_path},
        image_pull_policy=job_config.get("image_pull_policy", "IfNotPresent"),
        fuse_buckets=sorted({u[len("gs://"):].split("/")[0] for u in (validated_catalog.uri, model.uri)
                             if u.startswith("gs://")}))
    logging.info("launching PyTorchJob %s/%s: %d replica(s) x %d process(es)", namespace, name,
                 int(job_config["replicas"]), int(job_config["nproc_per_node"]))
    run_pytorchjob(manifest, float(job_config.get("timeout_s", 86400)))
    model.metadata.update({"framework": "transformers", "ddp_replicas": int(job_config["replicas"]),
                           "pytorchjob": f"{namespace}/{name}"})
