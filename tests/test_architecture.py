"""The dependency rule of docs/architecture.md, checked on the code as it is.

`lint-imports` (import-linter, contracts in pyproject.toml) reads every import, function-level ones
included, and fails on an upward arrow or a circle; the isolation test imports each layer in a fresh
interpreter and checks that nothing above it was loaded on the way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: a module, and the packages that must not be loaded after importing it alone
ISOLATION = {
    "item_model": ["item_model.data", "item_model.lifecycle", "serving", "monitoring", "components", "pipelines"],
    "item_model.train": ["item_model.data", "item_model.lifecycle", "serving", "monitoring", "pipelines"],
    "item_model.evaluation": ["item_model.data", "item_model.lifecycle", "serving", "monitoring", "pipelines"],
    "item_model.data.catalog": ["item_model.lifecycle", "serving", "monitoring", "components", "pipelines"],
    "item_model.lifecycle.steps": ["serving", "monitoring", "components", "pipelines"],
    "serving.store": ["monitoring", "components", "pipelines"],
    "monitoring.drift": ["serving", "components", "pipelines"],
    "components.pretrain_ddp": ["pipelines"],
}


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "4 kept" in proc.stdout


@pytest.mark.parametrize("module", sorted(ISOLATION))
def test_each_layer_imports_alone(module):
    code = (f"import sys, {module}\n"
            f"bad = sorted(m for m in sys.modules for p in {ISOLATION[module]!r} if m == p or m.startswith(p + '.'))\n"
            "print(','.join(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"importing {module} loaded {proc.stdout.strip()}"
