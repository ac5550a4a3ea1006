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
    "item_model": ["serving", "monitoring", "components", "pipelines"],
    "item_model.train": ["serving", "monitoring", "components", "pipelines"],
    "item_model.inference": ["serving", "monitoring", "components", "pipelines"],
    "components.storage": ["components.catalog", "components.registry", "components.index", "components.promotion",
                           "components.steps", "serving", "monitoring", "pipelines"],
    "components.catalog": ["components.registry", "components.index", "components.promotion", "components.steps",
                           "serving", "monitoring", "pipelines"],
    "components.steps.training": ["serving", "monitoring", "components.gate", "components.pretrain", "pipelines"],
    "serving.store": ["monitoring", "components.gate", "components.package", "pipelines"],
    "monitoring.drift": ["serving", "components.drift_report", "pipelines"],
    "components.pretrain_ddp": ["pipelines"],
}


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "2 kept" in proc.stdout


@pytest.mark.parametrize("module", sorted(ISOLATION))
def test_each_layer_imports_alone(module):
    code = (f"import sys, {module}\n"
            f"bad = sorted(m for m in sys.modules for p in {ISOLATION[module]!r} if m == p or m.startswith(p + '.'))\n"
            "print(','.join(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"importing {module} loaded {proc.stdout.strip()}"


def _contract_layers() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (layers,) = [c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [m.strip() for layer in layers for m in layer.split("|")]


def test_every_component_file_and_platform_package_is_in_a_layer():
    """A new file in components/ that no layer names would escape the one-way rule unnoticed."""
    named = set(_contract_layers())
    on_disk = {f"components.{p.stem}" for p in (ROOT / "components").glob("*.py") if p.stem != "__init__"}
    on_disk |= {f"components.{p.parent.name}" for p in (ROOT / "components").glob("*/__init__.py")}
    assert on_disk - named == set(), f"not in any import-linter layer: {sorted(on_disk - named)}"


def test_the_picture_in_docs_names_every_package():
    """docs/architecture.md's picture is drawn from the code: every platform package, every package of the
    top level and every module of the ML library appears in it."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    picture = doc.split("## The house", 1)[1].split("```", 2)[1]
    platform = {p.parent.name + "/" for p in (ROOT / "components").glob("*/__init__.py")}
    top = {"pipelines/", "components/", "serving/", "monitoring/", "item_model/"}
    library = {p.stem for p in (ROOT / "item_model").glob("*.py") if p.stem != "__init__"}
    missing = sorted(n for n in platform | top | library if n not in picture)
    assert missing == [], f"docs/architecture.md's picture does not name {missing}"
