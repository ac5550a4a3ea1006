"""Drift outputs: the Evidently HTML report (one page, every tested modality), the one-screen terminal
summary, and the retraining recommendation (JSON + Markdown). The JSON summary itself is the dict
:func:`monitoring.steps.drift_report_step` returns and writes."""

from __future__ import annotations

import html
from pathlib import Path

from item_model.io import write_text_atomic

VERDICT = {True: "DRIFT", False: "no drift"}


def _header_html(summary: dict) -> str:
    rows = []
    for modality, r in summary["modalities"].items():
        if r["status"] != "tested":
            rows.append(f"<tr><td>{modality}</td><td colspan=6>skipped: {html.escape(r['reason'])}</td></tr>")
            continue
        colour = "#c0392b" if r["drift"] else "#1e8449"
        rows.append(f"<tr><td>{modality}</td><td>{r['n_current']}</td><td>{r['n_reference']}</td>"
                    f"<td>{r['score']:.4g}</td><td>{r['threshold']:.4g}</td>"
                    f"<td>{r['calibration']['null_mean']:.3g}</td>"
                    f"<td style='color:{colour};font-weight:bold'>{VERDICT[r['drift']]}</td></tr>")
    verdict = "DRIFT in " + ", ".join(summary["drifted_modalities"]) if summary["drift"] else "no drift"
    method = summary["method"]
    current = summary.get("current", {})
    return (
        "<div style='font-family:sans-serif;margin:16px 24px'>"
        f"<h2>ITEm embedding drift: {html.escape(verdict)}</h2>"
        f"<p>model <code>{html.escape(str(summary.get('model_tag')))}</code> &middot; current "
        f"<code>{html.escape(str(current.get('source')))}</code> ({html.escape(str(current.get('source_type')))})</p>"
        "<table border=1 cellpadding=4 style='border-collapse:collapse'>"
        "<tr><th>modality</th><th>current rows</th><th>reference rows</th><th>score</th>"
        "<th>calibrated threshold</th><th>null mean</th><th>verdict</th></tr>" + "".join(rows) + "</table>"
        f"<p>score: {html.escape(method['score'])} ({html.escape(method['evidently'])})<br>"
        f"threshold: {html.escape(method['threshold'])}. Evidently's own verdict below uses this threshold.</p>"
        "</div>")


def write_html(snapshots: dict, summary: dict, path: str | Path) -> Path:
    """One standalone HTML page: a header table (score, calibrated threshold and verdict per
    modality) above the Evidently widgets of every tested modality (drift counter + t-SNE density of
    reference vs current).

    Args:
        snapshots: ``{modality: evidently Snapshot}`` (one ``EmbeddingsDrift`` report each; a
            modality's own report because a traffic window holds each modality on its own rows).
    """
    from evidently.core.metric_types import render_widgets

    widgets = [w for snap in snapshots.values() for result in snap.metric_results.values()
               for w in result.get_widgets()]
    page = render_widgets(widgets, as_iframe=False)
    head = _header_html(summary)
    page = page.replace("<body>", "<body>" + head, 1) if "<body>" in page else head + page
    write_text_atomic(path, page)
    return Path(path)


def summary_lines(summary: dict) -> list[str]:
    """The terminal summary as plain lines (at most ~16: fits one screen)."""
    verdict = ("DRIFT in " + ", ".join(summary["drifted_modalities"])) if summary["drift"] else "no drift"
    cur = summary.get("current", {})
    lines = [f"ITEm embedding drift: {verdict}",
             f"model {summary.get('model_tag')}   current {cur.get('source')} ({cur.get('source_type')})",
             f"{'modality':9s}{'n cur':>7s}{'n ref':>7s}{'score':>12s}{'threshold':>12s}{'null mean':>11s}  verdict",
             "-" * 70]
    for modality, r in summary["modalities"].items():
        if r["status"] != "tested":
            lines.append(f"{modality:9s}skipped: {r['reason']}"[:110])
            continue
        cal = r["calibration"]
        lines.append(f"{modality:9s}{r['n_current']:7d}{r['n_reference']:7d}{r['score']:12.4g}{r['threshold']:12.4g}"
                     f"{cal['null_mean']:11.3g}  {VERDICT[r['drift']]}"
                     f"{'' if cal['reused'] else '  (calibrated now)'}")
    m = summary["method"]
    lines += ["-" * 70, f"method    {m['name']}: {m['score']}", f"threshold {m['threshold']}"]
    for key in ("html_report", "calibration_file"):
        if summary.get(key):
            lines.append(f"{key.replace('_', ' '):18s}{summary[key]}")
    return lines


def print_summary(summary: dict, console=None) -> None:
    """Print :func:`summary_lines` with colour (rich)."""
    from rich.console import Console

    console = console or Console()
    for i, line in enumerate(summary_lines(summary)):
        style = None
        if i == 0:
            style = "bold red" if summary["drift"] else "bold green"
        elif line.rstrip().endswith("DRIFT") or "DRIFT  (" in line:
            style = "red"
        console.print(line, style=style, highlight=False, soft_wrap=True)


def recommendation(summary: dict, retrain: bool = False, catalog: str = "", profile: str = "default") -> dict:
    """The retraining recommendation of a drift summary.

    Returns:
        ``{"recommend_retraining", "model_tag", "drifted_modalities", "evidence": {modality: {score,
        threshold, ratio}}, "reasons", "action", "retrain_requested", "catalog", "command"}``.
    """
    evidence = {m: {"score": r["score"], "threshold": r["threshold"],
                    "ratio": r["score"] / r["threshold"] if r["threshold"] > 0 else None}
                for m, r in summary["modalities"].items() if r["status"] == "tested"}
    drifted = summary["drifted_modalities"]
    reasons = []
    if "joint" in drifted:
        reasons.append("the product embedding (joint) of the current window differs from the champion's catalog")
    if "text" in drifted:
        reasons.append("titles moved: the text-only embedding drifted")
    if "image" in drifted:
        reasons.append("photos moved: the image-only embedding drifted")
    command = f"item run --catalog {catalog} --profile {profile}" if catalog else \
        "item run --catalog <catalog holding the new listings> --profile default"
    return {"recommend_retraining": bool(drifted), "model_tag": summary.get("model_tag"),
            "drifted_modalities": drifted, "evidence": evidence, "reasons": reasons,
            "action": ("retrain the champion on a catalog that includes the new listings, then let the gate "
                       "compare it with the champion") if drifted else "none",
            "retrain_requested": bool(retrain), "catalog": catalog or None, "command": command,
            "current": summary.get("current", {}).get("source"), "html_report": summary.get("html_report")}


def recommendation_markdown(rec: dict) -> str:
    """The recommendation as a short Markdown document."""
    lines = [f"# Retraining recommendation for `{rec['model_tag']}`", "",
             f"**{'Retrain' if rec['recommend_retraining'] else 'No retraining needed'}**: drift in "
             f"{', '.join(rec['drifted_modalities']) or 'no modality'} of the window `{rec['current']}`.", "",
             "| modality | score | calibrated threshold | score / threshold |", "|---|---|---|---|"]
    for m, e in rec["evidence"].items():
        ratio = f"{e['ratio']:.1f}" if e["ratio"] is not None else "n/a"
        lines.append(f"| {m} | {e['score']:.4g} | {e['threshold']:.4g} | {ratio} |")
    lines += [""] + [f"- {r}" for r in rec["reasons"]] + ["", f"Action: {rec['action']}.", "",
                                                          f"Command: `{rec['command']}`", ""]
    lines.append("The training pipeline was run by this monitoring run (`--retrain`)." if rec["retrain_requested"]
                 else "Not run automatically: pass `--retrain` to `item monitor` to run it.")
    if rec.get("html_report"):
        lines += ["", f"Evidently report: `{rec['html_report']}`"]
    return "\n".join(lines) + "\n"
