"""A self-contained HTML gate report (images inlined as data URIs): the verdict and every criterion
(relative floors with what they resolved from), the worst slices against the champion with their
intervals and examples, metric bars with bootstrap confidence intervals for the challenger, the champion and the baselines,
retrieval examples where the challenger wins and loses against the champion, the worst leaf
categories, the modality balance of the served vector and the title-decides search."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd

from components.promotion.gate import (CHECK_TABLES, balance_reading, balance_values, check_models, modality_gains,
                   readout_line)
from components.promotion.config import KNOWN_MODELS
from components.promotion.bootstrap import bootstrap_ci

BAR_METRICS = ("category_accuracy", "category_macro_f1", "recall@1", "recall@10", "mAP")
BAR_MODELS = KNOWN_MODELS


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def metric_bars(eval_result: dict, details: dict | None, n_resamples: int = 300) -> str:
    """Grouped bar chart (one panel per metric) with 95 % bootstrap intervals; a PNG data URI."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in BAR_MODELS if m in eval_result.get("models", {})]
    fig, axes = plt.subplots(1, len(BAR_METRICS), figsize=(3.2 * len(BAR_METRICS), 3.6), sharey=False)
    colors = {"item": "#1f77b4", "champion": "#ff7f0e"}
    for ax, metric in zip(axes, BAR_METRICS):
        values = [eval_result["models"][m].get(metric, np.nan) for m in models]
        err = None
        if details:
            lo_hi = [bootstrap_ci(details[m], metric, n_resamples) if m in details else (v, v)
                     for m, v in zip(models, values)]
            err = np.array([[v - lo for v, (lo, _) in zip(values, lo_hi)], [hi - v for v, (_, hi) in zip(values, lo_hi)]])
            err = np.clip(err, 0, None)
        ax.bar(range(len(models)), values, yerr=err, capsize=3,
               color=[colors.get(m, "#9e9e9e") for m in models])
        ax.set_xticks(range(len(models)), [m.replace("baseline_", "b:").replace("item_", "item:") for m in models],
                      rotation=60, ha="right", fontsize=8)
        finite = [v for v in values if np.isfinite(v)]
        ax.set_ylim(max(0.0, min(finite) - 0.1) if finite else 0, 1.0)
        ax.set_title(metric, fontsize=10)
    fig.tight_layout()
    uri = _png_uri(fig)
    plt.close(fig)
    return uri


def _img(data: bytes | None, title: str, hit: bool | None = None) -> str:
    border = "" if hit is None else (" hit" if hit else " miss")
    src = "data:image/jpeg;base64," + base64.b64encode(data).decode() if data else ""
    return (f'<figure class="thumb{border}"><img src="{src}" alt=""/>'
            f'<figcaption>{html.escape(str(title))[:60]}</figcaption></figure>')


def retrieval_examples(df: pd.DataFrame, details: dict, other: str, n: int = 4) -> str:
    """HTML of wins (challenger finds the product at rank 1, ``other`` does not) and losses (the reverse):
    the query's photo and title, then each model's top 5 with hits marked."""
    if "item" not in details or other not in details:
        return "<p>No per-query details to compare.</p>"
    a, b = details["item"]["retrieval"], details[other]["retrieval"]
    first_a, first_b = a["first_rank"], b["first_rank"]
    groups = df["group_id"].fillna(-1).astype("int64").to_numpy()
    out = []
    for label, sel in (("wins", (first_a == 1) & (first_b > 1)), ("losses", (first_a > 1) & (first_b == 1))):
        idx = np.flatnonzero(sel)[:n]
        out.append(f"<h3>{label.capitalize()} against {html.escape(other)} ({int(sel.sum())} queries)</h3>")
        if len(idx) == 0:
            out.append("<p>none</p>")
        for i in idx:
            q = int(a["query_index"][i])
            row = df.iloc[q]
            cells = [f'<div class="query">{_img(row["image_bytes"], row["title"])}<p>query</p></div>']
            for name, res in (("challenger", a), (other, b)):
                thumbs = "".join(_img(df.iloc[j]["image_bytes"], df.iloc[j]["title"], bool(groups[j] == groups[q]))
                                 for j in res["top5"][i])
                cells.append(f'<div class="results"><p>{html.escape(name)} top 5 '
                             f'(first hit at rank {int(res["first_rank"][i])})</p>{thumbs}</div>')
            out.append(f'<div class="example">{"".join(cells)}</div>')
    return "\n".join(out)


def worst_categories(details: dict, n: int = 10) -> str:
    """HTML table of the challenger's ``n`` leaf categories with the lowest probe accuracy."""
    probe = details.get("item", {}).get("probe")
    if probe is None:
        return "<p>No probe details.</p>"
    frame = pd.DataFrame({"category": probe["y_true"], "correct": probe["y_true"] == probe["y_pred"]})
    per = frame.groupby("category")["correct"].agg(["mean", "size"]).sort_values(["mean", "size"]).head(n)
    rows = "".join(f"<tr><td>{html.escape(str(c))}</td><td>{m:.3f}</td><td>{int(s)}</td></tr>"
                   for c, (m, s) in per.iterrows())
    return f"<table><tr><th>leaf category</th><th>accuracy</th><th>test listings</th></tr>{rows}</table>"


def _interval_svg(lo: float, hi: float, delta: float, scale: float) -> str:
    """A small inline SVG of a difference's interval around 0 (x axis -scale .. +scale)."""
    def x(v: float) -> float:
        return 100 + 96 * max(-1.0, min(1.0, v / scale))
    color = "#b00020" if hi < 0 else "#1a7f1a" if lo > 0 else "#555"
    return (f'<svg width="200" height="14"><line x1="100" y1="0" x2="100" y2="14" stroke="#aaa"/>'
            f'<line x1="{x(lo):.1f}" y1="7" x2="{x(hi):.1f}" y2="7" stroke="{color}" stroke-width="3"/>'
            f'<circle cx="{x(delta):.1f}" cy="7" r="3" fill="{color}"/></svg>')


def _slice_examples(df: pd.DataFrame, details: dict, slices: dict, r: dict, n: int = 4) -> str:
    """Listings of slice ``r`` where the challenger fails and the champion succeeds (thumbnails)."""
    from components.promotion.slices import item_slices, slice_labels
    labels = slice_labels(df, slices["column"], slices.get("level"))
    a, b = details["item"], details["champion"]
    in_slice = item_slices(a, r["metric"], labels) == r["slice"]
    if r["metric"] == "category_accuracy":
        pa, pb = a["probe"], b["probe"]
        sel = np.flatnonzero(in_slice & (pa["y_pred"] != pa["y_true"]) & (pb["y_pred"] == pb["y_true"]))[:n]
        cells = [_img(df.iloc[int(pa["test_index"][i])]["image_bytes"],
                      f"challenger: {pa['y_pred'][i]} | {df.iloc[int(pa['test_index'][i])]['title']}", False)
                 for i in sel]
    else:
        ra, rb = a["retrieval"], b["retrieval"]
        sel = np.flatnonzero(in_slice & (ra["first_rank"] > 1) & (rb["first_rank"] == 1))[:n]
        cells = [_img(df.iloc[int(ra["query_index"][i])]["image_bytes"],
                      f"first hit at rank {int(ra['first_rank'][i])} | {df.iloc[int(ra['query_index'][i])]['title']}",
                      False) for i in sel]
    return f'<div class="results">{"".join(cells)}</div>' if cells else "<p>no listing the champion gets right and the challenger wrong</p>"


def slices_html(blessing: dict, details: dict | None, df: pd.DataFrame | None, n: int = 8) -> str:
    """HTML of the gate's sliced comparison (blessing ``slices``): per metric the ``n`` worst judged
    slices (worst first) with challenger, champion, delta and its interval drawn around 0, regressed
    slices marked; examples for each regressed slice (or the worst one when it dropped) when details and
    catalog are given."""
    slices = blessing.get("slices")
    if not slices or not slices.get("by_metric"):
        return "<p>Not compared (no champion yet, or no slices section in the gate config).</p>"
    level = f" level {slices['level']}" if slices.get("level") else ""
    out = [f"<p>Challenger - champion in each {html.escape(slices['column'] + level)} slice; paired bootstrap "
           f"at {slices['confidence']:g}; a slice of at least {slices['min_queries']} items blocks when it drops by "
           f"more than {slices['tolerance']:g} with its interval below 0.</p>"]
    from components.promotion.slices import metrics_worst_first
    for metric, comp in metrics_worst_first(slices):
        judged = [r for r in comp if r["judged"]]
        scale = max([0.05] + [abs(v) for r in judged[:n] for v in (r["ci_low"], r["ci_high"])])
        rows = "".join(
            f'<tr class="{"fail" if r["regressed"] else "pass"}"><td>{html.escape(r["slice"])}</td><td>{r["n"]}</td>'
            f'<td>{r["champion"]:.4f}</td><td>{r["challenger"]:.4f}</td><td>{r["delta"]:+.4f}</td>'
            f'<td>[{r["ci_low"]:+.4f}, {r["ci_high"]:+.4f}] {_interval_svg(r["ci_low"], r["ci_high"], r["delta"], scale)}</td>'
            f'<td>{"REGRESSED" if r["regressed"] else "ok"}</td></tr>' for r in judged[:n])
        out.append(f"<h3>{html.escape(metric)}: {len(judged)} slices judged, {len(comp) - len(judged)} too small</h3>"
                   "<table><tr><th>slice</th><th>items</th><th>champion</th><th>challenger</th><th>delta</th>"
                   f"<th>interval</th><th>verdict</th></tr>{rows}</table>")
        shown = [r for r in judged if r["regressed"]] or [r for r in judged[:1] if r["delta"] < 0]
        if details and df is not None and "champion" in details:
            for r in shown[:3]:
                out.append(f"<p>{html.escape(r['slice'])}: where the challenger fails and the champion does not</p>"
                           + _slice_examples(df, details, slices, r))
    return "\n".join(out)


def modality_balance_html(eval_result: dict) -> str:
    """HTML "modality balance" section body: item's top-10 overlaps with its text-only and
    image-only embeddings as two bars and a one-line reading (:func:`components.promotion.gate.balance_reading`);
    a note when eval.json has no balance (the evaluate step ran without the modality ablation); then
    the served vector's read-out (:func:`components.promotion.gate.readout_line`) when recorded."""
    balance = balance_values(eval_result)
    readout = f"<p>{html.escape(readout_line(eval_result))}</p>" if readout_line(eval_result) else ""
    if balance is None:
        return "<p>Not measured (the evaluation ran without the modality ablation).</p>" + readout
    t, i, n = balance

    def bar(label: str, v: float) -> str:
        return (f'<div class="bal"><span>{html.escape(label)}</span><div class="track">'
                f'<div class="fill" style="width:{100 * min(max(v, 0.0), 1.0):.1f}%"></div></div>'
                f'<b>{v:.3f}</b></div>')

    return (f"<p>Share of the served (joint) vector's top-10 neighbours that are also top-10 "
            f"neighbours of ITEm's own single-modality embedding ({n or '?'} sampled catalog listings "
            f"as queries, the whole catalog searched).</p>"
            + bar("text-only", t) + bar("image-only", i)
            + f"<p><b>Reading:</b> the joint vector {html.escape(balance_reading(t, i, modality_gains(eval_result)))}.</p>"
            + readout)


def check_html(eval_result: dict, prefix: str = "title_decides") -> str:
    """HTML table of every model's metrics on one same-product check (``prefix``: ``title_decides``,
    :mod:`item_model.title_decides`, or ``titles_disagree``, :mod:`item_model.titles_disagree`; what it
    measures from :data:`components.promotion.gate.CHECK_TABLES`), or a note when eval.json has none."""
    models = eval_result.get("models", {})
    blurb = next(b for p, _, b in CHECK_TABLES if p == prefix)
    shown = check_models(models, prefix)
    if not shown:
        return "<p>Not measured: the evaluated catalog has no qualifying group (or the eval.json predates the check).</p>"
    rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{models[m][f'{prefix}_recall@1']:.4f}</td>"
                   f"<td>{models[m][f'{prefix}_recall@10']:.4f}</td><td>{models[m][f'{prefix}_mAP']:.4f}</td>"
                   f"<td>{int(models[m][f'{prefix}_n_queries'])}</td></tr>" for m in shown)
    return (f"<p>{html.escape(blurb)}</p>"
            "<table><tr><th>model</th><th>Recall@1</th><th>Recall@10</th><th>mAP</th><th>queries</th></tr>"
            f"{rows}</table>")


def _note(r: dict) -> str:
    """A criterion's note: its message, with a relative floor's formula (what its threshold resolved from)."""
    if r.get("bound", {}).get("kind") == "relative" and "floor =" not in r["message"]:
        return f"{r['message']} (floor = {r['bound']['formula']})"
    return r["message"]


def render_gate_report(blessing: dict, eval_result: dict, details: dict | None, df: pd.DataFrame | None,
                       title: str = "ITEm promotion gate") -> str:
    """The whole report as one HTML string (no external resources)."""
    verdict = "BLESSED" if blessing["blessed"] else "NOT BLESSED"
    rows = []
    for r in blessing["criteria"]:
        value = "missing" if r["value"] is None else f"{r['value']:.4f}"
        threshold = "-" if r["threshold"] is None else f"{r['comparison']} {r['threshold']:.4f}"
        rows.append(f'<tr class="{"pass" if r["passed"] else "fail"}"><td>{html.escape(r.get("criterion", ""))}</td>'
                    f'<td><code>{html.escape(r["metric"])}</code></td><td>{value}</td><td>{html.escape(threshold)}</td>'
                    f'<td>{"pass" if r["passed"] else "FAIL"}</td><td>{html.escape(_note(r))}</td></tr>')
    champion = eval_result.get("champion", {}).get("version")
    other = "champion" if details and "champion" in details else "baseline_text_minilm"
    sections = [
        f"<h1>{html.escape(title)}: <span class=\"{'pass' if blessing['blessed'] else 'fail'}\">{verdict}</span></h1>",
        f"<p>Catalog {html.escape(str(eval_result.get('catalog_source', '')))}, fingerprint "
        f"<code>{str(eval_result.get('catalog_fingerprint', ''))[:16]}</code>, {eval_result.get('n_listings', '?')} "
        f"listings. Champion: {html.escape(champion or 'none yet')}.</p>",
        "<h2>Criteria</h2><table><tr><th>criterion</th><th>metric</th><th>value</th><th>threshold</th>"
        f"<th>verdict</th><th>note</th></tr>{''.join(rows)}</table>",
        "<h2>Worst slices</h2>" + slices_html(blessing, details, df),
        f'<h2>Metrics (95 % bootstrap intervals)</h2><img class="bars" src="{metric_bars(eval_result, details)}"/>',
        "<h2>Modality balance</h2>" + modality_balance_html(eval_result),
        "<h2>Title-decides same-product search</h2>" + check_html(eval_result, "title_decides"),
        "<h2>Titles-disagree same-product search</h2>" + check_html(eval_result, "titles_disagree"),
    ]
    if details and df is not None:
        sections.append(f"<h2>Same-product search examples (challenger vs {html.escape(other)})</h2>"
                        + retrieval_examples(df, details, other))
        sections.append("<h2>Worst leaf categories (challenger's probe)</h2>" + worst_categories(details))
    style = """body{font-family:sans-serif;margin:24px;max-width:1400px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}tr.pass td{background:#eef8ee}
tr.fail td{background:#fbeaea}span.pass{color:#1a7f1a}span.fail{color:#b00020}img.bars{max-width:100%}
.example{display:flex;gap:16px;border-top:1px solid #ddd;padding:8px 0}.results{display:flex;flex-wrap:wrap;
gap:4px;max-width:560px}.results p{width:100%;margin:0;font-size:12px}figure.thumb{margin:0;width:100px;
border:3px solid transparent}figure.thumb.hit{border-color:#2e7d32}figure.thumb.miss{border-color:#eee}
figure img{width:60px;height:80px;object-fit:contain;display:block;margin:auto}figcaption{font-size:10px}
.bal{display:flex;align-items:center;gap:8px;margin:4px 0;font-size:13px}.bal span{width:90px}
.track{width:320px;height:14px;background:#eee}.fill{height:100%;background:#1f77b4}"""
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
