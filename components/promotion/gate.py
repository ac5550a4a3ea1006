"""Promotion gate: turn ``eval.json`` and a gate config into a blessing (TFX's ``blessing`` idea:
an explicit artifact saying whether the model may be pushed, and why).

The gate file's format, its checks and relative floors: :mod:`components.promotion.config`;
slices: :mod:`components.promotion.slices`.

Each criterion is one row of the blessing; a missing metric fails its row with a message naming it;
the model is blessed only when every row passes. Exception: the ``title_decides`` and
``titles_disagree`` rows pass with a note when the metric is absent (a catalog without a qualifying
group, e.g. a small slice), and the ``slices`` rows when there is no champion yet or no slice has
enough items to be judged.
"""

from __future__ import annotations

from components.promotion.config import (KNOWN_MODELS, GateConfigError, check_gate_config, floors,  # noqa: F401
                          load_gate_config, lookup_metric, resolve_bound)


def _row(criterion: str, metric: str, value: float | None, threshold: float | None, comparison: str,
         passed: bool, reason: str, message: str, **extra) -> dict:
    return {"criterion": criterion, "metric": metric, "value": value, "threshold": threshold,
            "comparison": comparison, "passed": bool(passed), "reason": reason, "message": message, **extra}


def evaluate_gate(eval_result: dict, gate_config: dict, details: dict | None = None,
                  validation: dict | None = None, catalog=None) -> dict:
    """Apply every criterion of ``gate_config`` to ``eval_result`` (the content of ``eval.json``).

    Args:
        details: per-item outcomes ``{model: {"retrieval": ..., "probe": ...}}`` (eval_details.npz),
            needed for the champion significance rows.
        validation: the validated catalog's summary (``catalog.json``: ``n_read``, ``n_quarantined``),
            needed for the validation row.
        catalog: the validated catalog (``pandas.DataFrame``, rows in eval order), needed for the
            ``slices`` rows (each query's and test listing's slice).

    Returns:
        blessing dict: ``{"blessed": bool, "criteria": [{"criterion", "metric", "value",
        "threshold", "comparison", "passed", "reason", "message", ...}]}``, and ``slices`` (every
        slice's comparison, worst first; :func:`components.promotion.slices.slice_rows`) when
        the config has that section.

    Raises:
        GateConfigError: the config is malformed.
    """
    check_gate_config(gate_config)
    rows = [_floor_row(c, eval_result) for c in floors(gate_config)]
    if "champion" in gate_config:
        rows += _champion_rows(eval_result, gate_config["champion"], details)
    if "baselines" in gate_config:
        rows += _baseline_rows(eval_result, gate_config["baselines"])
    if "validation" in gate_config:
        rows.append(_validation_row(gate_config["validation"], validation))
    if "title_decides" in gate_config:
        rows += _title_decides_rows(eval_result, gate_config["title_decides"])
    if "titles_disagree" in gate_config:
        rows += _title_decides_rows(eval_result, gate_config["titles_disagree"], "titles_disagree")
    out = {"blessed": None, "criteria": rows}
    if "slices" in gate_config:
        from components.promotion.slices import slice_rows
        slice_criteria, out["slices"] = slice_rows(eval_result, gate_config["slices"], details, catalog)
        rows += slice_criteria
    out["blessed"] = all(r["passed"] for r in rows)
    return out


def _floor_row(c: dict, eval_result: dict) -> dict:
    """One floor: ``value >= threshold`` (``min``) or ``<=`` (``max``), the threshold absolute or
    resolved from the same run (:func:`components.promotion.config.resolve_bound`); a missing
    metric or reference fails the row with a message naming it."""
    bound = "min" if "min" in c else "max"
    threshold, info = resolve_bound(c[bound], eval_result)
    value = lookup_metric(eval_result, c["metric"])
    comparison = ">=" if bound == "min" else "<="
    if value is None:
        passed, message = False, f"metric {c['metric']!r} is missing from eval.json"
    elif threshold is None:
        passed, message = False, (f"relative floor: {', '.join(info['missing'])} missing from eval.json "
                                  f"(the run did not score that model or metric)")
    else:
        passed = value >= threshold if bound == "min" else value <= threshold
        message = "pass" if passed else f"{value:.4f} {'<' if bound == 'min' else '>'} {threshold:.4f}"
    if info["kind"] == "relative":
        message += f" (floor = {info['formula']})"
    return _row("floor", c["metric"], value, threshold, comparison, passed, c.get("reason", ""), message,
                bound={"kind": info["kind"], "formula": info["formula"]})


def _champion_rows(eval_result: dict, cfg: dict, details: dict | None) -> list[dict]:
    from components.promotion.bootstrap import paired_bootstrap

    metrics = cfg.get("metrics", ["recall@1", "recall@10", "mAP", "category_accuracy", "category_macro_f1"])
    tol = float(cfg.get("tolerance", 0.005))
    champion = eval_result.get("models", {}).get("champion")
    if champion is None:
        return [_row("no-regression", "champion", None, None, "-", True,
                     "no champion yet", "no champion yet: nothing to regress against, passes")]
    version = eval_result.get("champion", {}).get("version", "?")
    rows = []
    for m in metrics:
        new, old = lookup_metric(eval_result, f"item.{m}"), lookup_metric(eval_result, f"champion.{m}")
        if new is None or old is None:
            rows.append(_row("no-regression", f"item.{m}", new, None, ">=", False, "",
                             f"metric {m!r} is missing for the {'challenger' if new is None else 'champion'}"))
            continue
        passed = new - old >= -tol
        rows.append(_row("no-regression", f"item.{m}", new, old - tol, ">=", passed,
                         f"champion {version} scores {old:.4f} on the same split; tolerance {tol}",
                         "pass" if passed else f"drop of {old - new:.4f} exceeds tolerance {tol}"))
        if details is None or "item" not in details or "champion" not in details:
            rows.append(_row("significance", f"item.{m}", None, None, "CI", False, "",
                             "per-item details (eval_details.npz) are missing: cannot test significance"))
            continue
        bs = paired_bootstrap(details["item"], details["champion"], m,
                              int(cfg.get("bootstrap_resamples", 1000)), float(cfg.get("confidence", 0.95)))
        verdict = ("significant regression" if bs["significant_regression"] else
                   "significant improvement" if bs["significant_improvement"] else "no significant difference")
        rows.append(_row("significance", f"item.{m}", bs["delta"], 0.0, "CI high >=",
                         not bs["significant_regression"],
                         f"paired bootstrap, {bs['n_resamples']} resamples of {bs['n_items']} items",
                         f"delta {bs['delta']:+.4f}, {int(bs['confidence'] * 100)}% CI "
                         f"[{bs['ci_low']:+.4f}, {bs['ci_high']:+.4f}]: {verdict}",
                         ci=[bs["ci_low"], bs["ci_high"]]))
    return rows


def _baseline_rows(eval_result: dict, cfg: dict) -> list[dict]:
    rows = []
    margin = float(cfg.get("margin", 0.0))
    names = cfg.get("compare_to", ["baseline_text_minilm", "baseline_image_pixels"])
    for m in cfg.get("metrics", ["recall@1", "category_accuracy"]):
        value = lookup_metric(eval_result, f"item.{m}")
        base = {n: lookup_metric(eval_result, f"{n}.{m}") for n in names}
        missing = [n for n, v in base.items() if v is None]
        if value is None or missing:
            rows.append(_row("beats-baselines", f"item.{m}", value, None, ">", False, "",
                             f"metric {m!r} is missing for {['item'] if value is None else missing}"))
            continue
        best_name = max(base, key=base.get)
        threshold = base[best_name] + margin
        passed = value >= threshold
        rows.append(_row("beats-baselines", f"item.{m}", value, threshold, ">=", passed,
                         f"best single-modality baseline {best_name} = {base[best_name]:.4f}, margin {margin}",
                         "pass" if passed else f"{value:.4f} does not beat {best_name} ({base[best_name]:.4f}) "
                                               f"by {margin}"))
    return rows


#: per check: (criterion name, default metric, default must_beat, what must_beat stands for)
CHECKS = {"title_decides": ("title-decides", "title_decides_recall@1", "baseline_image_pixels", "the photo alone"),
          "titles_disagree": ("titles-disagree", "titles_disagree_recall@1", "baseline_text_minilm", "the title alone")}


def _title_decides_rows(eval_result: dict, cfg: dict, check: str = "title_decides") -> list[dict]:
    """Rows of a same-product check (``title_decides`` or ``titles_disagree``, :data:`CHECKS`):
    ``item.<metric> >= <max_drop_vs>.<metric> - tolerance`` and ``item.<metric> > <must_beat>.<metric>``;
    each passes with a note when a value is absent (a catalog without a qualifying group)."""
    criterion, default_metric, default_floor, floor_what = CHECKS[check]
    metric = cfg.get("metric") or default_metric
    tol = float(cfg.get("tolerance", 0.01))
    reason = cfg.get("reason", "")
    value = lookup_metric(eval_result, f"item.{metric}")
    if value is None:
        note = (f"item.{metric} not measured (the evaluated catalog has no qualifying title, or an "
                f"eval.json from before this check): passes")
        return [_row(criterion, f"item.{metric}", None, None, "-", True, note, note)]
    rows = []
    ref_name = cfg["max_drop_vs"]
    ref = lookup_metric(eval_result, f"{ref_name}.{metric}")
    if ref is None:
        note = f"{ref_name}.{metric} not measured: nothing to compare with, passes"
        rows.append(_row(criterion, f"item.{metric}", value, None, ">=", True, note, note))
    else:
        passed = value >= ref - tol
        rows.append(_row(criterion, f"item.{metric}", value, ref - tol, ">=", passed,
                         f"{reason + '; ' if reason else ''}{ref_name} = {ref:.4f}, tolerance {tol}",
                         "pass" if passed else f"{value:.4f} is {ref - value:.4f} below {ref_name} "
                                               f"({ref:.4f}); tolerance {tol}"))
    floor_name = cfg.get("must_beat", default_floor)
    if floor_name:
        floor = lookup_metric(eval_result, f"{floor_name}.{metric}")
        if floor is None:
            note = f"{floor_name}.{metric} not measured: nothing to compare with, passes"
            rows.append(_row(criterion, f"item.{metric}", value, None, ">", True, note, note))
        else:
            passed = value > floor
            rows.append(_row(criterion, f"item.{metric}", value, floor, ">", passed,
                             f"must stay above {floor_name} = {floor:.4f} ({floor_what})",
                             "pass" if passed else f"{value:.4f} does not exceed {floor_name} ({floor:.4f})"))
    return rows


def balance_reading(text_overlap: float, image_overlap: float, gains: dict | None = None) -> str:
    """One line reading the modality balance of the served vector
    (:func:`item_model.evaluation.modality_balance`: top-k overlaps in [0, 1]).

    A reading aid, not a criterion: "follows the photo" when the image overlap is at least twice
    the text overlap and 0.1 above it; "follows the title" in the mirror case; "follows neither"
    when both are below 0.2; else "uses both". ``gains`` (:func:`modality_gains`) tell whether the
    weaker modality still decides within the stronger one's neighbourhood: a vector whose
    neighbourhood is the title's but whose same-product Recall@1 is well above the title stream's
    (>= 0.05) uses the photo to order listings with the same title, and is read so.
    """
    t, i = float(text_overlap), float(image_overlap)
    gains = gains or {}
    if max(t, i) < 0.2:
        return "follows neither single-modality view: its neighbours differ from both the text-only and image-only ones"
    if i >= 2 * t and i - t >= 0.1:
        if (gains.get("title") or 0.0) >= 0.05:
            return (f"follows the photo's neighbourhood, and the title orders listings within it "
                    f"(title-decides Recall@1 {gains['title']:+.3f} over the photo stream alone)")
        return "follows the photo: its neighbours are mostly the image-only embedding's, the title counts little"
    if t >= 2 * i and t - i >= 0.1:
        if (gains.get("photo") or 0.0) >= 0.05:
            return (f"follows the title's neighbourhood, and the photo orders listings within it "
                    f"(same-product Recall@1 {gains['photo']:+.3f} over the title stream alone)")
        return "follows the title: its neighbours are mostly the text-only embedding's, the photo counts little"
    return "uses both the title and the photo: its neighbours overlap with both single-modality views"


def modality_gains(eval_result: dict) -> dict:
    """What each modality adds to the served vector, from eval.json: ``{"photo": Recall@1(item) -
    Recall@1(item_text_only)`` on same-product search (where the photo decides), ``"title":
    title-decides Recall@1(item) - that of item_image_only}``; a key is absent when unmeasured."""
    models = eval_result.get("models", {})
    item, text, image = models.get("item", {}), models.get("item_text_only", {}), models.get("item_image_only", {})
    gains = {}
    if "recall@1" in item and "recall@1" in text:
        gains["photo"] = float(item["recall@1"]) - float(text["recall@1"])
    key = "title_decides_recall@1"
    if key in item and key in image:
        gains["title"] = float(item[key]) - float(image[key])
    return gains


def balance_values(eval_result: dict, k: int = 10) -> tuple[float, float, int | None] | None:
    """``(text overlap, image overlap, n queries)`` of ``item`` in eval.json, or None when absent."""
    item = eval_result.get("models", {}).get("item", {})
    t, i = item.get(f"balance_text_overlap@{k}"), item.get(f"balance_image_overlap@{k}")
    if not isinstance(t, (int, float)) or not isinstance(i, (int, float)):
        return None
    return float(t), float(i), item.get("balance_n_queries")


def readout_line(eval_result: dict) -> str | None:
    """One sentence on how the served vector was read out (eval.json ``checks.readout``, written by the
    evaluate step from the model's config and training.json), or None when eval.json has none."""
    r = eval_result.get("checks", {}).get("readout")
    if not r:
        return None
    w = float(r["readout_text_weight"])
    t = ("the mean of the title stream's token states" if r.get("text_pooling") == "mean"
         else "the title stream's [CLS]")
    form = "the joint [CLS] j alone" if w == 0 else f"normalize({w:g} t + j), t {t}, j the joint [CLS]"
    tokens = {"efficientnet_lite0": "photo tokens: EfficientNet-Lite0 cells",
              "efficientnet_lite0+pixels": "photo tokens: EfficientNet-Lite0 cells with their pixels"}
    extra = "".join(f"; {x}" for x in (tokens.get(r.get("image_tokens", "patches")),
                                       _precision_phrase(r)) if x)
    sel = r.get("selection")
    if not sel or sel.get("chosen") is None:
        why = " (no validation query to choose on)" if sel else ""
        return f"Served vector: {form}; w as configured{why}{extra}."
    scores = ", ".join(f"{float(k):g}: {v:.4f}" for k, v in sel["score"].items())
    td = sel.get("titles_disagree_n_queries") or 0
    queries = (f"{sel['n_queries']} same-product, {sel['title_decides_n_queries']} title-decides"
               + (f", {td} titles-disagree" if "titles_disagree" in sel.get("checks", []) else "") + " queries")
    return (f"Served vector: {form}; w chosen among {', '.join(f'{float(k):g}' for k in sel['score'])} on "
            f"{sel['n_listings']} validation listings and their train-split partners "
            f"({queries}; mean Recall@1 {scores}){extra}.")


def _precision_phrase(readout: dict) -> str | None:
    """How the vectors are computed, when not plain fp32 (eval.json ``checks.readout``)."""
    check = readout.get("precision_check") or {}
    if readout.get("inference_precision", "fp32") != "fp32":
        return f"computed in {readout['inference_precision']} ({check.get('reason', 'not checked')})"
    if check and not check.get("kept", True):
        return f"computed in fp32: {check['reason']}"
    return None


#: the same-product checks shown as tables: (metric prefix, heading, what it measures)
CHECK_TABLES = (
    ("title_decides", "Title-decides same-product search",
     "Identically titled listings of one leaf category whose photos differ: the title decides, the photo misleads."),
    ("titles_disagree", "Titles-disagree same-product search",
     "The real same-product groups with each member's title rewritten by another seller-style rule (brand "
     "dropped or abbreviated, words reordered, colour synonyms, seller noise); photos untouched: the photo "
     "must carry the match (item_model/titles_disagree.py)."),
)
def check_models(models: dict, prefix: str) -> list[str]:
    """The models of eval.json (in report order) with all four metrics of one check (``prefix``)."""
    keys = [f"{prefix}_{k}" for k in ("recall@1", "recall@10", "mAP", "n_queries")]
    return [m for m in TITLE_DECIDES_REPORT_MODELS if all(k in models.get(m, {}) for k in keys)]


#: the models the report tables show, in order: every model eval.json scores
TITLE_DECIDES_REPORT_MODELS = KNOWN_MODELS


def _validation_row(cfg: dict, validation: dict | None) -> dict:
    limit = float(cfg.get("max_quarantine_fraction", 0.01))
    if validation is None:
        return _row("data-validation", "quarantine_fraction", None, limit, "<=", False, "",
                    "validation summary (catalog.json) is missing")
    share = validation["n_quarantined"] / max(1, validation["n_read"])
    passed = share <= limit
    return _row("data-validation", "quarantine_fraction", share, limit, "<=", passed,
                f"{validation['n_quarantined']} of {validation['n_read']} rows quarantined; table checks passed",
                "pass" if passed else f"{share:.4f} of the rows were quarantined (limit {limit})")


def slices_markdown(slices: dict | None, n: int = 5) -> list[str]:
    """Markdown lines: the ``n`` worst judged slices of each metric (blessing ``slices``,
    :func:`components.promotion.slices.slice_rows`), regressed ones marked; [] when none."""
    if not slices or not slices.get("by_metric"):
        return []
    level = f" level {slices['level']}" if slices.get("level") else ""
    lines = ["", f"## Worst slices by {slices['column']}{level} (challenger - champion)", "",
             f"Paired bootstrap at {slices['confidence']:g} over each slice's items; slices with fewer than "
             f"{slices['min_queries']} items are not judged.", "",
             "| metric | slice | items | champion | challenger | delta | interval | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    from components.promotion.slices import metrics_worst_first
    for metric, comp in metrics_worst_first(slices):
        for r in [r for r in comp if r["judged"]][:n]:
            lines.append(f"| {metric} | {r['slice']} | {r['n']} | {r['champion']:.4f} | {r['challenger']:.4f} | "
                         f"{r['delta']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | "
                         f"{'**REGRESSED**' if r['regressed'] else 'ok'} |")
    return lines


def blessing_markdown(blessing: dict, title: str = "ITEm promotion gate", eval_result: dict | None = None) -> str:
    """The blessing as a Markdown report: verdict line and one table row per criterion; with
    ``eval_result`` (eval.json) also a "Modality balance" section (item's top-10 overlaps and their
    reading, :func:`balance_reading`, and the served vector's read-out, :func:`readout_line`) and a
    "Title-decides same-product search" table, each only when its metrics are present."""
    verdict = "BLESSED" if blessing["blessed"] else "NOT BLESSED"
    lines = [f"# {title}: **{verdict}**", "", "| criterion | metric | value | threshold | verdict | note |",
             "|---|---|---|---|---|---|"]
    for r in blessing["criteria"]:
        value = "missing" if r["value"] is None else f"{r['value']:.4f}"
        threshold = "-" if r["threshold"] is None else f"{r['comparison']} {r['threshold']:.4f}"
        note = r["message"] if (not r["passed"] or r["criterion"] in ("significance", "slice-regression")) \
            else r["reason"]
        if r.get("bound", {}).get("kind") == "relative" and r["passed"]:
            note = f"floor = {r['bound']['formula']}; {note}"
        lines.append(f"| {r.get('criterion', 'floor')} | `{r['metric']}` | {value} | {threshold} | "
                     f"{'pass' if r['passed'] else '**FAIL**'} | {note} |")
    lines += slices_markdown(blessing.get("slices"))
    if eval_result is not None:
        balance = balance_values(eval_result)
        if balance is not None:
            t, i, n = balance
            lines += ["", "## Modality balance", "",
                      f"Top-10 neighbours of the served (joint) vector shared with ITEm's own text-only "
                      f"embedding: **{t:.3f}**; with its image-only embedding: **{i:.3f}** "
                      f"({n or '?'} sampled catalog listings as queries, the whole catalog searched).", "",
                      f"Reading: the joint vector {balance_reading(t, i, modality_gains(eval_result))}."]
        if readout_line(eval_result):
            lines += ["", readout_line(eval_result)]
        models = eval_result.get("models", {})
        for prefix, heading, blurb in CHECK_TABLES:
            shown = check_models(models, prefix)
            if shown:
                lines += ["", f"## {heading}", "", blurb, "",
                          "| model | Recall@1 | Recall@10 | mAP | queries |", "|---|---|---|---|---|"]
                lines += [f"| {m} | {models[m][f'{prefix}_recall@1']:.4f} | {models[m][f'{prefix}_recall@10']:.4f} | "
                          f"{models[m][f'{prefix}_mAP']:.4f} | {int(models[m][f'{prefix}_n_queries'])} |" for m in shown]
    return "\n".join(lines) + "\n"
