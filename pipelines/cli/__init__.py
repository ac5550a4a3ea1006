"""The ``item`` command line: run, compile and submit the ITEm pipelines, review the gate, serve, monitor.

One module a command group: :mod:`~pipelines.cli.run` (``item run``, ``item validate``),
:mod:`~pipelines.cli.compile` (``item compile``, ``item submit``), :mod:`~pipelines.cli.gate`
(``item gate ...``), :mod:`~pipelines.cli.index` (``item index``), :mod:`~pipelines.cli.monitor`
(``item monitor``), :mod:`~pipelines.cli.serve` (``item serve``); :mod:`~pipelines.cli.runs` runs a
pipeline through ``kfp.local`` and writes its summary (one helper for every command that runs one),
:mod:`~pipelines.cli.tables` prints summaries and tables that fit the terminal.

Locations (catalog, registry, output folder) are local paths or ``gs://bucket/prefix`` URIs
(:mod:`components.storage`).
"""

from __future__ import annotations

import logging

import click

from components.steps.environment import set_offline_defaults

set_offline_defaults()

from pipelines.cli.compile import compile_cmd, submit_cmd  # noqa: E402
from pipelines.cli.gate import gate_group  # noqa: E402
from pipelines.cli.index import index_cmd  # noqa: E402
from pipelines.cli.monitor import monitor_cmd  # noqa: E402
from pipelines.cli.run import run_cmd, validate_cmd  # noqa: E402
from pipelines.cli.serve import serve  # noqa: E402


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


for command in (run_cmd, validate_cmd, compile_cmd, submit_cmd, gate_group, serve, monitor_cmd, index_cmd):
    main.add_command(command)

if __name__ == "__main__":
    main()
