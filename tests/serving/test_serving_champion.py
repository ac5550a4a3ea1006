"""Which model a server serves: the model registry's champion, not merely the newest package.

A real registry (local folder) with a promoted champion, a real BentoML store holding the
champion's package and a newer package that is not the champion, and a real ``bentoml serve``
started with no tag: it must serve the champion."""

from __future__ import annotations

import json
import os
import time
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
    from components.registry import ModelRegistry

    tmp = tmp_path_factory.mktemp("champion")
    m = packaged_model
    registry = ModelRegistry(str(tmp / "registry"))
    version = registry.register(m["model_dir"], {"eval.json": m["eval_path"]}, {"blessed": True})
    registry.promote(version, gate="test gate", automatic=True, reason="test", expected_generation=0)
    home = tmp / "bentoml"

    champion = _save(m, home, version)
    newer = _save(m, home, "")                         # newer than the champion's package, not the champion
    return {"home": str(home), "registry": str(tmp / "registry"), "champion_tag": champion, "newer_tag": newer,
            "version": version}


def _save(m: dict, home: Path, registry_version: str, model_dir: str | None = None) -> str:
    """Package the test model (or ``model_dir``) into the store at ``home`` as the package of
    ``registry_version``; its tag."""
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(home)}
    args = [model_dir or m["model_dir"], m["eval_path"], str(Path(m["eval_path"]).parent / "blessing.json"), m["catalog_dir"],
            str(home), m["index_root"], registry_version]
    out = subprocess.run([sys.executable, "-c", SAVE, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


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

    from pipelines.cli.serve import serve

    env = {"ITEM_REGISTRY": champion_store["registry"]}
    result = CliRunner().invoke(serve, ["--bentoml-home", str(tmp_path / "empty"), "--port", "3999"], env=env)
    assert result.exit_code == 1
    assert f"names {champion_store['version']} as champion" in result.output and "item gate approve" in result.output



@pytest.mark.e2e
def test_promotion_and_rollback_are_served_without_a_failed_request(champion_store, packaged_model, tmp_path):
    """A server started without a tag follows the champion pointer. Under a steady load of concurrent
    /embed and /similar requests, a challenger is promoted and then rolled back (`reject`): zero
    failed requests, the versions named in the responses go champion -> challenger -> champion, and
    /readyz (polled from another process) answers 200 throughout."""
    import shutil
    import threading
    import time

    from components.registry import ModelRegistry
    from tests.serving.test_serving import READYZ_POLLER, _metric

    s = champion_store
    home, reg_root = tmp_path / "bentoml", tmp_path / "registry"          # copies: the module's store stays as is
    shutil.copytree(s["home"], home)
    shutil.copytree(s["registry"], reg_root)
    registry = ModelRegistry(str(reg_root))
    challenger = registry.register(packaged_model["model_dir"], {"eval.json": packaged_model["eval_path"]},
                                   {"blessed": True})
    challenger_tag = _save(packaged_model, home, challenger)
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(home), "ITEM_REGISTRY": str(reg_root),
           "ITEM_STORAGE_ROOT": str(tmp_path / "storage"), "ITEM_WATCH_INTERVAL_S": "0.5"}
    env.pop("ITEM_MODEL_TAG", None)
    srv = Server("serving.service:ItemService", env, ROOT, tmp_path / "server.log")
    stop, seen, failures = threading.Event(), [], []

    def load(i: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if i % 2:
                        r = client.post("/embed", json={"listings": [{"title": f"silver earrings {i}"}]})
                        version = r.json()[0]["model_version"] if r.status_code == 200 else None
                    else:
                        r = client.post("/similar", json={"product_id": _first_id(packaged_model), "k": 5})
                        version = r.json()["model_version"] if r.status_code == 200 else None
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                seen.append((started, time.monotonic(), version))

    def wait_for(tag: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not (seen and seen[-1][2] == tag):
            assert time.monotonic() < deadline, f"still serving {seen[-1][2] if seen else None}, waited for {tag}"
            time.sleep(0.2)
        return time.monotonic()

    poller = subprocess.Popen([sys.executable, "-c", READYZ_POLLER, srv.url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for(s["champion_tag"])
        t_promote = time.monotonic()
        registry.promote(challenger, gate="test", automatic=False, reason="hot-swap test")
        t_swapped = wait_for(challenger_tag)
        time.sleep(1.0)
        t_reject = time.monotonic()
        registry.reject(challenger, reason="hot-swap test: roll back")
        t_back = wait_for(s["champion_tag"])
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        latencies = json.loads(poller.communicate("", timeout=60)[0])
        metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
        log = srv.log()
        srv.stop()
    assert failures == [], failures[:5]
    # in-flight requests finish on the model they started on, so completion order may interleave near a
    # swap; but every request sent after the first answer of a version got that version (or a newer one)
    def versions(since: float, until: float = float("inf")) -> set:
        return {v for start, end, v in seen if start > since and end < until}
    assert versions(0, t_promote) == {s["champion_tag"]}
    assert versions(t_swapped, t_reject) == {challenger_tag}
    assert versions(t_back) == {s["champion_tag"]}
    assert len(seen) > 50 and latencies and all(x != float("inf") for x in latencies)
    assert _metric(metrics, "item_model_swaps_total") == 2                  # promoted, then rolled back
    assert f"now serving {challenger_tag} (was {s['champion_tag']}" in log                  # in the server's log
    print(f"hot swap under load: {len(seen)} requests, 0 failed; /readyz {len(latencies)} polls, "
          f"max {1e3 * max(latencies):.0f} ms")


def _first_id(packaged_model: dict) -> str:
    import pandas as pd
    return str(pd.read_parquet(Path(packaged_model["index_dir"]) / "listings.parquet")["product_id"].iloc[0])



@pytest.mark.e2e
def test_shadow_challenger_is_compared_on_live_traffic(champion_store, packaged_model, tmp_path):
    """`--shadow VERSION`: the champion answers every request; the challenger (here the champion with
    its image stream cut, so joint queries find other neighbours) answers each one again off the
    users' path, and each comparison is logged; `item gate show VERSION` reads the log back."""
    import shutil

    import pandas as pd
    import torch

    from components.registry import ModelRegistry
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    from serving.shadow import read_shadow_log

    s = champion_store
    home, reg_root, storage_root = tmp_path / "bentoml", tmp_path / "registry", tmp_path / "storage"
    shutil.copytree(s["home"], home)
    shutil.copytree(s["registry"], reg_root)
    cut = tmp_path / "cut"
    model = ItemModel.from_pretrained(packaged_model["model_dir"])
    with torch.no_grad():
        model.patch_embedding.weight.zero_()
    model.save_pretrained(cut)
    ItemProcessor.from_pretrained(packaged_model["model_dir"]).save_pretrained(cut)
    registry = ModelRegistry(str(reg_root))
    challenger = registry.register(str(cut), {"eval.json": packaged_model["eval_path"],
                                              "blessing.json": str(Path(packaged_model["eval_path"]).parent / "blessing.json")},
                                             {"blessed": True})
    challenger_tag = _save(packaged_model, home, challenger, model_dir=str(cut))
    assert challenger_tag not in (s["champion_tag"], s["newer_tag"])
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(home), "ITEM_REGISTRY": str(reg_root),
           "ITEM_STORAGE_ROOT": str(storage_root), "ITEM_MODEL_TAG": s["champion_tag"], "ITEM_SHADOW": challenger,
           "ITEM_SHADOW_SAMPLE": "1.0", "ITEM_SHADOW_ROWS_PER_FILE": "5"}
    rows = pd.read_parquet(Path(packaged_model["catalog_dir"]) / "catalog.parquet").head(8)
    import base64
    b64 = lambda b: base64.b64encode(b).decode("ascii")     # noqa: E731
    srv = Server("serving.service:ItemService", env, ROOT, tmp_path / "server.log")
    answered = {}
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            for pid in rows["product_id"].astype(str).head(5):
                r = client.post("/similar", json={"product_id": pid, "k": 10})
                assert r.status_code == 200 and r.json()["model_version"] == s["champion_tag"], r.text
                answered[pid] = [n["product_id"] for n in r.json()["results"]]
            for t, img in zip(rows["title"].head(3), rows["image_bytes"].head(3)):
                r = client.post("/similar", json={"listing": {"title": t, "image": b64(img)}, "k": 10})
                assert r.status_code == 200, r.text
            r = client.post("/embed", json={"listings": [{"title": t, "image": b64(img)} for t, img
                                                         in zip(rows["title"].tail(4), rows["image_bytes"].tail(4))]})
            assert r.status_code == 200 and {e["model_version"] for e in r.json()} == {s["champion_tag"]}
            deadline = time.time() + 60                  # the comparisons run after the answers
            while len(list((storage_root / "shadow" / challenger).glob("*.jsonl"))) < 2 and time.time() < deadline:
                time.sleep(0.2)
    finally:
        srv.stop()                                        # shutdown writes the rest of the log
    logged = read_shadow_log(str(storage_root), challenger)
    assert len(logged) == 5 + 3 + 4
    assert {r["route"] for r in logged} == {"/similar", "/embed"}
    # the shadow that ran is the challenger's own package (the one ITEM_SHADOW names), never the champion
    assert {r["challenger"] for r in logged} == {challenger_tag}, {r["challenger"] for r in logged}
    assert {r["champion"] for r in logged} == {s["champion_tag"]}
    for r in logged:
        assert 0.0 <= r["overlap@10"] <= 1.0 and len(r["champion_top10"]) == 10 and len(r["challenger_top10"]) == 10
        assert r["challenger_ms"] > 0
        if r["product_id"] is not None:                   # the logged champion list is what the user got
            assert r["champion_top10"] == answered[r["product_id"]]
    joint = [r["overlap@10"] for r in logged if r["query_kind"] == "joint"]
    assert min(joint) < 1.0                               # the cut image stream changes joint neighbours
    report = tmp_path / "live.html"
    shown = subprocess.run([str(Path(sys.executable).parent / "item"), "gate", "show", challenger, "--storage-root",
                            str(storage_root), "--live-html", str(report)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "ITEM_REGISTRY": str(reg_root), "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert f"Live traffic: {challenger} in shadow (12 requests" in shown.stdout
    assert "Overlap@10 with the champion" in shown.stdout and "disagree (Overlap@10" in shown.stdout
    page = report.read_text()
    assert "Where they disagree most" in page and "data:image/png;base64," in page
