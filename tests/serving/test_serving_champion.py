"""Which model a server serves: the model registry's champion, not merely the newest package.

A real registry (local folder) with a promoted champion, a real BentoML store holding the
champion's package and a newer package that is not the champion, and a real ``bentoml serve``
started with no tag: it must serve the champion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.test_serving import QUIET_ENV, ROOT, Server

SAVE = ("import sys; from serving.store import save_to_bentoml; "
        "print(save_to_bentoml(*sys.argv[1:5], 'item', sys.argv[5], index_dir=sys.argv[6], registry_version=sys.argv[7]))")


@pytest.fixture(scope="module")
def champion_store(packaged_model, tmp_path_factory):
    """``{"home", "registry", "champion_tag", "newer_tag", "version"}``: a fresh store and registry."""
    from item_model.lifecycle.registry import ModelRegistry

    tmp = tmp_path_factory.mktemp("champion")
    m = packaged_model
    root = Path(m["eval_path"]).parent
    registry = ModelRegistry(str(tmp / "registry"))
    version = registry.register(m["model_dir"], {"eval.json": m["eval_path"]}, {"blessed": True})
    registry.promote(version, gate="test gate", automatic=True, reason="test", expected_generation=0)
    home = tmp / "bentoml"
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(home)}

    def save(registry_version: str) -> str:
        args = [m["model_dir"], m["eval_path"], str(root / "blessing.json"), m["catalog_dir"], str(home),
                m["index_dir"], registry_version]
        out = subprocess.run([sys.executable, "-c", SAVE, *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip().splitlines()[-1]

    champion = save(version)
    newer = save("")                                   # newer than the champion's package, not the champion
    return {"home": str(home), "registry": str(tmp / "registry"), "champion_tag": champion, "newer_tag": newer,
            "version": version}


def test_champion_tag_reads_the_pointer_and_the_store(champion_store, tmp_path):
    from serving.store import champion_tag

    s = champion_store
    assert s["champion_tag"] != s["newer_tag"]
    assert champion_tag(s["home"], s["registry"]) == s["champion_tag"]
    assert champion_tag(s["home"], str(tmp_path / "no-registry")) is None          # no champion yet
    with pytest.raises(LookupError, match=f"names {s['version']} as champion.*holds no package"):
        champion_tag(str(tmp_path / "empty-store"), s["registry"])


def test_server_without_a_tag_serves_the_champion(champion_store, tmp_path):
    s = champion_store
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": s["home"], "ITEM_REGISTRY": s["registry"],
           "ITEM_STORAGE_ROOT": str(tmp_path / "storage")}
    env.pop("ITEM_MODEL_TAG", None)
    srv = Server("serving.service:ItemService", env, ROOT, tmp_path / "server.log")
    try:
        r = httpx.post(f"{srv.url}/embed", json={"listings": [{"title": "Lucera Women Silver Earrings"}]}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()[0]["model_version"] == s["champion_tag"]
    finally:
        srv.stop()


def test_item_serve_refuses_a_champion_that_was_never_packaged(champion_store, tmp_path):
    from click.testing import CliRunner

    from pipelines.cli_serve import serve

    env = {"ITEM_REGISTRY": champion_store["registry"]}
    result = CliRunner().invoke(serve, ["--bentoml-home", str(tmp_path / "empty"), "--port", "3999"], env=env)
    assert result.exit_code == 1
    assert f"names {champion_store['version']} as champion" in result.output and "item gate approve" in result.output
