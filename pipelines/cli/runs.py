"""The one local runner of the ``item`` commands (``item run``, ``item monitor``, ``item index``): a
pipeline through ``kfp.local`` with a terminal a person can read, and its summary
(:func:`run_and_summarise`).

kfp.local (``SubprocessRunner(use_venv=False)``: tasks run in this virtual environment, nothing is
pip-installed) streams every task's executor input, its whole output and a RuntimeWarning about the
cluster image to the terminal. Here, by default:

- each task's output goes to ``<run>/<pipeline run>/<task>/log.txt`` (kfp.local's own messages to
  ``<run>/kfp_local.log``);
- the terminal shows one line per task: name, status, wall time and the key figure (the task's last
  INFO message, or what ``key_figure`` returns), with a live progress bar while a task reports
  progress (tqdm);
- a failed task stops the run with :class:`PipelineFailed`, whose message holds the step's own error
  (``$ITEM_ERROR_DIR`` records, :func:`components.steps.training.record_failure`) and the last lines
  of the failing task's log.

``verbose=True`` restores kfp.local's own stream unchanged.

kfp.local has no hook for a task's output stream, so the quiet mode wraps
``kfp.local.subprocess_task_handler.run_local_subprocess`` (the function that runs a task's
subprocess and prints its lines) for the duration of the run, and restores it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import click

#: lines of the failing task's log shown with the error
TAIL_LINES = 15
_TQDM = re.compile(r"(\d{1,3})%\|")
_INFO = re.compile(r"\[KFP Executor [^\]]* INFO\]: (.*)$")
#: INFO messages of the KFP executor itself, never a task's key figure
_KFP_OWN = ("Looking for component", "Loading KFP component", "Got executor_input", "Wrote executor output")

#: (task name, task output folder, the task's log lines) -> the key figure shown on its line ("" = none)
KeyFigure = Callable[[str, Path, list[str]], str]


class PipelineFailed(click.ClickException):
    """A task of a local run failed; the message names the step, its error and its last log lines."""
    exit_code = 1


class RunFailed(click.ClickException):
    """An ``item`` command's run stopped (exit code 1); the message says where and why."""
    exit_code = 1


def _task_dir(command: list[str]) -> Path | None:
    """The task's output folder, from the ``--executor_input`` JSON kfp.local puts on its command line."""
    for i, part in enumerate(command[:-1]):
        if part == "--executor_input":
            try:
                return Path(json.loads(command[i + 1])["outputs"]["outputFile"]).parent
            except (ValueError, KeyError, TypeError):
                return None
    return None


def _fmt_time(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.1f}s"


def task_name(task_dir: Path) -> str:
    """A task's name from its kfp.local output folder: the folder's name, with the iteration appended
    inside a ``dsl.ParallelFor`` (``for-loop-2-iteration-1/embed-shard`` -> ``embed-shard-1``)."""
    parent = task_dir.parent.name
    if parent.startswith("for-loop-") and "-iteration-" in parent:
        return f"{task_dir.name}-{parent.rsplit('-', 1)[-1]}"
    return task_dir.name


def task_folders(pipeline_run: Path) -> dict[str, Path]:
    """``{task name: output folder}`` of one kfp.local pipeline run folder, loop iterations included
    (:func:`task_name`)."""
    out = {}
    for t in sorted(p for p in pipeline_run.iterdir() if p.is_dir()):
        if t.name.startswith("for-loop-") and "-iteration-" in t.name:
            out.update({task_name(sub): sub for sub in sorted(t.iterdir()) if sub.is_dir()})
        else:
            out[t.name] = t
    return out


class _QuietTasks:
    """Replacement of kfp.local's ``run_local_subprocess``: the task's lines go to its log.txt, the
    terminal gets one line per task and a progress bar."""

    def __init__(self, console, key_figure: KeyFigure | None):
        self.console, self.key_figure = console, key_figure
        self.failed: Path | None = None
        self.tasks: list[dict] = []

    def __call__(self, full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        from rich.markup import escape
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        task_dir = _task_dir(full_command) or Path(os.environ.get("ITEM_ERROR_DIR", ".")).parent / "task"
        task_dir.mkdir(parents=True, exist_ok=True)
        name = task_name(task_dir)
        env = {**os.environ, **(env_vars or {})}
        lines: list[str] = []
        t0 = time.perf_counter()
        progress = Progress(TextColumn(f"  {name:22s}"), BarColumn(bar_width=24), TextColumn("{task.percentage:>3.0f}%"),
                            TimeElapsedColumn(), console=self.console, transient=True,
                            disable=not self.console.is_terminal)
        with open(task_dir / "log.txt", "w", encoding="utf-8") as log, progress, \
                subprocess.Popen(full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1, env=env) as proc:
            bar = progress.add_task(name, total=100)
            for line in iter(proc.stdout.readline, ""):
                log.write(line)
                lines.append(line.rstrip("\n"))
                if len(lines) > 2000:
                    del lines[:1000]
                m = _TQDM.search(line)
                if m:
                    progress.update(bar, completed=min(100, int(m.group(1))))
            code = proc.wait()
        wall = time.perf_counter() - t0
        status = "ok" if code == 0 else "FAILED"
        figure = ""
        if code == 0:
            with contextlib.suppress(Exception):
                figure = self.key_figure(name, task_dir, lines) if self.key_figure else ""
            if not figure:
                infos = [m.group(1) for m in map(_INFO.search, lines) if m and not m.group(1).startswith(_KFP_OWN)]
                figure = infos[-1] if infos else ""
        else:
            self.failed = task_dir
        width = max(40, self.console.width)
        head = f"  {name:22s} {status:6s} {_fmt_time(wall):>7s}  "
        room = width - len(head) - 1
        figure = figure if len(figure) <= room else figure[:max(0, room - 1)] + "…"
        style = "green" if code == 0 else "bold red"
        self.console.print(f"[{style}]{head}[/]{escape(figure)}", highlight=False, markup=True, soft_wrap=False)
        self.tasks.append({"task": name, "status": status, "wall_time_s": round(wall, 1), "key_figure": figure})
        return code


def run_locally(pipeline: Callable, arguments: dict, run_dir: Path, *, what: str = "pipeline",
                verbose: bool = False, key_figure: KeyFigure | None = None) -> float:
    """Run ``pipeline(**arguments)`` through ``kfp.local`` with task outputs under ``run_dir``.

    Args:
        pipeline: a ``@dsl.pipeline`` function.
        arguments: its parameters.
        run_dir: the local run folder (created); kfp.local's pipeline-run folders go inside it.
        what: the pipeline's name in error messages ("training pipeline").
        verbose: stream kfp.local's own output unchanged instead of one line per task.
        key_figure: the figure shown on a finished task's line (default: its last INFO message).

    Returns:
        wall time of the run in seconds.

    Raises:
        PipelineFailed: a task failed (its step's error and the last lines of its log).
    """
    import logging

    from kfp import local
    from kfp.local import subprocess_task_handler as handler
    from rich.console import Console

    run_dir.mkdir(parents=True, exist_ok=True)
    error_dir = run_dir / "errors"
    os.environ["ITEM_ERROR_DIR"] = str(error_dir)
    # tasks run `python3` replaced by this interpreter; keep this venv's tools first on PATH too
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # a model with CNN image tokens computes each photo's features once per run: training, evaluation
    # and the index tasks share this folder (item_model.feature_cache), removed when the run ends
    from item_model.feature_cache import CACHE_DIR_ENV
    own_cache = CACHE_DIR_ENV not in os.environ
    if own_cache:
        os.environ[CACHE_DIR_ENV] = str(run_dir / "image-feature-cache")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir), raise_on_error=True)
    console = Console(file=sys.stdout, highlight=False)
    quiet = None if verbose else _QuietTasks(console, key_figure)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if own_cache:
            stack.callback(shutil.rmtree, os.environ[CACHE_DIR_ENV], True)
            stack.callback(os.environ.pop, CACHE_DIR_ENV, None)
        if quiet is not None:
            original = handler.run_local_subprocess
            handler.run_local_subprocess = quiet
            stack.callback(setattr, handler, "run_local_subprocess", original)
            sink = stack.enter_context(open(run_dir / "kfp_local.log", "a", encoding="utf-8"))
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(contextlib.redirect_stderr(sink))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore", RuntimeWarning)     # kfp.local: "non-Python base image" per task
            root = logging.getLogger()                          # the orchestrator's own messages: to the sink
            saved = root.handlers[:]
            root.handlers[:] = [logging.StreamHandler(sink)]
            stack.callback(lambda: root.handlers.__setitem__(slice(None), saved))
        try:
            pipeline(**arguments)
        except Exception as exc:  # kfp.local raises RuntimeError naming the failed task
            raise PipelineFailed(_failure_message(what, run_dir, error_dir, quiet, exc)) from exc
    if quiet is not None:
        from item_model.io import write_json_atomic
        write_json_atomic(run_dir / "tasks.json", quiet.tasks)
    return time.perf_counter() - t0


def _failure_message(what: str, run_dir: Path, error_dir: Path, quiet: _QuietTasks | None, exc: Exception) -> str:
    messages = [json.loads(p.read_text()) for p in sorted(error_dir.glob("*.json"))]
    detail = "; ".join(f"{m['step']}: {m['error']}: {m['message']}" for m in messages) or str(exc)
    text = f"{what} stopped: {detail}"
    if quiet is not None and quiet.failed is not None:
        log = quiet.failed / "log.txt"
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-TAIL_LINES:] if log.exists() else []
        text += f"\nlast lines of {log}:\n" + "\n".join("  | " + line[:200] for line in tail)
    return text + f"\nTask outputs: {run_dir}"




def find_outputs(run_dir: Path) -> dict[str, Path]:
    """``{task name: task output folder}`` of the (single) training pipeline run under ``run_dir``
    (``runs/<run id>``); {} when there is none."""
    runs = sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and p.name.startswith("item-training-"))
    return task_folders(runs[-1]) if runs else {}


def new_run_id(suffix: str) -> str:
    """A run folder name: the UTC time (``YYYYmmdd-HHMMSS``) and what ran (``default``, ``monitor``, ...)."""
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{suffix}"


def run_and_summarise(pipeline: Callable, arguments: dict, run_dir: Path, *, what: str,
                      summarise: Callable[[Path], dict], key_figure: KeyFigure | None = None,
                      verbose: bool = False, on_failure: str = "") -> dict:
    """Run a pipeline locally (:func:`run_locally`) and write its summary: what every ``item`` command
    that runs a pipeline does.

    Args:
        summarise: ``run_dir -> dict`` of the pipeline's own results (its artifacts' paths, metrics).
        on_failure: a sentence added to the failure message ("Nothing was packaged.").

    Returns:
        ``{"status": "succeeded", "run_dir", "wall_time_s", **summarise(run_dir)}``, also written
        atomically to ``run_dir/summary.json``.

    Raises:
        RunFailed: a task failed (the step's own error and the last lines of its log).
    """
    from item_model.io import write_json_atomic
    try:
        wall = run_locally(pipeline, arguments, run_dir, what=what, verbose=verbose, key_figure=key_figure)
    except PipelineFailed as exc:
        message = exc.message.replace("\nTask outputs:", f"\n{on_failure} Task outputs:") if on_failure else exc.message
        raise RunFailed(message) from exc
    summary = {"status": "succeeded", "run_dir": str(run_dir), "wall_time_s": round(wall, 1), **summarise(run_dir)}
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


__all__ = ["run_locally", "run_and_summarise", "new_run_id", "find_outputs", "task_folders", "PipelineFailed",
           "RunFailed", "KeyFigure", "TAIL_LINES"]
