"""Kubeflow cluster settings applied to a pipeline's tasks at compile time (not part of any DAG).

A DAG function ends with ``on_cluster(cluster)``: every container task created so far in the pipeline
being compiled gets the cluster config's settings (``pipelines/configs/cluster.yaml``, loaded by
:func:`pipelines.config.load_cluster_config`); without a config nothing changes and the pipeline is
the one ``item run`` runs through ``kfp.local``.
"""

from __future__ import annotations

from kfp.dsl import pipeline_context


def apply_cluster(task, name: str, cluster: dict) -> None:
    """Apply a cluster config's settings to one task.

    Sets the image (``image``), CPU/memory requests and limits and the accelerator
    (``resources.<name>`` else ``resources.default``), and, through ``kfp-kubernetes``, the image
    pull policy and the GCS credentials secret as a volume with ``GOOGLE_APPLICATION_CREDENTIALS``.
    """
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


def on_cluster(cluster: dict | None) -> None:
    """Apply :func:`apply_cluster` to every container task of the pipeline being compiled, each under
    its task name (``validate-catalog``, ``pretrain``, ``embed-shard``, ...). A nested pipeline's tasks
    got theirs when that pipeline was built; the DDP launcher (``pretrain-ddp``) is light and gets
    ``resources.default`` (its replicas get ``resources.pretrain`` through :func:`ddp_job_config`).
    No-op without a config or outside a pipeline definition."""
    pipeline = pipeline_context.Pipeline.get_default_pipeline()
    if not cluster or pipeline is None:
        return
    for name, task in pipeline.tasks.items():
        if task.container_spec is None:          # a nested pipeline (its own tasks are already set)
            continue
        apply_cluster(task, "default" if name == "pretrain-ddp" else name, cluster)


def ddp_job_config(cluster: dict) -> dict:
    """What the ``pretrain_ddp`` launcher needs from the cluster config (compiled in as a constant)."""
    ddp = cluster["ddp"]
    return {"image": cluster["image"], "image_pull_policy": cluster.get("image_pull_policy", "IfNotPresent"),
            "command": list(ddp["command"]), "replicas": int(ddp["replicas"]),
            "nproc_per_node": int(ddp["nproc_per_node"]), "backend": ddp.get("backend", "nccl"),
            "timeout_s": float(ddp.get("timeout_s", 86400)),
            "resources": cluster.get("resources", {}).get("pretrain") or {},
            "gcs_credentials": cluster.get("gcs_credentials") or {}}
