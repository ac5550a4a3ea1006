"""Promotion gate: turn ``eval.json`` and a gate config into a blessing (TFX's ``blessing`` idea:
an explicit artifact saying whether the model may be pushed, and why).

Gate config (YAML or dict)::

    criteria:
      - metric: item.recall@1      # "<model>.<metric>" path into eval.json["models"]
        min: 0.60                  # absolute floor (value >= min passes); or max: for upper bounds
        reason: why this floor     # shown in the report

A missing metric fails its criterion with a message naming it; the model is blessed only when every
criterion passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class GateConfigError(ValueError):
    """The gate config is malformed (names the criterion and field)."""


def load_gate_config(path: str | Path) -> dict:
    """Read a gate config YAML file and check its shape.

    Raises:
        GateConfigError: not a mapping with a ``criteria`` list of ``{metric, min|max}`` entries.
    """
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    check_gate_config(cfg)
    return cfg


def check_gate_config(cfg: Any) -> None:
    """Raise :class:`GateConfigError` naming the criterion index and field if ``cfg`` is malformed."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("criteria"), list) or not cfg["criteria"]:
        raise GateConfigError("gate config needs a non-empty 'criteria' list")
    for i, c in enumerate(cfg["criteria"]):
        if not isinstance(c, dict) or not isinstance(c.get("metric"), str):
            raise GateConfigError(f"gate criterion #{i}: field 'metric' (str) is missing")
        bounds = [k for k in ("min", "max") if k in c]
        if len(bounds) != 1 or not isinstance(c[bounds[0]], (int, float)):
            raise GateConfigError(f"gate criterion #{i} ({c['metric']}): give exactly one numeric 'min' or 'max'")


def lookup_metric(eval_result: dict, path: str) -> float | None:
    """``"item.recall@1"`` -> ``eval_result["models"]["item"]["recall@1"]`` (None if absent)."""
    model, _, metric = path.partition(".")
    value = eval_result.get("models", {}).get(model, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def evaluate_gate(eval_result: dict, gate_config: dict) -> dict:
    """Apply every criterion of ``gate_config`` to ``eval_result`` (the content of ``eval.json``).

    Returns:
        blessing dict: ``{"blessed": bool, "criteria": [{"metric", "value", "threshold",
        "comparison", "passed", "reason", "message"}]}``.

    Raises:
        GateConfigError: the config is malformed.
    """
    check_gate_config(gate_config)
    rows = []
    for c in gate_config["criteria"]:
        bound = "min" if "min" in c else "max"
        threshold = float(c[bound])
        value = lookup_metric(eval_result, c["metric"])
        if value is None:
            passed, message = False, f"metric {c['metric']!r} is missing from eval.json"
        else:
            passed = value >= threshold if bound == "min" else value <= threshold
            message = "pass" if passed else (f"{value:.4f} {'<' if bound == 'min' else '>'} {threshold:.4f}")
        rows.append({"metric": c["metric"], "value": value, "threshold": threshold,
                     "comparison": ">=" if bound == "min" else "<=", "passed": passed,
                     "reason": c.get("reason", ""), "message": message})
    return {"blessed": all(r["passed"] for r in rows), "criteria": rows}


def blessing_markdown(blessing: dict, title: str = "ITEm promotion gate") -> str:
    """The blessing as a Markdown report: verdict line and one table row per criterion."""
    verdict = "BLESSED" if blessing["blessed"] else "NOT BLESSED"
    lines = [f"# {title}: **{verdict}**", "", "| metric | value | threshold | verdict | note |",
             "|---|---|---|---|---|"]
    for r in blessing["criteria"]:
        value = "missing" if r["value"] is None else f"{r['value']:.4f}"
        lines.append(f"| `{r['metric']}` | {value} | {r['comparison']} {r['threshold']:.4f} | "
                     f"{'pass' if r['passed'] else '**FAIL**'} | {r['message'] if not r['passed'] else r['reason']} |")
    return "\n".join(lines) + "\n"
