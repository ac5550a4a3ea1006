"""``item gate``: review the promotion gate and override it.

    item gate show [VERSION|latest|champion]    every criterion of a version's gate, as a table
    item gate list                              the promotion history
    item gate approve VERSION --reason TEXT     promote by hand (and package into BentoML)
    item gate reject VERSION --reason TEXT      block by hand (rolls the champion back if needed)
    item gate init --catalog PATH [--from-run RUN]  write a gate file for a catalog
"""

from __future__ import annotations


from pathlib import Path

import click

from pipelines import config as pconfig

registry_option = click.option("--registry", default="", help="Registry root (default: $ITEM_REGISTRY or ./item-storage/registry).")


def _registry(root: str):
    from components.registry import ModelRegistry
    return ModelRegistry(root or pconfig.default_registry())


def _fail(exc: Exception):
    raise click.ClickException(str(exc)) from exc


@click.group("gate")
def gate_group() -> None:
    """Review promotion gates, the champion and the promotion history; approve or reject by hand."""


@gate_group.command("show")
@click.argument("version", default="latest")
@click.option("--storage-root", default="", help="Storage root holding the shadow log (default: $ITEM_STORAGE_ROOT "
                                                 "or ./item-storage).")
@click.option("--live-html", default="", help="Also write the live-traffic report (HTML) here.")
@registry_option
def show(version: str, storage_root: str, live_html: str, registry: str) -> None:
    """Show the gate of VERSION (a version id or prefix, 'latest' or 'champion'), and its live traffic
    when it ran in shadow beside the champion (item serve --shadow VERSION)."""
    from rich.console import Console

    from components.registry import RegistryError
    from pipelines.cli.tables import blessing_table

    reg = _registry(registry)
    try:
        v = reg.resolve(version)
        path = reg.version_path(v)
        champion = reg.champion()
    except RegistryError as exc:
        _fail(exc)
    info = reg.info(v)
    from components.storage.results import Blessing, ResultFileError
    try:
        blessing = Blessing.from_json(path / "blessing.json").to_dict()
    except ResultFileError as exc:
        _fail(exc)
    console = Console()
    console.print(f"version   {v}  (created {info['created_at']}, catalog {info.get('catalog_fingerprint', '')[:16]}, "
                  f"{info.get('code_version', '')})")
    console.print(f"champion  {champion['version'] if champion else 'none'}"
                  + ("  [bold]<- this version[/]" if champion and champion["version"] == v else ""))
    console.print(blessing_table(blessing, title=f"Gate of {v}"))
    if (path / "gate_report.html").exists():
        console.print(f"HTML report: {path / 'gate_report.html'}")
    _show_live_traffic(console, v, storage_root, live_html)


def _show_live_traffic(console, version: str, storage_root: str, live_html: str) -> None:
    """The "live traffic" section: the shadow log of ``version`` summarised (serving/shadow.py)."""
    from rich.table import Table

    from components.storage import storage_root as resolve_root
    from item_model.io import write_text_atomic
    from serving.shadow import disagreements, read_shadow_log, shadow_report_html, summarize_shadow

    root = str(resolve_root(storage_root or None))
    try:
        rows = read_shadow_log(root, version)
    except ValueError as exc:
        _fail(exc)
    s = summarize_shadow(rows)
    if not s["n"]:
        console.print(f"live traffic: none logged for {version} under {root} (item serve --shadow {version})")
    else:
        table = Table(title=f"Live traffic: {version} in shadow ({s['n']} requests, {s['first']} to {s['last']})")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row("Overlap@10 with the champion: mean / p10 / median",
                      f"{s['overlap_mean']:.2f} / {s['overlap_p10']:.2f} / {s['overlap_p50']:.2f}")
        table.add_row("queries with Overlap@10 < 0.5 / identical top-10",
                      f"{100 * s['share_below_0.5']:.1f} % / {100 * s['share_identical']:.1f} %")
        table.add_row("latency p50 / p99 ms: champion", f"{s['champion_ms_p50']:.1f} / {s['champion_ms_p99']:.1f}")
        table.add_row("latency p50 / p99 ms: challenger", f"{s['challenger_ms_p50']:.1f} / {s['challenger_ms_p99']:.1f}")
        console.print(table)
        for r in disagreements(rows, 3):
            console.print(f"  disagree (Overlap@10 {r['overlap@10']:.1f}): {r['route']} {r['query_kind']} "
                          f"{r.get('query_title') or r.get('product_id')!r}", highlight=False)
    if live_html:
        titles = {}
        from components.index.build import index_root_of, local_index
        with local_index(index_root_of(version, storage_root or None)) as folder:   # titles for the top-5 lists
            if folder is not None:
                import pandas as pd
                df = pd.read_parquet(folder / "catalog_index" / "listings.parquet", columns=["product_id", "title"])
                titles = dict(zip(df["product_id"].astype(str), df["title"].astype(str)))
        write_text_atomic(live_html, shadow_report_html(version, s, rows, titles))
        console.print(f"live-traffic report: {live_html}")


@gate_group.command("list")
@registry_option
def list_cmd(registry: str) -> None:
    """The promotion history, oldest first, and the current champion."""
    from rich.console import Console
    from rich.table import Table

    from components.registry import RegistryError

    reg = _registry(registry)
    table = Table(title=f"Promotion history ({reg.root})")
    for c in ("at", "action", "version", "actor", "how", "gate", "reason"):
        table.add_column(c, overflow="fold")
    try:
        history, champion = reg.history(), reg.champion()
    except RegistryError as exc:
        _fail(exc)
    for h in history:
        table.add_row(h["at"], h["action"], h["version"], h["actor"], "automatic" if h["automatic"] else "manual",
                      h["gate"], h["reason"])
    console = Console()
    console.print(table)
    console.print(f"champion: {champion['version'] if champion else 'none'}")
    for problem in reg.check():
        console.print(f"[red]warning:[/] {problem}" + (" (run 'item gate repair')" if "history" in problem else ""))


@gate_group.command("repair")
@registry_option
def repair_cmd(registry: str) -> None:
    """Recover the champion's promotion line in the history when a crash lost it."""
    from components.registry import RegistryError
    reg = _registry(registry)
    try:
        added = reg.repair()
    except RegistryError as exc:
        _fail(exc)
    click.echo("recovered the champion's promotion line from its pointer" if added else "nothing to repair")


@gate_group.command("approve")
@click.argument("version")
@click.option("--reason", required=True, help="Why a human overrides the gate (recorded).")
@click.option("--package/--no-package", default=True, show_default=True,
              help="Save the version into the BentoML model store (the serving check needs it).")
@click.option("--serving-check/--no-serving-check", "check", default=True, show_default=True,
              help="Serve the packaged version on loopback and check it before promoting (as the pipeline does); "
                   "skipping it is recorded in the reason.")
@click.option("--gate-config", default="", help="Gate config whose 'serving_check' section applies "
                                                "(default: pipelines/configs/gate.yaml).")
@click.option("--bentoml-home", default="", help="BentoML store root (default: $BENTOML_HOME or ~/bentoml).")
@registry_option
def approve(version: str, reason: str, package: bool, check: bool, gate_config: str, bentoml_home: str,
            registry: str) -> None:
    """Promote VERSION to champion by hand, whatever its gate said: package it, serve it on loopback
    and check it (the pipeline's serving check), then move the champion pointer."""
    import getpass

    from components.registry import RegistryError
    reg = _registry(registry)
    if check and not package:
        _fail(click.UsageError("--no-package needs --no-serving-check: the serving check serves the packaged model"))
    try:
        v = reg.resolve(version)
        tag = None
        if package:
            from serving.store import package_registry_version
            tag = package_registry_version(reg.version_path(v), v, bentoml_home or None, approved_by=getpass.getuser())
            click.echo(f"packaged as BentoML model {tag}")
        if check:
            from components.promotion.gate import GateConfigError
            from serving.serving_check import ServingCheckConfig, ServingCheckError, serving_check
            try:
                config = ServingCheckConfig.from_gate_config(pconfig.load_gate_config(gate_config or pconfig.GATE_FILE))
            except (GateConfigError, ServingCheckError, OSError) as exc:
                _fail(exc)
            click.echo(f"serving check of {tag} on loopback ...")
            result = serving_check(tag, bentoml_home or None, config)
            if not result["passed"]:
                reg.record(v, "blocked", gate="serving check", automatic=False,
                           reason=f"manual approval refused, serving check failed: {result['reason']}")
                _fail(RegistryError(f"serving check failed, {v} not promoted: {result['reason']}"))
            click.echo(f"serving check passed: {result['reason']}")
        pointer = reg.promote(v, gate="manual", automatic=False,
                              reason=reason if check else f"{reason} (serving check skipped)")
    except RegistryError as exc:
        _fail(exc)
    click.echo(f"champion is now {pointer['version']} (manual approval by {pointer['actor']})")


@gate_group.command("reject")
@click.argument("version")
@click.option("--reason", required=True, help="Why a human blocks this version (recorded).")
@registry_option
def reject(version: str, reason: str, registry: str) -> None:
    """Block VERSION by hand; if it is the champion, the previous champion comes back."""
    from components.registry import RegistryError
    reg = _registry(registry)
    try:
        v = reg.resolve(version)
        reg.reject(v, reason=reason)
    except RegistryError as exc:
        _fail(exc)
    champion = reg.champion()
    click.echo(f"rejected {v}; champion is {champion['version'] if champion else 'none'}")


@gate_group.command("screenshot")
@click.argument("version", default="latest")
@click.option("--output", default="gate_report.png", show_default=True, help="PNG to write.")
@click.option("--chromium", default="chromium", show_default=True, help="Headless Chromium binary.")
@registry_option
def screenshot(version: str, output: str, chromium: str, registry: str) -> None:
    """Render VERSION's HTML gate report to a PNG with headless Chromium (to check it or attach it)."""
    import shutil
    import subprocess
    import tempfile

    from components.registry import RegistryError
    reg = _registry(registry)
    try:
        html = reg.version_path(reg.resolve(version)) / "gate_report.html"
    except RegistryError as exc:
        _fail(exc)
    binary = shutil.which(chromium)
    if binary is None:
        raise click.ClickException(f"{chromium!r} not found; install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1400,2600",
               f"--screenshot={click.format_filename(output)}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise click.ClickException(f"chromium failed ({proc.returncode}): {proc.stderr[-500:]}")
    click.echo(f"wrote {output}")


def _run_inputs(run: str) -> tuple[dict, dict | None, dict | None, "object", str]:
    """(eval.json, eval_details or None, catalog.json or None, validated catalog DataFrame, label) of
    a run folder (``runs/<run id>``, as ``item run`` writes) or a registry version folder."""
    from components.storage.results import EvalResult
    from components.promotion.bootstrap import load_details
    from components.steps.training import load_validated
    from pipelines.cli.runs import find_outputs

    path = Path(run)
    tasks = find_outputs(path) if path.is_dir() else {}
    if "evaluate" not in tasks or "validate-catalog" not in tasks:
        raise click.ClickException(f"--from-run {run}: not a run folder with evaluate and validate-catalog outputs "
                                   f"(expected runs/<run id>/item-training-*/evaluate/eval_json)")
    result = EvalResult.from_json(tasks["evaluate"] / "eval_json").to_dict()
    details_path = tasks["evaluate"] / "eval_details"
    details = load_details(details_path) if details_path.exists() else None
    df, meta = load_validated(str(tasks["validate-catalog"] / "validated_catalog"))
    return result, details, meta, df, f"run {path.name}"


@gate_group.command("init")
@click.option("--catalog", default=pconfig.DEFAULT_CATALOG, show_default=True,
              help="Catalog folder or gs://bucket/prefix the gate is for (with --from-run: the run's own).")
@click.option("--from-run", "from_run", default="", help="A run folder (runs/<run id>) on this catalog: write what "
              "every floor resolves to there and the verdict the new file gives it; its evaluated rows pick the slices.")
@click.option("--slice-column", default="", help="Slice the champion comparison by this catalog column "
              "(category, gender, usage, ...; category_path:N for level N of the path). Default: the first "
              "with enough items per slice.")
@click.option("--output", "-o", default="gate.yaml", show_default=True, help="Where to write the gate file.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
def init_cmd(catalog: str, from_run: str, slice_column: str, output: str, force: bool) -> None:
    """Write a gate file for CATALOG: the shipped gate's relative floors (measured against the run's own
    baselines), a slice column the catalog can be judged by, and, with --from-run, the numbers each
    floor resolves to in that run. Use it with `item run --gate-config FILE`."""
    from components.catalog import CatalogError, read_catalog
    from item_model.io import write_text_atomic
    from components.promotion.gate import evaluate_gate
    from components.promotion.init_config import catalog_with_split, render_gate_file

    out = Path(output)
    if out.exists() and not force:
        _fail(click.UsageError(f"{out} exists; pass --force to overwrite it"))
    column, _, lev = slice_column.partition(":")
    level = int(lev) if lev.isdigit() else None
    result = details = meta = None
    if from_run:
        result, details, meta, df, label = _run_inputs(from_run)
    else:
        try:
            df, label = catalog_with_split(read_catalog(catalog)), ""
        except CatalogError as exc:
            _fail(exc)
    source = (meta or {}).get("source") or catalog        # --from-run: the catalog that run validated
    try:
        text = render_gate_file(pconfig.GATE_FILE.read_text(encoding="utf-8"), df, source, column or None, level,
                                result, (lambda cfg: evaluate_gate(result, cfg, details, meta, df)) if result else None,
                                label)
    except KeyError as exc:
        _fail(click.UsageError(f"--slice-column: {exc.args[0]}"))
    write_text_atomic(out, text)
    click.echo(f"wrote {out}: " + " ".join(line[2:] for line in text.splitlines()[1:3]))
    click.echo(f"use it with: item run --catalog {source} --gate-config {out}")
