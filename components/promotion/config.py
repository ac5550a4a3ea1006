"""The promotion gate's configuration: reading a gate file, checking it against the metrics the
evaluate step writes, and resolving relative floors (a floor stated against another metric of the
same run, e.g. "at least the best baseline's Recall@10 minus 0.01").

A gate file (YAML) has these sections; every one but ``floors`` is optional::

    floors:                            # (alias: criteria)
      - metric: item.recall@10         # "<model>.<metric>", a path into eval.json["models"]
        min: 0.5                       # absolute: value >= 0.5 (or max: for an upper bound)
      - metric: item.mAP
        min:                           # relative: resolved against the same run's eval.json
          best_of: [baseline_text_minilm.mAP, baseline_image_pixels.mAP]   # or  of: <model>.<metric>
          times: 1.0                   # optional factor (default 1)
          minus: 0.01                  # optional margin subtracted after the factor (default 0)
        reason: why                    # shown in the report
    champion: {metrics, tolerance, confidence, bootstrap_resamples}
    baselines: {metrics, compare_to, margin}
    validation: {max_quarantine_fraction}
    title_decides: {metric, max_drop_vs, tolerance, must_beat, reason}
    titles_disagree: {metric, max_drop_vs, tolerance, must_beat, reason}   # the same, on the titles-disagree check
    slices: {column, level, metrics, min_queries, tolerance, confidence, bootstrap_resamples}
    serving_check: {...}               # read by serving.serving_check.ServingCheckConfig

A relative bound resolves to ``times * ref - minus`` where ``ref`` is the named metric (``of``) or
the largest of the named metrics (``best_of``); TFMA's ``GenericValueThreshold`` /
``GenericChangeThreshold`` are the model for absolute and relative thresholds.

Every metric and model name is checked against what the evaluate step writes (:data:`KNOWN_MODELS`,
:data:`KNOWN_METRICS`), so a typo is an error when the file is read, not a failed row after an
hour of training. Errors read from a file name the file and the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: the embeddings eval.json scores (item_model.evaluation.evaluate_catalog)
KNOWN_MODELS = ("item", "champion", "item_text_only", "item_image_only", "baseline_text_minilm",
                "baseline_image_pixels", "baseline_concat")
#: metrics with a per-item outcome in eval_details (paired bootstrap possible)
BOOTSTRAP_METRICS = ("recall@1", "recall@10", "mAP", "category_accuracy", "category_macro_f1")
#: metrics that can be judged inside one slice of the catalog (macro-F1 of one leaf is not meaningful)
SLICE_METRICS = ("recall@1", "recall@10", "mAP", "category_accuracy")
#: every metric name the evaluate step writes for some model
KNOWN_METRICS = BOOTSTRAP_METRICS + (
    "n_queries", "n_test", "n_classes", "probe_C",
    "ann_recall@1", "ann_recall@10", "ann_n_queries",
    "title_decides_recall@1", "title_decides_recall@10", "title_decides_mAP", "title_decides_n_queries",
    "titles_disagree_recall@1", "titles_disagree_recall@10", "titles_disagree_mAP", "titles_disagree_n_queries",
    "balance_text_overlap@10", "balance_image_overlap@10", "balance_n_queries",
)
SECTIONS = ("floors", "criteria", "champion", "baselines", "validation", "title_decides", "titles_disagree", "slices",
            "serving_check")
SECTION_FIELDS = {
    "champion": {"metrics", "tolerance", "confidence", "bootstrap_resamples"},
    "baselines": {"metrics", "compare_to", "margin"},
    "validation": {"max_quarantine_fraction"},
    "title_decides": {"metric", "max_drop_vs", "tolerance", "must_beat", "reason"},
    "titles_disagree": {"metric", "max_drop_vs", "tolerance", "must_beat", "reason"},
    "slices": {"column", "level", "metrics", "min_queries", "tolerance", "confidence", "bootstrap_resamples",
               "reason"},
}
FLOOR_FIELDS = {"metric", "min", "max", "reason"}
RELATIVE_FIELDS = {"of", "best_of", "times", "minus"}
#: catalog columns a slice may be cut by (components.catalog.CANONICAL_COLUMNS, those with labels)
SLICE_COLUMNS = ("category", "category_path", "gender", "colour", "season", "year", "usage")
#: the fashion layout's source column names, accepted as slice columns: name -> (column, level of category_path)
SLICE_ALIASES = {"masterCategory": ("category_path", 1), "subCategory": ("category_path", 2),
                 "articleType": ("category", None), "baseColour": ("colour", None)}


class GateConfigError(ValueError):
    """The gate config is malformed (names the file and line when read from a file, the section,
    criterion and field)."""


def floors(cfg: dict) -> list:
    """The config's floor list (``floors``, or its alias ``criteria``)."""
    return cfg.get("floors", cfg.get("criteria"))


def _line_map(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """``{path: 1-based line}`` for every mapping key and sequence item of a composed YAML tree."""
    out: dict[tuple, int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out.update(_line_map(value, path + (key.value,)))
            out[path + (key.value,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out.update(_line_map(value, path + (i,)))
    return out


def load_gate_config(path: str | Path) -> dict:
    """Read a gate file (YAML) and check it (:func:`check_gate_config`).

    Raises:
        GateConfigError: not YAML, or malformed; the message starts with ``<path>:<line>:``.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        cfg = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise GateConfigError(f"{path}: not valid YAML: {exc}") from exc
    check_gate_config(cfg, source=str(path), lines=_line_map(node) if node is not None else {})
    return cfg


class _Checker:
    """Raises GateConfigError prefixed with ``source:line`` of the offending path when lines are known."""

    def __init__(self, source: str | None, lines: dict[tuple, int] | None):
        self.source, self.lines = source, lines or {}

    def fail(self, path: tuple, message: str):
        where = self.source or "gate config"
        for i in range(len(path), -1, -1):
            if path[:i] in self.lines:
                where = f"{where}:{self.lines[path[:i]]}"
                break
        raise GateConfigError(f"{where}: {message}")

    def number(self, path: tuple, value: Any, what: str, low: float | None = None, high: float | None = None,
               integer: bool = False) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and integer:          # kfp.local hands dict numbers back as floats: 1000.0 is an integer
            ok = float(value).is_integer()
        if ok and low is not None and value < low:
            ok = False
        if ok and high is not None and value > high:
            ok = False
        if not ok:
            rng = f" in [{low}, {high}]" if low is not None and high is not None else (
                f" >= {low}" if low is not None else "")
            self.fail(path, f"{what} must be {'an integer' if integer else 'a number'}{rng}, got {value!r}")

    def metric_path(self, path: tuple, value: Any, what: str) -> None:
        if not isinstance(value, str) or "." not in value:
            self.fail(path, f"{what} must be '<model>.<metric>', got {value!r}")
        model, _, metric = value.partition(".")
        self.model(path, model, what)
        self.metric(path, metric, what, KNOWN_METRICS)

    def model(self, path: tuple, model: Any, what: str) -> None:
        if model not in KNOWN_MODELS:
            self.fail(path, f"{what}: unknown model {model!r}; eval.json scores {list(KNOWN_MODELS)}")

    def metric(self, path: tuple, metric: Any, what: str, known: tuple) -> None:
        if metric not in known:
            self.fail(path, f"{what}: unknown metric {metric!r}; known: {list(known)}")

    def fields(self, path: tuple, value: Any, allowed: set, what: str) -> None:
        if not isinstance(value, dict):
            self.fail(path, f"{what} must be a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            self.fail(path + (unknown[0],), f"{what} has unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def check_gate_config(cfg: Any, source: str | None = None, lines: dict[tuple, int] | None = None) -> None:
    """Check a gate config's shape and names.

    Args:
        cfg: the parsed config.
        source / lines: the file it came from and ``{path: line}`` (:func:`load_gate_config`), for messages.

    Raises:
        GateConfigError: an unknown section or field, an unknown model or metric name, a bound that is
            neither a number nor a relative mapping, a number out of range; the message names the
            file and line (when known), the section and the field.
    """
    ck = _Checker(source, lines)
    if not isinstance(cfg, dict) or not isinstance(floors(cfg), list) or not floors(cfg):
        ck.fail((), "gate config needs a non-empty 'floors' (or 'criteria') list")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        ck.fail((unknown[0],), f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    key = "floors" if "floors" in cfg else "criteria"
    for i, c in enumerate(floors(cfg)):
        _check_floor(ck, (key, i), c, i)
    for name, allowed in SECTION_FIELDS.items():
        if name in cfg:
            ck.fields((name,), cfg[name], allowed, f"section {name!r}")
    if "champion" in cfg:
        _check_champion(ck, cfg["champion"])
    if "baselines" in cfg:
        _check_baselines(ck, cfg["baselines"])
    if "validation" in cfg and "max_quarantine_fraction" in cfg["validation"]:
        ck.number(("validation", "max_quarantine_fraction"), cfg["validation"]["max_quarantine_fraction"],
                  "validation.max_quarantine_fraction", 0.0, 1.0)
    for check in ("title_decides", "titles_disagree"):
        if check in cfg:
            _check_title_decides(ck, cfg[check], check)
    if "slices" in cfg:
        _check_slices(ck, cfg["slices"])


def _check_floor(ck: _Checker, path: tuple, c: Any, i: int) -> None:
    if not isinstance(c, dict) or "metric" not in c:
        ck.fail(path, f"floor #{i}: field 'metric' ('<model>.<metric>') is missing")
    ck.fields(path, c, FLOOR_FIELDS, f"floor #{i} ({c['metric']})")
    ck.metric_path(path + ("metric",), c["metric"], f"floor #{i} metric")
    bounds = [k for k in ("min", "max") if k in c]
    if len(bounds) != 1:
        ck.fail(path, f"floor #{i} ({c['metric']}): give exactly one of 'min' or 'max'")
    bound = c[bounds[0]]
    bpath, what = path + (bounds[0],), f"floor #{i} ({c['metric']}) {bounds[0]}"
    if isinstance(bound, dict):
        _check_relative(ck, bpath, bound, what)
    elif not isinstance(bound, (int, float)) or isinstance(bound, bool):
        ck.fail(bpath, f"{what}: a bound is a number or a mapping with 'of' or 'best_of' "
                       f"(optional 'times', 'minus'), got {bound!r}")


def _check_relative(ck: _Checker, path: tuple, bound: dict, what: str) -> None:
    ck.fields(path, bound, RELATIVE_FIELDS, f"{what} (relative bound)")
    refs = [k for k in ("of", "best_of") if k in bound]
    if len(refs) != 1:
        ck.fail(path, f"{what}: a relative bound names exactly one of 'of' (a metric) or 'best_of' (a list)")
    if "of" in bound:
        ck.metric_path(path + ("of",), bound["of"], f"{what}.of")
    else:
        if not isinstance(bound["best_of"], list) or not bound["best_of"]:
            ck.fail(path + ("best_of",), f"{what}.best_of must be a non-empty list of '<model>.<metric>'")
        for j, ref in enumerate(bound["best_of"]):
            ck.metric_path(path + ("best_of", j), ref, f"{what}.best_of[{j}]")
    if "times" in bound:
        ck.number(path + ("times",), bound["times"], f"{what}.times", 0.0)
    if "minus" in bound:
        ck.number(path + ("minus",), bound["minus"], f"{what}.minus")


def _check_metric_list(ck: _Checker, path: tuple, values: Any, known: tuple, what: str) -> None:
    if not isinstance(values, list) or not values:
        ck.fail(path, f"{what} must be a non-empty list")
    for j, m in enumerate(values):
        ck.metric(path + (j,), m, what, known)


def _check_champion(ck: _Checker, cfg: dict) -> None:
    if "metrics" in cfg:
        _check_metric_list(ck, ("champion", "metrics"), cfg["metrics"], BOOTSTRAP_METRICS, "champion.metrics")
    _check_test_numbers(ck, "champion", cfg)


def _check_test_numbers(ck: _Checker, section: str, cfg: dict) -> None:
    if "tolerance" in cfg:
        ck.number((section, "tolerance"), cfg["tolerance"], f"{section}.tolerance", 0.0)
    if "confidence" in cfg:
        ck.number((section, "confidence"), cfg["confidence"], f"{section}.confidence", 0.5, 0.9999)
    if "bootstrap_resamples" in cfg:
        ck.number((section, "bootstrap_resamples"), cfg["bootstrap_resamples"], f"{section}.bootstrap_resamples",
                  100, integer=True)


def _check_baselines(ck: _Checker, cfg: dict) -> None:
    if "metrics" in cfg:
        _check_metric_list(ck, ("baselines", "metrics"), cfg["metrics"], KNOWN_METRICS, "baselines.metrics")
    for j, name in enumerate(cfg.get("compare_to", [])):
        ck.model(("baselines", "compare_to", j), name, "baselines.compare_to")
    if "margin" in cfg:
        ck.number(("baselines", "margin"), cfg["margin"], "baselines.margin")


def _check_title_decides(ck: _Checker, td: dict, section: str = "title_decides") -> None:
    if not isinstance(td.get("max_drop_vs"), str) or not td["max_drop_vs"]:
        ck.fail((section,), f"section {section!r}: field 'max_drop_vs' (a model name) is missing")
    ck.model((section, "max_drop_vs"), td["max_drop_vs"], f"{section}.max_drop_vs")
    if td.get("must_beat") is not None:
        ck.model((section, "must_beat"), td["must_beat"], f"{section}.must_beat")
    if td.get("metric") is not None:
        ck.metric((section, "metric"), td["metric"], f"{section}.metric", KNOWN_METRICS)
    ck.number((section, "tolerance"), td.get("tolerance", 0.01), f"{section}.tolerance", 0.0)
    if td.get("reason") is not None and not isinstance(td["reason"], str):
        ck.fail((section, "reason"), f"{section}.reason must be a string")


def _check_slices(ck: _Checker, cfg: dict) -> None:
    if cfg.get("column") not in SLICE_COLUMNS and cfg.get("column") not in SLICE_ALIASES:
        ck.fail(("slices", "column"), f"slices.column must be one of {list(SLICE_COLUMNS) + list(SLICE_ALIASES)}, "
                                      f"got {cfg.get('column')!r}")
    if "level" in cfg:
        if cfg["column"] != "category_path":
            ck.fail(("slices", "level"), "slices.level applies to column 'category_path' only")
        ck.number(("slices", "level"), cfg["level"], "slices.level", 1, integer=True)
    if "metrics" in cfg:
        _check_metric_list(ck, ("slices", "metrics"), cfg["metrics"], SLICE_METRICS, "slices.metrics")
    if "min_queries" in cfg:
        ck.number(("slices", "min_queries"), cfg["min_queries"], "slices.min_queries", 2, integer=True)
    _check_test_numbers(ck, "slices", cfg)


def resolve_bound(bound: float | int | dict, eval_result: dict) -> tuple[float | None, dict]:
    """The number a floor's ``min``/``max`` stands for in this run.

    Args:
        bound: a number (absolute) or ``{"of" | "best_of", "times", "minus"}`` (relative).
        eval_result: eval.json's content.

    Returns:
        ``(threshold or None when a referenced metric is missing, info)``; ``info``: ``{"kind":
        "absolute" | "relative", "formula": str, "refs": {path: value or None}, "missing": [paths]}``.
    """
    if not isinstance(bound, dict):
        return float(bound), {"kind": "absolute", "formula": f"{float(bound):g}", "refs": {}, "missing": []}
    paths = [bound["of"]] if "of" in bound else list(bound["best_of"])
    refs = {p: lookup_metric(eval_result, p) for p in paths}
    missing = [p for p, v in refs.items() if v is None]
    times, minus = float(bound.get("times", 1.0)), float(bound.get("minus", 0.0))
    shown = ", ".join(f"{p} ({'missing' if v is None else f'{v:.4f}'})" for p, v in refs.items())
    formula = shown if "of" in bound else f"best of {shown}"
    formula = (f"{times:g} x " if times != 1.0 else "") + formula + (
        f" - {minus:g}" if minus > 0 else f" + {-minus:g}" if minus < 0 else "")
    info = {"kind": "relative", "formula": formula, "refs": refs, "missing": missing}
    if missing:
        return None, info
    return times * max(refs.values()) - minus, info


def lookup_metric(eval_result: dict, path: str) -> float | None:
    """``"item.recall@1"`` -> ``eval_result["models"]["item"]["recall@1"]`` (None if absent)."""
    model, _, metric = path.partition(".")
    value = eval_result.get("models", {}).get(model, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
