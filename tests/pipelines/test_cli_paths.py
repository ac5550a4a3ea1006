"""The ``item gate`` commands no other test runs, through the installed ``item`` command in its own
process: ``item gate approve --no-serving-check`` (packages the version into a real BentoML store and
moves a real registry's champion pointer, recording that the check was skipped) and ``item gate
screenshot`` (a real headless Chromium renders the version's HTML gate report to a PNG).

The registry version is the tiny real model of ``packaged_model`` (trained on the real catalog slice)
with its real eval.json, blessing and the gate report rendered by the project's own renderer."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from components.steps.environment import OFFLINE_ENV

ROOT = Path(__file__).resolve().parents[2]
ITEM = str(Path(sys.executable).parent / "item")


@pytest.fixture(scope="module")
def cli_registry(packaged_model, tmp_path_factory) -> dict:
    """A fresh registry holding one version (no champion yet): ``{"root", "version", "tmp"}``."""
    from components.promotion.report import render_gate_report
    from components.registry import ModelRegistry

    tmp = tmp_path_factory.mktemp("cli-gate")
    m = packaged_model
    blessing_path = Path(m["eval_path"]).parent / "blessing.json"
    html = tmp / "gate_report.html"
    html.write_text(render_gate_report(json.loads(blessing_path.read_text()), json.loads(Path(m["eval_path"]).read_text()),
                                       None, None))
    registry = ModelRegistry(str(tmp / "registry"))
    version = registry.register(m["model_dir"], {"eval.json": m["eval_path"], "blessing.json": str(blessing_path),
                                                 "gate_report.html": str(html)}, {"blessed": True})
    return {"root": str(tmp / "registry"), "version": version, "tmp": tmp}


def _item(args: list[str], env_extra: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE_ENV, "COLUMNS": "200", **env_extra}
    return subprocess.run([ITEM, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_item_gate_approve_no_serving_check_packages_and_promotes(cli_registry, tmp_path):
    from components.registry import ModelRegistry
    from serving.store import package_of

    home = tmp_path / "bentoml"
    v = cli_registry["version"]
    proc = _item(["gate", "approve", v, "--reason", "checked by hand", "--no-serving-check",
                  "--bentoml-home", str(home)],
                 {"ITEM_REGISTRY": cli_registry["root"], "ITEM_STORAGE_ROOT": str(tmp_path / "storage"),
                  "BENTOML_HOME": str(home)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "serving check of" not in out                       # no server was started
    assert f"champion is now {v} (manual approval by" in proc.stdout
    tag = package_of(v, home)
    assert tag is not None and f"packaged as BentoML model {tag}" in proc.stdout
    registry = ModelRegistry(cli_registry["root"])
    assert registry.champion()["version"] == v
    promoted = [e for e in registry.history() if e["version"] == v and e["action"] == "promote"]
    assert len(promoted) == 1, registry.history()
    assert promoted[0]["reason"] == "checked by hand (serving check skipped)"
    assert promoted[0]["automatic"] is False and promoted[0]["gate"] == "manual"
    # the package is the registry version's own weights, and says it was a human's approval
    import yaml
    meta = yaml.safe_load((home / "models" / "item" / tag.split(":")[1] / "model.yaml").read_text())
    assert meta["labels"]["promotion"] == "manual" and meta["metadata"]["registry_version"] == v


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    return struct.unpack(">II", data[16:24])


def test_item_gate_screenshot_renders_the_gate_report_with_headless_chromium(cli_registry, tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        # the project's rule: a missing tool is a broken set-up, not a reason to skip
        pytest.fail("item gate screenshot needs a headless Chromium: none on PATH (`chromium` / `chromium-browser`); "
                    "install it (Debian: apt-get install --no-install-recommends chromium)")
    out = tmp_path / "gate.png"
    proc = _item(["gate", "screenshot", cli_registry["version"], "--output", str(out), "--chromium", binary],
                 {"ITEM_REGISTRY": cli_registry["root"], "HOME": str(tmp_path)}, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert f"wrote {out}" in proc.stdout
    data = out.read_bytes()
    assert _png_size(data) == (1400, 2600)                     # the window size the command asks for
    from PIL import Image
    image = Image.open(out).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20, "the screenshot is blank"   # text, bars, table borders
    # a version without a report folder: a clear error naming it, no PNG
    missing = _item(["gate", "screenshot", "no-such-version", "--output", str(tmp_path / "x.png"), "--chromium", binary],
                    {"ITEM_REGISTRY": cli_registry["root"]}, timeout=60)
    assert missing.returncode != 0 and "no-such-version" in missing.stdout + missing.stderr
    assert not (tmp_path / "x.png").exists()
