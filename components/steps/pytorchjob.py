"""Kubeflow Training Operator glue for data-parallel pre-training on a cluster: the ``PyTorchJob``
(``kubeflow.org/v1``) manifest that runs ``torchrun -m components.steps.torchrun_pretrain`` in every replica, and
launching / awaiting it with the Kubernetes API. Used by :mod:`components.pretrain_ddp`."""

import json

PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"


def pytorchjob_manifest(name: str, namespace: str, image: str, command: list[str], replicas: int,
                        nproc_per_node: int, resources: dict | None = None, gcs_credentials: dict | None = None,
                        values: dict | None = None, image_pull_policy: str = "IfNotPresent",
                        fuse_buckets: list[str] | None = None) -> dict:
    """A ``PyTorchJob`` (``kubeflow.org/v1``) manifest: 1 ``Master`` + ``replicas - 1`` ``Worker`` pods.

    Args:
        command: argv run in every replica; ``{placeholders}`` are filled from ``values`` plus
            ``nproc_per_node`` (dicts are JSON-encoded).
        resources: ``{"cpu", "memory", "cpu_limit", "memory_limit", "accelerator", "accelerator_count"}``
            per replica (``accelerator`` is the Kubernetes resource name, e.g. ``nvidia.com/gpu``).
        gcs_credentials: ``{"secret", "mount_path", "key_file"}``; with a secret it is mounted and
            ``GOOGLE_APPLICATION_CREDENTIALS`` set.
        fuse_buckets: buckets mounted at ``/gcs/<bucket>`` in every replica (GKE Cloud Storage FUSE CSI
            driver), so the replicas read and write the KFP artifacts' local paths (``/gcs/...``).

    Returns:
        the manifest (a dict, JSON-serialisable).

    Raises:
        ValueError: ``replicas`` < 1, or a placeholder in ``command`` without a value (names it).
    """
    replicas, nproc_per_node = int(replicas), int(nproc_per_node)      # KFP Struct values arrive as floats
    if replicas < 1:
        raise ValueError(f"ddp.replicas must be >= 1, got {replicas}")
    fill = {"nproc_per_node": nproc_per_node, **(values or {})}
    fill = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in fill.items()}
    try:
        argv = [part.format(**fill) for part in command]
    except KeyError as exc:
        raise ValueError(f"ddp.command names placeholder {exc} with no value; known: {sorted(fill)}") from None
    res = resources or {}
    requests = {k: str(res[s]) for k, s in (("cpu", "cpu"), ("memory", "memory")) if res.get(s)}
    limits = {k: str(res[s]) for k, s in (("cpu", "cpu_limit"), ("memory", "memory_limit")) if res.get(s)}
    if res.get("accelerator"):
        limits[res["accelerator"]] = str(int(float(res.get("accelerator_count", 1))))   # Struct: 1 -> 1.0
    container = {"name": "pytorch", "image": image, "imagePullPolicy": image_pull_policy, "command": argv,
                 "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v}}
    pod: dict = {"containers": [container]}
    creds = gcs_credentials or {}
    if creds.get("secret"):
        container["volumeMounts"] = [{"name": "gcs-credentials", "mountPath": creds["mount_path"], "readOnly": True}]
        container["env"] = [{"name": "GOOGLE_APPLICATION_CREDENTIALS",
                             "value": f"{creds['mount_path'].rstrip('/')}/{creds['key_file']}"}]
        pod["volumes"] = [{"name": "gcs-credentials", "secret": {"secretName": creds["secret"]}}]
    annotations = {}
    for i, bucket in enumerate(fuse_buckets or []):
        annotations["gke-gcsfuse/volumes"] = "true"
        pod.setdefault("volumes", []).append({"name": f"gcs-fuse-{i}", "csi": {
            "driver": "gcsfuse.csi.storage.gke.io", "volumeAttributes": {"bucketName": bucket}}})
        container.setdefault("volumeMounts", []).append({"name": f"gcs-fuse-{i}", "mountPath": f"/gcs/{bucket}"})
    template: dict = {"spec": pod, **({"metadata": {"annotations": annotations}} if annotations else {})}
    spec = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if replicas > 1:
        spec["Worker"] = {"replicas": replicas - 1, "restartPolicy": "OnFailure", "template": template}
    return {"apiVersion": f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}", "kind": "PyTorchJob",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "item-pretrain-ddp"}},
            "spec": {"nprocPerNode": str(nproc_per_node), "pytorchReplicaSpecs": spec}}


def run_pytorchjob(manifest: dict, timeout_s: float, poll_s: float = 30.0) -> str:
    """Create the PyTorchJob (in-cluster credentials) and wait until it succeeds.

    Returns:
        the final condition type, ``"Succeeded"``.

    Raises:
        RuntimeError: the job failed (with its condition message) or ran past ``timeout_s``.
    """
    import time

    from kubernetes import client, config
    config.load_incluster_config()
    api = client.CustomObjectsApi()
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    api.create_namespaced_custom_object(PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, ns, PYTORCHJOB_PLURAL, manifest)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get_namespaced_custom_object(PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, ns, PYTORCHJOB_PLURAL, name)
        for cond in job.get("status", {}).get("conditions", []):
            if cond.get("status") == "True" and cond.get("type") == "Succeeded":
                return "Succeeded"
            if cond.get("status") == "True" and cond.get("type") == "Failed":
                raise RuntimeError(f"PyTorchJob {ns}/{name} failed: {cond.get('message', '')}")
        time.sleep(poll_s)
    raise RuntimeError(f"PyTorchJob {ns}/{name} did not finish within {timeout_s:.0f} s")
