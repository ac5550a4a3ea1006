"""What the ``item`` commands print: the run summary (metrics table, balance and title-decides lines,
the promotion gate) and the gate table ``item gate show`` reuses."""

from __future__ import annotations

from components import storage


def print_summary(summary: dict, console=None) -> None:
    """One screen: metrics beside baselines, the gate's verdict, the artifacts' paths (to ``console``, a
    ``rich.console.Console``; default: the terminal, at its width)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    models = summary.get("eval", {}).get("models", {})
    table = Table(title=f"ITEm vs baselines ({summary.get('eval', {}).get('n_listings', '?')} listings; "
                        f"search over all, probe on the test split)")
    cols = {"category_accuracy": "cat. acc", "category_macro_f1": "macro-F1", "recall@1": "R@1",
            "recall@10": "R@10", "mAP": "mAP"}
    table.add_column("embedding", overflow="fold")          # names wrap; numbers are never cut
    for header in cols.values():
        table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    for name, m in models.items():
        table.add_row(name, *(f"{m[c]:.4f}" for c in cols), style="bold" if name == "item" else None)
    console.print(table)
    for line in check_lines(models):
        console.print(line, highlight=False)
    blessing = summary.get("blessing", {})
    console.print(blessing_table(blessing, notes="failed"))
    console.print(f"wall time        {summary['wall_time_s']:.0f} s")
    for key in ("data_docs", "quarantine", "eval_json", "gate_report", "gate_report_html", "training_curve",
                "model_dir", "registry_version"):
        console.print(f"{key:16s} {summary.get(key)}", soft_wrap=True)
    console.print(f"{'bento model':16s} {summary.get('bento_model') or '(not packaged: not blessed)'}", soft_wrap=True)
    check = summary.get("serving_check")
    if check:
        console.print(f"{'serving check':16s} {'passed' if check['passed'] else 'FAILED'}: {check['reason']}",
                      soft_wrap=True, highlight=False)
    if summary.get("blessing", {}).get("blessed"):
        console.print(f"{'champion':16s} " + ("promoted to this run's version" if summary.get("promoted")
                                             else "unchanged (not promoted)"), highlight=False)
    console.print(f"{'summary':16s} {storage.join(summary['run_dir'], 'summary.json')}", soft_wrap=True)


def check_lines(models: dict) -> list[str]:
    """Up to two summary lines (each under 100 columns) under the metrics table: the served vector's
    modality balance (item's top-10 overlap with its text-only / image-only embeddings, and the
    reading of :func:`components.promotion.gate.balance_reading`) and the title-decides Recall@1 of item and
    the text/pixel baselines; a line is left out when eval.json lacks its metrics."""
    from components.promotion.gate import balance_reading, balance_values, modality_gains
    lines = []
    balance = balance_values({"models": models})
    if balance is not None:
        t, i, _ = balance
        lines.append(f"modality balance (top-10 overlap) text {t:.2f}, image {i:.2f}: "
                     f"{balance_reading(t, i, modality_gains({'models': models})).split(':')[0].split(',')[0]}")
    r1 = {n: models.get(n, {}).get("title_decides_recall@1") for n in
          ("item", "baseline_text_minilm", "baseline_image_pixels")}
    if r1["item"] is not None:
        others = ", ".join(f"{label} {r1[n]:.4f}" for label, n in (("text", "baseline_text_minilm"),
                                                                    ("pixels", "baseline_image_pixels"))
                           if r1[n] is not None)
        lines.append(f"title-decides R@1 item {r1['item']:.4f}" + (f" (baselines: {others})" if others else ""))
    return lines


def blessing_table(blessing: dict, title: str = "Promotion gate", notes: str = "all"):
    """A rich table of every gate criterion: criterion, metric, value, threshold, verdict, note.

    Args:
        notes: ``"all"``: every criterion's note (why it exists, and what a relative floor resolved
            from, for ``item gate show``); ``"failed"``: only the notes of failed criteria and of the
            significance and slice tests (the run summary).
    """
    from rich.table import Table
    table = Table(title=f"{title}: " + ("[green]BLESSED[/]" if blessing.get("blessed") else "[red]NOT BLESSED[/]"))
    # on a narrow terminal the names and the note wrap; value, threshold and verdict are never cut
    for c in ("criterion", "metric"):
        table.add_column(c, overflow="fold")
    for c, width in (("value", 7), ("threshold", 9), ("verdict", 7)):
        table.add_column(c, no_wrap=True, min_width=width)
    table.add_column("note", overflow="fold", ratio=1)
    for r in blessing.get("criteria", []):
        note = r["message"] if (not r["passed"] or r.get("criterion") in ("significance", "slice-regression")) else \
            (r.get("reason", "") if notes == "all" else "")
        if r["passed"] and r.get("bound", {}).get("kind") == "relative" and notes == "all":
            note = f"floor = {r['bound']['formula']}; {note}"
        table.add_row(r.get("criterion", "floor"), r["metric"], "missing" if r["value"] is None else f"{r['value']:.4f}",
                      "-" if r["threshold"] is None else f"{r['comparison']} {r['threshold']:.4f}",
                      "[green]pass[/]" if r["passed"] else "[red]FAIL[/]", note)
    return table
