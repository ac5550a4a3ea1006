"""``item monitor``: run the monitoring pipeline locally through kfp.local.

    item monitor --current PATH [--model-tag item:latest] [--since ISO] [--until ISO] [--retrain]
                 [--catalog PATH] [--profile default] [--output-dir runs] [--fail-on-drift] [--json]

PATH is a new catalog batch (a folder in the catalog layout) or the serving traffic log (a folder of
parquet files, or one file). Registered into the ``item`` group by ``pipelines/cli/``; also runs
on its own as ``python -m pipelines.cli.monitor``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from components.steps.environment import set_offline_defaults

set_offline_defaults()

from pipelines import config as pconfig  # noqa: E402
from pipelines.training import TASKS as TRAINING_TASKS  # noqa: E402

logger = logging.getLogger(__name__)

DRIFT_EXIT_CODE = 3


def preflight(current: str, model_tag: str, bentoml_home: str, since: str, until: str) -> dict:
    """Check in-process, before any task starts, what can be checked cheaply: the current path and
    its kind, the model and its reference, and for a traffic log the window itself (non-empty, served
    by this model, embeddings of the reference's dimension).

    Returns:
        ``{"model_tag": resolved tag, "model_path", "source_type", "reference_dim", "window": counts}``.

    Raises:
        monitoring.drift.DriftInputError / components.catalog.CatalogError: naming the field or file.
    """
    from monitoring import inputs

    kind = inputs.source_type(current)
    tag, path = inputs.resolve_model(model_tag, bentoml_home or None)
    dim = inputs.reference_dim(path)
    if dim is None:
        inputs.load_reference(path)                      # raises: the model has no catalog index
    out = {"model_tag": tag, "model_path": str(path), "source_type": kind, "reference_dim": dim}
    if kind == "catalog":
        check_catalog(current)
    else:
        window = inputs.load_traffic_window(current, since or None, until or None)
        out["window"] = {m: len(e) for m, e in inputs.traffic_embeddings(window, tag, dim).items()}
    return out


def check_catalog(catalog: str) -> None:
    """The catalog folder, its shards and their required columns can be read (no rows are read).

    Raises:
        components.catalog.CatalogError: naming the folder, shard or column.
    """
    import pyarrow.parquet as pq

    from components import catalog as cat
    for shard in cat.shard_paths(catalog):
        try:
            names = pq.read_schema(shard).names
        except Exception as exc:
            raise cat.CatalogError(f"shard {str(shard)!r} is unreadable: {exc}") from exc
        cat.check_columns(shard, names)
    cat.read_groups(catalog)


def find_run(run_dir: Path) -> Path | None:
    """The (single) ``item-monitoring-<timestamp>`` pipeline-run folder under ``run_dir``."""
    from pipelines.monitoring import PIPELINE_NAME
    runs = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PIPELINE_NAME + "-"))
    return runs[-1] if runs else None


def monitoring_key_figure(task: str, task_dir: Path, lines: list[str]) -> str:
    """The figure ``item monitor`` shows on a finished task's line: the verdict and drift scores after
    ``drift-report``; other tasks: their last INFO message (empty here)."""
    from components.storage.results import DriftSummary
    if task == "drift-report" and (task_dir / "summary").exists():
        d = DriftSummary.from_json(task_dir / "summary")
        scores = ", ".join(f"{m} {r['score']:.3g}/{r['threshold']:.3g}" for m, r in d.modalities.items()
                           if r.get("status") == "tested")
        return ("DRIFT " + ",".join(d.drifted_modalities) if d.drift else "no drift") + \
            (f" (drift score/threshold: {scores})" if scores else "")
    return ""


def summarize(run_dir: Path) -> dict:
    """The monitoring run's results (``summary.json`` beside :func:`pipelines.cli.runs.run_and_summarise`'s
    status and wall time): ``pipeline_run``, ``tasks_run``,
    ``branch`` (``"no-drift"``, ``"recommend"`` or ``"recommend+retrain"``), the drift summary, the
    recommendation and, when retraining ran, its blessing and BentoML tag."""
    from components.storage.results import Blessing, DriftSummary
    from pipelines.cli.runs import task_folders

    run = find_run(run_dir)
    tasks = task_folders(run) if run else {}
    out: dict = {"pipeline_run": str(run) if run else None, "tasks_run": sorted(tasks)}
    if "drift-report" in tasks:
        d = tasks["drift-report"]
        out["drift"] = DriftSummary.from_json(d / "summary").to_dict()
        out["html_report"] = str(d / "report")
        out["summary_json"] = str(d / "summary")
    if "recommend-retraining" in tasks:
        r = tasks["recommend-retraining"]
        out["recommendation"] = json.loads((r / "recommendation").read_text())
        out["recommendation_md"] = str(r / "recommendation_md")
    # the nested training pipeline's tasks in pipeline order, loop iterations (embed-shard-0, -1, ...) included
    retrained = [t for base in TRAINING_TASKS for t in sorted(tasks) if t == base or
                 (t.startswith(base + "-") and t[len(base) + 1:].isdigit())]
    out["branch"] = ("recommend+retrain" if retrained else "recommend") if "recommend-retraining" in tasks \
        else "no-drift"
    if retrained:
        training: dict = {"tasks_run": retrained}
        if "gate" in tasks and (tasks["gate"] / "blessing").exists():
            training["blessed"] = Blessing.from_json(tasks["gate"] / "blessing").blessed
        if "package" in tasks and (tasks["package"] / "bento_model").exists():
            training["bento_model"] = json.loads((tasks["package"] / "bento_model").read_text()).get("tag")
        out["training"] = training
    return out


def print_run(summary: dict) -> None:
    """The drift summary (one screen) and what the run did about it."""
    from rich.console import Console

    from monitoring.report import print_summary

    console = Console()
    if "drift" in summary:
        d = dict(summary["drift"], html_report=summary.get("html_report"))
        print_summary(d, console)
    branch = {"no-drift": "no drift: nothing to recommend",
              "recommend": "drift: retraining recommended (not run; pass --retrain)",
              "recommend+retrain": "drift: retraining recommended and run"}[summary["branch"]]
    console.print(f"{'outcome':18s}{branch}", highlight=False, soft_wrap=True)
    if summary.get("recommendation_md"):
        console.print(f"{'recommendation':18s}{summary['recommendation_md']}", highlight=False, soft_wrap=True)
    if summary.get("training"):
        t = summary["training"]
        console.print(f"{'retraining':18s}tasks {', '.join(t['tasks_run'])}; blessed {t.get('blessed')}; "
                      f"packaged {t.get('bento_model') or '-'}", highlight=False, soft_wrap=True)
    console.print(f"{'wall time':18s}{summary['wall_time_s']:.0f} s   run summary "
                  f"{Path(summary['run_dir']) / 'summary.json'}", highlight=False, soft_wrap=True)


def _parse_pairs(pairs: tuple[str, ...], what: str) -> dict:
    try:
        return pconfig.parse_key_values(pairs, what)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from exc


@click.command("monitor")
@click.option("--current", required=True, help="A new catalog batch (folder in the catalog layout) or the "
                                               "traffic log (folder of parquet files, or one file).")
@click.option("--model-tag", default="", help="The model to watch (default: the model in production, as 'item serve' "
              "picks it: the registry's champion, or the newest 'item' model while there is none).")
@click.option("--bentoml-home", default="", help="BentoML store root (default: $BENTOML_HOME or ~/bentoml).")
@click.option("--storage-root", default="", help="Storage root: calibrations, and for --retrain checkpoints "
                                                  "and the registry (default: $ITEM_STORAGE_ROOT or ./item-storage).")
@click.option("--since", default="", help="Traffic log: first timestamp of the window (ISO, UTC).")
@click.option("--until", default="", help="Traffic log: end of the window, exclusive (ISO, UTC).")
@click.option("--drift-set", "drift_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a drift setting (monitoring.drift.DriftConfig), e.g. --drift-set quantile=0.995.")
@click.option("--retrain", is_flag=True, help="On drift, also run the training pipeline on --catalog.")
@click.option("--catalog", default="", help="Catalog to retrain on (default: --current when it is a catalog folder).")
@click.option("--profile", default="default", show_default=True, help="Training profile for --retrain.")
@click.option("--gate-config", default="",
              help="Gate config YAML for --retrain (default: pipelines/configs/gate.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a training profile value.")
@click.option("--registry", default="", help="Model registry root for --retrain (default: $ITEM_REGISTRY or "
                                             "<storage root>/registry).")
@click.option("--output-dir", default="runs", show_default=True, help="Folder for run outputs (one subfolder a run).")
@click.option("--fail-on-drift", is_flag=True, help=f"Exit with code {DRIFT_EXIT_CODE} when drift is found.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--verbose", "stream", is_flag=True,
              help="Stream kfp.local's whole output (every task's log) instead of one line per task.")
@click.pass_context
def monitor_cmd(ctx, current, model_tag, bentoml_home, storage_root, since, until, drift_overrides, retrain, catalog,
                profile, gate_config, overrides, registry, output_dir, fail_on_drift, as_json, stream):
    """Test a catalog batch or a traffic-log window for embedding drift against the champion (Evidently,
    calibrated thresholds, per modality); on drift write a retraining recommendation and, with --retrain,
    run the training pipeline."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from components.catalog import CatalogError
    from components.promotion.gate import GateConfigError
    from components.storage import storage_root as resolve_storage_root
    from components.registry import RegistryError
    from monitoring.drift import DriftConfig, DriftInputError
    from pipelines.cli.runs import new_run_id, run_and_summarise
    from serving.store import production_tag

    if storage_root:            # calibrations, and for --retrain checkpoints and the registry, live under it
        os.environ["ITEM_STORAGE_ROOT"] = str(resolve_storage_root(storage_root))   # a folder or gs://
    try:
        drift_config = DriftConfig.from_dict(_parse_pairs(drift_overrides, "--drift-set")).to_dict()
        model_tag, _ = production_tag(bentoml_home or None, registry or None, model_tag or None)
        checked = preflight(current, model_tag, bentoml_home, since, until)
        if not catalog and checked["source_type"] == "catalog":
            catalog = current                    # the batch itself: what a retraining would learn from
        if retrain and not catalog:
            raise DriftInputError("--retrain needs --catalog when --current is a traffic log")
        prof = pconfig.apply_overrides(pconfig.load_profile(profile), list(overrides))
        gate_cfg = pconfig.load_gate_config(gate_config or pconfig.GATE_FILE)
        if retrain:
            check_catalog(catalog)
    except (DriftInputError, CatalogError, GateConfigError, RegistryError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    training = pconfig.pipeline_arguments(catalog or ".", prof, gate_cfg, bentoml_home=bentoml_home,
                                          model_name=checked["model_tag"].split(":")[0], registry_root=registry)
    training["catalog"] = catalog and str(Path(catalog).resolve())
    arguments = {"current": str(Path(current).resolve()), "model_tag": checked["model_tag"],
                 "bentoml_home": bentoml_home, "storage_root": str(resolve_storage_root(storage_root or None)),
                 "since": since, "until": until, "drift_config": drift_config, "retrain": bool(retrain),
                 **training}
    run_dir = Path(output_dir).resolve() / new_run_id("monitor")
    click.echo(f"item monitor: {checked['source_type']} {current} against {checked['model_tag']}"
               + (f"; retrain on {catalog} (profile {profile}) if drift" if retrain else ""))
    click.echo(f"              outputs {run_dir}")
    from pipelines.monitoring import monitoring_pipeline
    summary = run_and_summarise(monitoring_pipeline, arguments, run_dir, what="monitoring pipeline",
                                summarise=summarize, key_figure=monitoring_key_figure,
                                verbose=stream or bool((ctx.obj or {}).get("verbose")))
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        print_run(summary)
    if fail_on_drift and summary.get("drift", {}).get("drift"):
        sys.exit(DRIFT_EXIT_CODE)


if __name__ == "__main__":
    monitor_cmd()
