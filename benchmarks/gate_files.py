"""The shipped gate (relative floors) against the fashion catalog's absolute floors on every eval.json
recorded under benchmarks/results: the same verdicts on the shared catalog is what the switch to
relative floors must keep (issue 31). The champion rows are left out (the recorded runs were judged
against different champions); validation is taken as passed.

    .venv/bin/python benchmarks/gate_files.py [--out benchmarks/results/gate_relative_vs_absolute.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from item_model.io import write_json_atomic
from components.promotion.gate import evaluate_gate, load_gate_config

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gate_relative_vs_absolute.json"))
    args = ap.parse_args()
    files = {"relative": ROOT / "pipelines/configs/gate.yaml",
             "absolute": ROOT / "pipelines/configs/examples/gate_fashion_absolute.yaml"}
    gates = {name: load_gate_config(path) for name, path in files.items()}
    rows = []
    for path in sorted((ROOT / "benchmarks/results").glob("*/eval.json")):
        result = json.loads(path.read_text())
        result["models"].pop("champion", None)
        row = {"run": path.parent.name}
        for name, cfg in gates.items():
            b = evaluate_gate(result, cfg, None, {"n_read": 1, "n_quarantined": 0})
            row[name] = {"blessed": b["blessed"], "failed": [f"{r['criterion']} {r['metric']}"
                                                             for r in b["criteria"] if not r["passed"]]}
        rows.append(row)
        print(f"{row['run'][:58]:58s} relative {'BLESSED' if row['relative']['blessed'] else 'refused':8s} "
              f"absolute {'BLESSED' if row['absolute']['blessed'] else 'refused':8s}")
    same = sum(r["relative"]["blessed"] == r["absolute"]["blessed"] for r in rows)
    print(f"same verdict on {same} of {len(rows)} recorded runs")
    write_json_atomic(args.out, {"gate_files": {k: str(v.relative_to(ROOT)) for k, v in files.items()},
                                 "same_verdict": same, "runs": rows})


if __name__ == "__main__":
    main()
