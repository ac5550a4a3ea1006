"""``item compile`` and ``item submit``: the pipelines as KFP IR YAML, and runs on a Kubeflow cluster.

    item compile [--output build/training_pipeline.yaml] [--cluster pipelines/configs/cluster.yaml]
    item submit --host URL [--pipeline training|monitoring|index] [--param KEY=VALUE ...]
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click

from components import storage
from pipelines import config as pconfig


def compile_pipeline(output: str | Path, profile: str = "default", cluster: dict | None = None) -> Path:
    """Compile the training pipeline to KFP IR YAML, with the profile's values as parameter defaults.

    Args:
        cluster: a cluster config (:func:`pipelines.config.load_cluster_config`): its image, resources,
            secrets and DDP setting go into the YAML and its run parameters become the defaults.
            None: no cluster settings (the pipeline ``item run`` runs).
    """
    from kfp import compiler

    from pipelines.training import build_training_pipeline
    prof, gate_cfg = pconfig.load_profile(profile), pconfig.load_gate_config(pconfig.GATE_FILE)
    args = (pconfig.cluster_arguments(cluster, prof, gate_cfg) if cluster
            else pconfig.pipeline_arguments(pconfig.DEFAULT_CATALOG, prof, gate_cfg))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_training_pipeline(cluster), str(output), pipeline_parameters=args)
    return output


def monitoring_arguments(training_args: dict, storage_root: str = "") -> dict:
    """Default parameters of the monitoring pipeline: the training ones (for ``retrain``) plus the
    champion ``item:latest``, the default drift config, no window bounds, no retraining. ``current``
    (the catalog batch or traffic log to test) has no default: it is given per run."""
    from monitoring.drift import DriftConfig
    args = {k: v for k, v in training_args.items()}
    return {"model_tag": "item:latest", "storage_root": storage_root, "since": "", "until": "",
            "drift_config": DriftConfig().to_dict(), "retrain": False, **args}


def compile_monitoring(output: str | Path, profile: str = "default", cluster: dict | None = None) -> Path:
    """Compile the monitoring pipeline (with the nested training pipeline) to KFP IR YAML; ``cluster``
    as in :func:`compile_pipeline`."""
    from kfp import compiler

    from pipelines.monitoring import build_monitoring_pipeline
    prof, gate_cfg = pconfig.load_profile(profile), pconfig.load_gate_config(pconfig.GATE_FILE)
    training = (pconfig.cluster_arguments(cluster, prof, gate_cfg) if cluster
                else pconfig.pipeline_arguments(pconfig.DEFAULT_CATALOG, prof, gate_cfg))
    args = monitoring_arguments(training, (cluster or {}).get("storage_root", ""))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_monitoring_pipeline(cluster), str(output), pipeline_parameters=args)
    return output


def _cluster(path: str) -> dict | None:
    if not path:
        return None
    try:
        return pconfig.load_cluster_config(path)
    except pconfig.ClusterConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("compile")
@click.option("--output", default="build/training_pipeline.yaml", show_default=True,
              help="Training pipeline YAML; the monitoring pipeline goes beside it (monitoring_pipeline.yaml).")
@click.option("--monitoring-output", default="", help="Monitoring pipeline YAML (default: beside --output).")
@click.option("--profile", default="default", show_default=True, help="Profile whose values become the defaults.")
@click.option("--cluster", "cluster_file", default="", metavar="YAML",
              help="Compile for a Kubeflow cluster with this config (image, resources, secrets, DDP), "
                   "e.g. pipelines/configs/cluster.yaml. Without it: no cluster settings.")
def compile_cmd(output, monitoring_output, profile, cluster_file):
    """Compile the training and monitoring pipelines to KFP IR YAML (for a Kubeflow cluster or Vertex AI)."""
    cluster = _cluster(cluster_file)
    path = compile_pipeline(output, profile, cluster)
    mon = compile_monitoring(monitoring_output or Path(output).with_name("monitoring_pipeline.yaml"), profile, cluster)
    click.echo(f"compiled {path}\ncompiled {mon}" + (f"\n(cluster settings from {cluster_file}: image "
                                                   f"{cluster['image']})" if cluster else ""))


def submit_run(host: str, pipeline_file: Path, arguments: dict, cluster: dict, experiment: str, run_name: str,
               namespace: str | None = None, existing_token: str | None = None) -> dict:
    """Submit a compiled pipeline to a Kubeflow Pipelines API with ``kfp.Client``, in ``experiment``
    (created when missing), with the cluster's pipeline root.

    Returns:
        ``{"run_id", "experiment", "run_name", "url"}``.
    """
    import kfp
    client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
    result = client.create_run_from_pipeline_package(
        str(pipeline_file), arguments=arguments, run_name=run_name, experiment_name=experiment,
        namespace=namespace, pipeline_root=cluster["pipeline_root"], enable_caching=False)
    return {"run_id": result.run_id, "experiment": experiment, "run_name": run_name,
            "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}"}


def index_arguments(cluster: dict, catalog: str, params: dict) -> dict:
    """The index pipeline's parameters for a cluster run: ``model_version`` (required) and optional
    ``catalog``, ``num_shards`` (default 16), ``kinds``, ``batch_size``, ``exact_max``, ``backend``,
    ``milvus_uri`` from ``--param``; the registry and the index root under the cluster's ``storage_root``.

    Raises:
        ValueError: no ``model_version``, no ``storage_root``, an unknown parameter or a bad setting
            (:func:`components.index.build.index_settings`).
    """
    from components.index.build import index_settings
    known = {"model_version", "catalog", "num_shards", "kinds", "batch_size", "exact_max", "backend", "milvus_uri"}
    if set(params) - known:
        raise ValueError(f"--param {sorted(set(params) - known)}: not index pipeline parameters; known: {sorted(known)}")
    if not params.get("model_version") or not cluster.get("storage_root"):
        raise ValueError("the index pipeline needs --param model_version=VERSION and the cluster's storage_root")
    settings = index_settings(**{"num_shards": 16, "threads": pconfig.task_threads(cluster, "embed-shard"),
                                 **{k: v for k, v in params.items() if k not in ("model_version", "catalog")}})
    root = cluster["storage_root"]
    return {"catalog": params.get("catalog", catalog), "model_version": str(params["model_version"]),
            "registry_root": storage.join(root, "registry"), "storage_root": root,
            "index_root": storage.join(root, "indexes", str(params["model_version"])),
            "shards": list(range(settings["num_shards"])), "settings": settings}


@click.command("submit")
@click.option("--host", required=True, help="Kubeflow Pipelines API, e.g. http://localhost:8080 (port-forward) "
                                            "or https://<cluster>/pipeline.")
@click.option("--cluster", "cluster_file", default=str(pconfig.CLUSTER_FILE), show_default=True,
              help="Cluster config YAML (image, pipeline root, resources, secrets, parameters).")
@click.option("--pipeline", "which", type=click.Choice(["training", "monitoring", "index"]), default="training",
              show_default=True, help="index: embed a catalog with --param model_version=V, shard by shard "
                                      "(--param num_shards=N), and build its index under the storage root.")
@click.option("--profile", default="default", show_default=True, help="Run profile (pipelines/configs/profiles.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a profile value.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Set a pipeline parameter (value parsed as YAML), e.g. --param catalog=gs://b/catalog.")
@click.option("--experiment", default="", help="Experiment (default: the cluster config's).")
@click.option("--run-name", default="", help="Run name (default: item-<pipeline>-<UTC time>).")
@click.option("--namespace", default=None, help="Kubeflow profile namespace (multi-user deployments).")
@click.option("--token", "existing_token", default=None, envvar="KFP_TOKEN", help="Bearer token ($KFP_TOKEN).")
@click.option("--output-dir", default="build", show_default=True, help="Where the compiled YAML is kept.")
@click.option("--dry-run", is_flag=True, help="Compile and print what would be submitted; contact nothing.")
def submit_cmd(host, cluster_file, which, profile, overrides, params, experiment, run_name, namespace,
               existing_token, output_dir, dry_run):
    """Compile a pipeline for the cluster and submit a run with kfp.Client (experiment, run name,
    parameters, pipeline root on GCS)."""
    cluster = _cluster(cluster_file)
    try:
        prof = pconfig.apply_overrides(pconfig.load_profile(profile), list(overrides))
        extra = pconfig.parse_key_values(params, "--param")
        gate_cfg = pconfig.load_gate_config(pconfig.GATE_FILE)
        training = pconfig.cluster_arguments(cluster, prof, gate_cfg,
                                             {k: v for k, v in extra.items() if which == "training"})
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if which == "training":
        path = compile_pipeline(Path(output_dir) / "training_pipeline.yaml", profile, cluster)
        arguments = training
    elif which == "index":
        from kfp import compiler

        from pipelines.index import build_index_pipeline
        try:
            arguments = index_arguments(cluster, training["catalog"], extra)
        except (KeyError, ValueError) as exc:
            raise click.ClickException(str(exc).strip("'\"")) from exc
        path = Path(output_dir) / "index_pipeline.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(build_index_pipeline(cluster), str(path))
    else:
        path = compile_monitoring(Path(output_dir) / "monitoring_pipeline.yaml", profile, cluster)
        arguments = {**monitoring_arguments(training, cluster.get("storage_root", "")), **extra}
        if "current" not in arguments:
            raise click.ClickException("the monitoring pipeline needs --param current=gs://... (a catalog batch "
                                       "or the traffic log)")
    experiment = experiment or cluster["experiment"]
    run_name = run_name or f"item-{which}-{stamp}"
    if dry_run:
        click.echo(json.dumps({"host": host, "pipeline_file": str(path), "experiment": experiment,
                               "run_name": run_name, "pipeline_root": cluster["pipeline_root"],
                               "arguments": arguments}, indent=2, default=str))
        return
    try:
        out = submit_run(host, path, arguments, cluster, experiment, run_name, namespace, existing_token)
    except Exception as exc:       # kfp/urllib3 raise many kinds; name the host and the cause
        raise click.ClickException(f"submitting to {host} failed: {type(exc).__name__}: {exc}") from exc
    click.echo(f"submitted run {out['run_name']} ({out['run_id']}) in experiment {experiment}: {out['url']}")


