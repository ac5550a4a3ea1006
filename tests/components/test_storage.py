"""Google Cloud Storage through components.storage, against a real gcp-storage-emulator started by the
tests (fixture ``gcs_emulator``): the storage interface, catalog shards and gs:// image URIs, the
serving traffic log, the model registry's API, and a full local pipeline run (kfp.local, ``tiny``
profile) with its catalog, registry and reports on gs://.

The emulator does not enforce generation preconditions (``test_emulator_ignores_generation_preconditions``
shows it), so the champion pointer's compare-and-swap on GCS is tested with the real
``google.cloud.storage`` client over a fake transport that adds exactly that check in front of the
emulator (:class:`PreconditionEnforcingSession`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse

import numpy as np
import pytest
import requests
import yaml

from item_model import image_utils
from components import storage
from tests.conftest import write_slice

ITEM = str(Path(sys.executable).parent / "item")


def _fake_model(path: Path, seed: int) -> Path:
    """A model folder with a real (small) safetensors file: the registry only stores and hashes it."""
    import torch
    from safetensors.torch import save_file
    path.mkdir(parents=True)
    save_file({"w": torch.full((64, 64), float(seed))}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "item", "seed": seed}))
    return path


# --------------------------------------------------------------------------- the storage interface
def test_storage_interface_on_emulator(gcs_prefix, tmp_path, monkeypatch):
    root = storage.join(gcs_prefix, "things")
    assert storage.write_json(storage.join(root, "a.json"), {"x": 1}) > 0           # generation returned
    storage.write_text(storage.join(root, "sub/b.txt"), "hello")
    assert storage.read_json(storage.join(root, "a.json")) == {"x": 1}
    assert storage.read_text(storage.join(root, "sub/b.txt")) == "hello"
    assert storage.list_files(root) == ["a.json", "sub/b.txt"]
    assert storage.list_files(root, glob="*.json") == ["a.json"]
    assert storage.exists(storage.join(root, "a.json")) and not storage.exists(storage.join(root, "nope"))
    with pytest.raises(storage.StorageNotFound, match=re.escape(storage.join(root, "nope"))):
        storage.read_bytes(storage.join(root, "nope"))
    with pytest.raises(storage.StorageError, match="names no bucket"):
        storage.read_bytes("gs:///x")

    # a large file goes up as a resumable upload in chunks (threshold lowered to keep the test small)
    monkeypatch.setattr(storage, "RESUMABLE_THRESHOLD", 512 * 1024)
    monkeypatch.setattr(storage, "CHUNK_SIZE", 256 * 1024)
    chunk_sizes = []
    real_blob = storage._blob
    monkeypatch.setattr(storage, "_blob", lambda uri, client=None, chunk_size=None: (
        chunk_sizes.append(chunk_size), real_blob(uri, client, chunk_size))[1])
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(1024 * 1024 + 17))
    storage.upload_file(big, storage.join(root, "big.bin"))
    assert chunk_sizes[-1] == 256 * 1024
    assert storage.read_bytes(storage.join(root, "big.bin")) == big.read_bytes()

    # folders: upload, local copy, append, delete
    (tmp_path / "tree" / "d").mkdir(parents=True)
    (tmp_path / "tree" / "d" / "f.txt").write_text("f")
    (tmp_path / "tree" / "g.txt").write_text("g")
    storage.upload_tree(tmp_path / "tree", storage.join(gcs_prefix, "tree"))
    with storage.local_copy(storage.join(gcs_prefix, "tree")) as local:
        assert (local / "d" / "f.txt").read_text() == "f" and (local / "g.txt").read_text() == "g"
    for line in ("one", "two"):
        storage.append_line(storage.join(root, "log.jsonl"), line)
    assert storage.read_text(storage.join(root, "log.jsonl")) == "one\ntwo\n"
    storage.delete_tree(storage.join(gcs_prefix, "tree"))
    assert storage.list_files(storage.join(gcs_prefix, "tree")) == []


def test_catalog_and_image_uris_from_gcs(gcs_prefix, tmp_path):
    from components import catalog as cat
    local = write_slice(tmp_path / "catalog", n_plain=40, n_groups=3)
    uri = storage.join(gcs_prefix, "catalog")
    storage.upload_tree(local, uri)
    assert cat.shard_paths(uri) == [storage.join(uri, "data", "train-00000-of-00001.parquet")]
    from_gcs, from_disk = cat.read_catalog(uri), cat.read_catalog(local)
    assert cat.fingerprint(from_gcs) == cat.fingerprint(from_disk) and from_gcs["group_id"].notna().sum() > 0
    # an image referenced by gs:// URI instead of inline bytes
    row = from_disk.iloc[0]
    storage.write_bytes(storage.join(gcs_prefix, "images", "0.jpg"), row["image_bytes"])
    ref = {"product_id": row["product_id"], "image_bytes": None, "image_uri": storage.join(gcs_prefix, "images", "0.jpg")}
    assert image_utils.decode_image(image_utils.load_image_bytes(ref)).shape[2] == 3
    with pytest.raises(cat.CatalogError, match="holds no data/"):
        cat.shard_paths(storage.join(gcs_prefix, "no-catalog"))


def test_traffic_log_on_gcs(gcs_prefix):
    from components.storage.layout import read_traffic_log, traffic_files
    from serving.traffic_log import TrafficLog, TrafficLogConfig
    clock = lambda: datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    log = TrafficLog(TrafficLogConfig(gcs_prefix, sample_rate=1.0, rows_per_file=4), "item:v1", seed=0, clock=clock)
    emb = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    log.record(emb, ["joint"] * 6, [True] * 6, [True] * 6, [10] * 6)
    log.flush()
    files = traffic_files(gcs_prefix)
    assert len(files) == 2 and all(f.startswith(gcs_prefix + "/traffic/2026-05-01/traffic-") for f in files)
    df = read_traffic_log(gcs_prefix)
    assert len(df) == 6 and np.allclose(np.stack(df["embedding"]), emb)


# --------------------------------------------------------------------------- registry on gs://
def test_registry_round_trip_on_gcs(gcs_prefix, tmp_path, monkeypatch):
    from components.registry import ConcurrentPromotionError, ModelRegistry, RegistryError
    registry = ModelRegistry(storage.join(gcs_prefix, "registry"), cache_dir=tmp_path / "cache")
    (tmp_path / "eval.json").write_text(json.dumps({"models": {}}))
    a = registry.register(_fake_model(tmp_path / "a", 1), {"eval.json": tmp_path / "eval.json"}, {"run": "a"})
    b = registry.register(_fake_model(tmp_path / "b", 2), {}, {"run": "b"})
    assert registry.versions() == [a, b] and registry.resolve("latest") == b and registry.resolve(a[:20]) == a
    assert registry.info(a)["run"] == "a" and registry.champion() is None
    local = registry.version_path(a)                                    # downloaded once into the cache
    assert local.is_relative_to(tmp_path / "cache") and (local / "model" / "model.safetensors").exists()
    assert json.loads((local / "eval.json").read_text()) == {"models": {}}

    registry.promote(a, gate="t", automatic=True, reason="first", expected_generation=0)
    with pytest.raises(ConcurrentPromotionError, match="moved"):
        registry.promote(b, gate="t", automatic=True, reason="stale", expected_generation=0)
    registry.promote(b, gate="t", automatic=True, reason="second", expected_generation=1)
    registry.reject(b, reason="regressed")                               # rolls back to a
    assert registry.champion()["version"] == a and registry.champion()["generation"] == 3
    assert [h["action"] for h in registry.history()] == ["promote", "promote", "reject", "promote"]
    assert registry.check() == []
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.version_path("nope")

    # a crashed upload (files without version.json) is never a version
    storage.write_bytes(storage.join(registry.versions_dir, "20990101T000000000000Z-deadbeef", "model",
                                     "model.safetensors"), b"partial")
    assert registry.versions() == [a, b]
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.promote("20990101T000000000000Z-deadbeef", gate="t", automatic=False, reason="x")

    # an upload failing mid-version leaves nothing visible
    real_upload = storage.upload_file
    def failing(src, location, **kw):
        if str(location).endswith("/model/config.json"):
            raise storage.StorageError(f"uploading to {location}: connection reset")
        return real_upload(src, location, **kw)
    monkeypatch.setattr(storage, "upload_file", failing)
    with pytest.raises(storage.StorageError, match="connection reset"):
        registry.register(_fake_model(tmp_path / "c", 3), {}, {})
    assert registry.versions() == [a, b]


# --------------------------------------------------------------------------- generation preconditions
def test_emulator_ignores_generation_preconditions(gcs_prefix):
    """Why the fake transport below exists: the pinned gcp-storage-emulator accepts a write whose
    ``ifGenerationMatch`` is stale (real GCS answers 412 Precondition Failed)."""
    uri = storage.join(gcs_prefix, "pointer.json")
    first = storage.write_text(uri, "1")
    storage.write_text(uri, "2", if_generation_match=first)
    storage.write_text(uri, "3", if_generation_match=first)             # stale: GCS would refuse this
    assert storage.read_text(uri) == "3"


class PreconditionEnforcingSession(requests.Session):
    """FAKE transport, used because the emulator does not enforce generation preconditions: a
    ``requests.Session`` handed to the real ``google.cloud.storage.Client`` (``_http=``) that forwards
    every request to the real emulator, but first checks ``ifGenerationMatch`` the way GCS does (the
    object's current generation, 0 when absent) and answers ``412 Precondition Failed`` when it is
    stale. Check and write run under one lock shared by all sessions (GCS is atomic per object).
    ``hold`` (a barrier) makes concurrent first writers of an object named ``*<hold_name>`` all arrive
    (each having read the same generation) before any is served.
    """

    def __init__(self, host: str, lock: threading.Lock, hold: threading.Barrier | None = None,
                 hold_name: str = "champion.json"):
        super().__init__()
        self.host, self.lock, self.hold, self.hold_name, self.refused = host, lock, hold, hold_name, 0

    def _target(self, url: str, data) -> tuple[str, str] | None:
        path = urlparse(url).path
        m = re.search(r"/b/([^/]+)/o/([^?]+)$", path)
        if m:
            return m.group(1), unquote(m.group(2))
        m = re.search(r"/upload/storage/v1/b/([^/]+)/o$", path)
        if m:
            q = parse_qs(urlparse(url).query)
            if "name" in q:
                return m.group(1), q["name"][0]
            body = data if isinstance(data, bytes) else (data.encode() if isinstance(data, str) else b"")
            name = re.search(rb'"name":\s*"([^"]+)"', body)
            return (m.group(1), name.group(1).decode()) if name else None
        return None

    def request(self, method, url, *args, **kwargs):
        wanted = parse_qs(urlparse(url).query).get("ifGenerationMatch")
        if not wanted:
            return super().request(method, url, *args, **kwargs)
        target = self._target(url, kwargs.get("data"))
        if target and target[1].endswith(self.hold_name) and method == "POST" and self.hold is not None:
            hold, self.hold = self.hold, None
            hold.wait(timeout=60)
        with self.lock:
            if target:
                meta = super().request("GET", f"{self.host}/storage/v1/b/{target[0]}/o/{quote(target[1], safe='')}")
                current = int(meta.json()["generation"]) if meta.status_code == 200 else 0
                if current != int(wanted[0]):
                    self.refused += 1
                    resp = requests.Response()
                    resp.status_code, resp.reason, resp.url = 412, "Precondition Failed", url
                    resp._content = json.dumps({"error": {"code": 412, "message": "Precondition Failed", "errors": [
                        {"reason": "conditionNotMet", "message": "Precondition Failed"}]}}).encode()
                    resp.headers["Content-Type"] = "application/json"
                    resp.request = requests.Request(method, url).prepare()
                    return resp
            return super().request(method, url, *args, **kwargs)


def _fake_client(host: str, lock: threading.Lock, hold=None, hold_name: str = "champion.json"):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs
    session = PreconditionEnforcingSession(host, lock, hold, hold_name)
    return gcs.Client(project="test", credentials=AnonymousCredentials(), _http=session), session


def test_stale_generation_is_refused_through_the_fake_transport(gcs_emulator, gcs_prefix):
    """FAKE transport (see PreconditionEnforcingSession): the real client's stale write is refused."""
    client, session = _fake_client(gcs_emulator["host"], threading.Lock())
    uri = storage.join(gcs_prefix, "pointer.json")
    first = storage.write_text(uri, "1", client=client, if_generation_match=0)
    storage.write_text(uri, "2", client=client, if_generation_match=first)
    with pytest.raises(storage.PreconditionFailed, match="pointer.json"):
        storage.write_text(uri, "3", client=client, if_generation_match=first)
    assert storage.read_text(uri, client=client) == "2" and session.refused == 1


def test_concurrent_promotion_on_gcs_has_one_winner(gcs_emulator, gcs_prefix, tmp_path):
    """Two pipelines promote different versions at the same time from the same champion pointer:
    both read it, both pass their own checks, both write; exactly one wins, the other gets
    ConcurrentPromotionError. FAKE transport (see PreconditionEnforcingSession) in front of the real
    emulator, because the emulator does not enforce ``if_generation_match``."""
    from components.registry import ConcurrentPromotionError, ModelRegistry
    root = storage.join(gcs_prefix, "registry")
    setup = ModelRegistry(root)
    a = setup.register(_fake_model(tmp_path / "a", 1), {}, {})
    b = setup.register(_fake_model(tmp_path / "b", 2), {}, {})
    first = setup.register(_fake_model(tmp_path / "c", 3), {}, {})
    setup.promote(first, gate="t", automatic=True, reason="existing champion")

    lock, hold = threading.Lock(), threading.Barrier(2)
    results: dict[str, object] = {}

    def promote(version: str):
        client, _ = _fake_client(gcs_emulator["host"], lock, hold)
        try:
            results[version] = ModelRegistry(root, client=client).promote(
                version, gate=f"run-{version[-8:]}", automatic=True, reason="blessed", expected_generation=1)
        except Exception as exc:  # noqa: BLE001 - collected and checked below
            results[version] = exc

    threads = [threading.Thread(target=promote, args=(v,)) for v in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    errors = [r for r in results.values() if isinstance(r, Exception)]
    winners = [v for v, r in results.items() if isinstance(r, dict)]
    assert len(winners) == 1 and len(errors) == 1, results
    assert isinstance(errors[0], ConcurrentPromotionError)
    assert "moved by another promotion" in str(errors[0]) and "champion.json" in str(errors[0])
    champion = setup.champion()
    assert champion["version"] == winners[0] and champion["generation"] == 2 and champion["previous"] == first
    assert [h["version"] for h in setup.history() if h["action"] == "promote"] == [first, winners[0]]


def _race(n: int, work) -> list:
    """Run ``work(i)`` in ``n`` threads; return what each returned or raised."""
    results: list = [None] * n

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - returned and checked by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_racing_history_appenders_lose_no_line(gcs_emulator, gcs_prefix):
    """Four writers append to the same ``history.jsonl`` object at once, each first write held until all
    four have read the same generation: three are refused (412) and retry with backoff; every line
    of every writer is there once. FAKE transport (see PreconditionEnforcingSession) in front of the
    real emulator, because the emulator does not enforce ``if_generation_match``."""
    uri = storage.join(gcs_prefix, "registry", "history.jsonl")
    lock, hold = threading.Lock(), threading.Barrier(4)
    sessions = []

    def append(i: int) -> None:
        client, session = _fake_client(gcs_emulator["host"], lock, hold, hold_name="history.jsonl")
        sessions.append(session)
        for j in range(3):
            storage.append_line(uri, json.dumps({"writer": i, "line": j}), client=client)

    assert _race(4, append) == [None] * 4
    lines = [json.loads(x) for x in storage.read_text(uri).splitlines()]
    assert sorted((x["writer"], x["line"]) for x in lines) == [(i, j) for i in range(4) for j in range(3)]
    for i in range(4):                                   # each writer's own lines stay in its order
        assert [x["line"] for x in lines if x["writer"] == i] == [0, 1, 2]
    assert sum(s.refused for s in sessions) >= 3


def test_racing_drift_calibrations_on_gcs_keep_every_entry(gcs_emulator, gcs_prefix):
    """Two monitoring runs store calibrations of the same model version on a gs:// storage root at
    once (each its own entry): both entries survive; before, the last writer's file replaced the
    other's. FAKE transport (see PreconditionEnforcingSession): the emulator ignores preconditions."""
    from monitoring.calibration import CalibrationStore
    lock, hold = threading.Lock(), threading.Barrier(2)
    sessions = []

    def put(i: int):
        client, session = _fake_client(gcs_emulator["host"], lock, hold, hold_name="v1.json")
        sessions.append(session)
        return CalibrationStore(gcs_prefix, client=client).put("item:v1", f"joint/n={i}", {"threshold": float(i)})

    paths = _race(2, put)
    assert paths == [storage.join(gcs_prefix, "calibration", "item", "v1.json")] * 2
    stored = CalibrationStore(gcs_prefix).load("item:v1")
    assert stored["entries"] == {"joint/n=0": {"threshold": 0.0}, "joint/n=1": {"threshold": 1.0}}
    assert sum(s.refused for s in sessions) == 1
    assert CalibrationStore(gcs_prefix).get("item:v1", "joint/n=1") == {"threshold": 1.0}


# --------------------------------------------------------------------------- the pipeline on gs://
@pytest.mark.e2e
def test_pipeline_run_with_catalog_registry_and_reports_on_gcs(gcs_emulator, gcs_prefix, tmp_path):
    """`item run` (kfp.local, tiny profile) reading the catalog from gs://, registering and promoting
    into a gs:// registry and uploading the run's reports to gs://; `item gate` reads it back."""
    from components.registry import ModelRegistry
    local = write_slice(tmp_path / "catalog", n_plain=120, n_groups=12)
    catalog = storage.join(gcs_prefix, "catalog")
    storage.upload_tree(local, catalog)
    registry_uri, runs_uri = storage.join(gcs_prefix, "registry"), storage.join(gcs_prefix, "runs")
    gate_file = tmp_path / "gate.yaml"
    gate_file.write_text(yaml.safe_dump({"criteria": [{"metric": "item.recall@10", "min": 0.0}]}))
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "ITEM_REGISTRY_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([ITEM, "run", "--catalog", catalog, "--profile", "tiny", "--gate-config", str(gate_file),
                           "--output-dir", runs_uri, "--registry", registry_uri, "--bentoml-home",
                           str(tmp_path / "bentoml"), "--checkpoint-root", str(tmp_path / "ckpt"), "--json"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [n for n in storage.list_files(runs_uri) if n.endswith("/summary.json")]
    assert len(summaries) == 1
    summary = storage.read_json(storage.join(runs_uri, summaries[0]))
    assert summary["run_dir"].startswith(runs_uri) and summary["catalog"]["source"] == catalog
    for key in ("eval_json", "gate_report", "gate_report_html", "blessing_json", "model_dir"):
        assert summary[key].startswith(runs_uri), key
    assert "NOT BLESSED" not in storage.read_text(summary["gate_report"])
    assert storage.exists(storage.join(summary["model_dir"], "model.safetensors"))

    registry = ModelRegistry(registry_uri, cache_dir=tmp_path / "cache2")
    version = summary["registry_version"]
    assert registry.versions() == [version] and registry.champion()["version"] == version
    files = set(storage.list_files(storage.join(registry.versions_dir, version)))
    assert {"version.json", "eval.json", "blessing.json", "gate_report.html", "gate_report.md",
            "model/model.safetensors"} <= files
    assert summary["bento_model"] and summary["bento_model"].startswith("item:")
    shown = subprocess.run([ITEM, "gate", "show", "champion", "--registry", registry_uri], capture_output=True,
                           text=True, env={**env, "COLUMNS": "200"}, timeout=120)
    assert shown.returncode == 0 and version in shown.stdout, shown.stderr[-2000:]
    assert "Gate of" in shown.stdout and ": BLESSED" in shown.stdout and "NOT BLESSED" not in shown.stdout


def test_download_tree_refuses_objects_that_escape_the_folder(gcs_prefix, tmp_path):
    """GCS allows object names like ``versions/V/../../x``: a writer of the bucket must not be able to
    make a reader write outside its download folder (real emulator)."""
    version = f"{gcs_prefix}/versions/V"
    storage.write_bytes(f"{version}/model.safetensors", b"weights")
    bucket, name = storage.split_gcs(version)
    escape = tmp_path / "escape.txt"
    # an object named "<prefix>/versions/V/" + an absolute path: relative to the folder it is that path
    # (the emulator cannot store names with '..' segments; the check refuses both kinds)
    storage.gcs_client().bucket(bucket).blob(f"{name}/{escape}").upload_from_string(b"owned")
    names = storage.list_files(version)
    assert str(escape) in names                                                # the emulator stored it as named
    dest = tmp_path / "dest"
    with pytest.raises(storage.UnsafeObjectName, match="escape.txt"):
        storage.download_tree(version, dest)
    assert not list(tmp_path.rglob("escape.txt")) and not dest.exists()        # nothing written at all


def test_download_tree_refuses_dot_dot_names(tmp_path, monkeypatch):
    """Real GCS stores ``versions/V/../../x`` as named; the emulator drops the connection on such a name,
    so here (and only here) the listing is replaced by one that returns it (a mock, on purpose)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "ok.txt").write_text("fine")
    (tmp_path / "escape.txt").write_text("outside")
    monkeypatch.setattr(storage, "list_files", lambda location, client=None: ["sub/ok.txt", "../escape.txt"])
    with pytest.raises(storage.UnsafeObjectName, match=r"\.\./escape.txt"):
        storage.download_tree(src / "sub", tmp_path / "dest" / "inner")
    assert not (tmp_path / "dest").exists()


def test_orphan_objects_of_a_crashed_registration_are_cleaned(gcs_prefix, packaged_model):
    from components.registry import ModelRegistry
    root = f"{gcs_prefix}/registry"
    orphan = f"{root}/versions/20260101T000000000000Z-deadbeef"
    storage.write_bytes(f"{orphan}/model/model.safetensors", b"half an upload")      # no version.json marker
    ModelRegistry(root).register(packaged_model["model_dir"], {}, {"blessed": True})
    assert storage.list_files(orphan)                                                # within the grace period
    registry = ModelRegistry(root, staging_grace_s=0)
    v = registry.register(packaged_model["model_dir"], {}, {"blessed": True})
    assert storage.list_files(orphan) == [] and v in registry.versions()


class LostResponseSession(PreconditionEnforcingSession):
    """FAKE transport (as PreconditionEnforcingSession): the first conditional write of
    ``champion.json`` reaches the emulator and commits, but its response is replaced by a 503, as when
    a response is lost on the way back; the client library then retries the write."""

    lost = 0

    def request(self, method, url, *args, **kwargs):
        target = self._target(url, kwargs.get("data")) if method == "POST" else None
        resp = super().request(method, url, *args, **kwargs)
        if target and target[1].endswith("champion.json") and resp.status_code == 200 and not self.lost:
            self.lost += 1
            lost = requests.Response()
            lost.status_code, lost.reason, lost.url = 503, "Service Unavailable", url
            lost._content = b'{"error": {"code": 503, "message": "backend error"}}'
            lost.headers["Content-Type"] = "application/json"
            lost.request = requests.Request(method, url).prepare()
            return lost
        return resp


def test_promotion_survives_a_lost_response(gcs_emulator, gcs_prefix, tmp_path):
    """The pointer write committed but its response was lost; the library's retry meets the generation
    its own write created (412). The registry recognises its own write: the promotion succeeds and the
    history line is written (before: ConcurrentPromotionError and no history line)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from components.registry import ModelRegistry
    root = storage.join(gcs_prefix, "registry")
    setup = ModelRegistry(root)
    first = setup.register(_fake_model(tmp_path / "a", 1), {}, {})
    setup.promote(first, gate="t", automatic=True, reason="existing champion")
    second = setup.register(_fake_model(tmp_path / "b", 2), {}, {})
    session = LostResponseSession(gcs_emulator["host"], threading.Lock())
    client = gcs.Client(project="test", credentials=AnonymousCredentials(), _http=session)
    pointer = ModelRegistry(root, client=client).promote(second, gate="t", automatic=True, reason="blessed")
    assert session.lost == 1 and session.refused >= 1                   # the response was lost, the retry refused
    assert setup.champion() == pointer and pointer["generation"] == 2
    assert [h["version"] for h in setup.history() if h["action"] == "promote"] == [first, second]
