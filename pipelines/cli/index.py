"""``item index``: embed a whole catalog with a registry version of ITEm and build its index, through the
index pipeline (:mod:`pipelines.index`) on kfp.local.

    item index [--catalog PATH] [--model-version VERSION] [--shards 4] [--shard K ...]
               [--kinds joint,text,image] [--exact-max 200000]
               [--ann-backend usearch-hnsw|faiss-hnsw-sq8+rerank|faiss-ivfpq+rerank|milvus] [--milvus-uri URI] [--json]

The index goes to ``<storage root>/indexes/<model version>/`` (``--index-root`` to put it elsewhere);
``item serve`` searches it for that version (the training pipeline writes it first, with the same
tasks, for every blessed model; this command refreshes it or builds one for another catalog). A second run with
the same version re-embeds only new or changed listings; ``--shard K`` re-runs one shard (after a
failure) and rebuilds the index from every shard's file. Registered into the ``item`` group by
``pipelines/cli/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from components.index.build import ANN_BACKENDS, DEFAULT_BACKEND
from pipelines import config as pconfig


def index_key_figure(task: str, task_dir: Path, lines: list[str]) -> str:
    """The figure on a finished task's line: the shard's counts or the index's size and search."""
    out = json.loads((task_dir / "executor_output.json").read_text())["parameterValues"]["Output"] \
        if (task_dir / "executor_output.json").is_file() else {}
    if task.startswith("embed-shard") and out:
        return (f"{int(out['listings'])} listings: {int(out['embedded'])} embedded, {int(out['reused'])} reused, "
                f"{int(out['removed'])} removed")
    if task.startswith("build-index") and out:
        return ("" if out["written"] else "unchanged: ") + f"{int(out['n'])} listings, {out['search']} search"
    return ""


#: index_settings field -> the option of this command that sets it (a bad value is reported under it)
SETTING_OPTIONS = {"num_shards": "--shards", "kinds": "--kinds", "batch_size": "--batch-size",
                   "exact_max": "--exact-max", "backend": "--ann-backend", "milvus_uri": "--milvus-uri"}


@click.command("index")
@click.option("--catalog", default=pconfig.DEFAULT_CATALOG, show_default=True,
              help="Catalog folder or gs://bucket/prefix (data/*.parquet).")
@click.option("--model-version", default="", help="Registry version to embed with (default: the champion).")
@click.option("--registry", default="", help="Model registry root (default: $ITEM_REGISTRY or ./item-storage/registry).")
@click.option("--index-root", default="", help="Where the index goes (default: <storage root>/indexes/<version>).")
@click.option("--shards", "num_shards", type=click.IntRange(1, 4096), default=4, show_default=True,
              help="Number of shards (parallel embedding tasks).")
@click.option("--shard", "only", type=int, multiple=True, help="Run only this shard (repeatable), then rebuild.")
@click.option("--kinds", default="joint,text,image", show_default=True,
              help="Embedding kinds to index (comma-separated: joint, text, image; 'joint' is required).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--exact-max", type=click.IntRange(0), default=200_000, show_default=True,
              help="Above this many listings an approximate (HNSW) index is built as well.")
@click.option("--ann-backend", type=click.Choice(sorted(ANN_BACKENDS)), default=DEFAULT_BACKEND, show_default=True,
              help="Approximate index above --exact-max: embedded usearch HNSW (float16), embedded faiss HNSW-SQ8 "
                   "re-ranked from float16 vectors on disk, or Milvus (Lite or a cluster).")
@click.option("--milvus-uri", default="", help="Milvus server URI for --ann-backend milvus (default: a Milvus "
                                             "Lite .db file inside the index).")
@click.option("--output-dir", default="runs", show_default=True, help="Folder for the run's task outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--verbose", "stream", is_flag=True, help="Stream kfp.local's whole output.")
def index_cmd(catalog, model_version, registry, index_root, num_shards, only, kinds, batch_size, exact_max,
              ann_backend, milvus_uri, output_dir, as_json, stream):
    """Embed a catalog shard by shard (kfp.local, dsl.ParallelFor) and build its index."""
    from components.index.build import IndexSettingsError, index_root_of, index_settings, local_threads
    from components.registry import ModelRegistry, RegistryError, default_registry
    from pipelines.index import index_pipeline
    from pipelines.cli.runs import new_run_id, run_and_summarise

    try:
        settings = index_settings(num_shards=num_shards, kinds=[k.strip() for k in kinds.split(",") if k.strip()],
                                  batch_size=batch_size, exact_max=exact_max, backend=ann_backend, milvus_uri=milvus_uri,
                                  threads=local_threads(len(set(only)) or num_shards))
    except IndexSettingsError as exc:              # the option that set the field at fault
        raise click.BadParameter(str(exc), param_hint=SETTING_OPTIONS.get(exc.field, exc.field)) from exc
    bad = [s for s in only if not 0 <= s < num_shards]
    if bad:
        raise click.BadParameter(f"{bad} outside [0, {num_shards})", param_hint="--shard")
    try:
        pconfig.preflight(catalog)
        registry_root = registry or default_registry()
        reg = ModelRegistry(registry_root)
        if not model_version:
            pointer = reg.champion()
            if not pointer:
                raise click.ClickException(f"the registry {registry_root} has no champion; give --model-version")
            model_version = pointer["version"]
        reg.version_path(model_version)
    except (RegistryError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    index_root = index_root or index_root_of(model_version)
    run_dir = Path(output_dir).resolve() / new_run_id("index")
    shards = sorted(set(only)) or list(range(num_shards))
    click.echo(f"item index: model {model_version}, {len(shards)} of {num_shards} shard(s)\n"
               f"            catalog {catalog}\n            index   {index_root}\n            outputs {run_dir}")
    args = dict(catalog=catalog, model_version=model_version, registry_root=str(registry_root), storage_root="",
                index_root=str(index_root), shards=shards, settings=settings)

    def summarise(run_dir: Path) -> dict:
        return {"model_version": model_version, "index_root": str(index_root),
                "tasks": json.loads((run_dir / "tasks.json").read_text()) if (run_dir / "tasks.json").is_file() else []}

    summary = run_and_summarise(index_pipeline, args, run_dir, what="index pipeline", summarise=summarise,
                                key_figure=index_key_figure, verbose=stream)
    click.echo(json.dumps(summary, indent=2) if as_json else f"index ready in {summary['wall_time_s']:.0f} s: {index_root}")
