"""The serving check before a promotion (TFX's InfraValidator, done for BentoML): the packaged
challenger is started in a real ``bentoml serve`` on a free loopback port, canned requests are sent
(joint, title-only and photo-only ``/embed``; ``/similar`` by a catalog ``product_id`` and by a
listing), and the check passes only when every answer is 200, every vector equals the in-process
:meth:`ItemModel.embed` of the same input to ``tolerance``, the ``/similar`` scores equal the
in-process cosine similarities, and no request took longer than ``max_latency_ms``.

The training pipeline runs it between ``package`` and ``promote`` (``components/serving_check.py``)
and ``item gate approve`` runs it before it moves the champion pointer, so a model that cannot be
served never becomes the champion. In a cluster the server runs inside the task's pod.

Settings: the gate config's ``serving_check`` section (:class:`ServingCheckConfig`).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from components.storage.layout import INDEX_DIR, find_packaged_model
from components.steps.environment import OFFLINE_ENV

logger = logging.getLogger(__name__)

#: the folder ``bentoml serve serving.service:ItemService`` is started from (the project root, or
#: site-packages in the component image: ``serving`` is importable from both)
SERVICE_ROOT = Path(__file__).resolve().parents[1]


class ServingCheckError(ValueError):
    """The gate config's ``serving_check`` section is malformed (names the field)."""


@dataclass(frozen=True)
class ServingCheckConfig:
    """Settings of the serving check (gate config section ``serving_check``).

    Attributes:
        max_latency_ms: the slowest canned request may take this long (ms, wall time at the client).
        tolerance: largest absolute difference between a served and an in-process vector component
            (a model served in fp32).
        min_cosine: a model served in a faster precision (``inference_precision: bf16``): the lowest
            cosine of a served vector to the in-process fp32 vector of the same input.
        startup_timeout_s: how long the server may take to answer ``/readyz`` 200 (s).
        n_listings: canned listings per ``/embed`` request.
        enabled: False skips the check (the pipeline then promotes a blessed model unchecked).
    """

    max_latency_ms: float = 5000.0
    tolerance: float = 1e-5
    min_cosine: float = 0.99
    startup_timeout_s: float = 240.0
    n_listings: int = 4
    enabled: bool = True

    @classmethod
    def from_gate_config(cls, gate_config: dict | None) -> "ServingCheckConfig":
        """The ``serving_check`` section of a gate config (defaults where absent).

        Raises:
            ServingCheckError: an unknown field or a value of the wrong type or range.
        """
        section = (gate_config or {}).get("serving_check") or {}
        if not isinstance(section, dict):
            raise ServingCheckError("gate section 'serving_check' must be a mapping")
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(section) - set(known)
        if unknown:
            raise ServingCheckError(f"gate section 'serving_check' has unknown field(s) {sorted(unknown)}")
        for key, value in section.items():
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ServingCheckError("gate section 'serving_check': 'enabled' must be true or false")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ServingCheckError(f"gate section 'serving_check': {key!r} must be a number > 0, got {value!r}")
        return cls(**{k: (int(v) if k == "n_listings" else v) for k, v in section.items()})


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released; another process may take it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``bentoml serve serving.service:ItemService`` on a free loopback port, in its own process group.

    Use as a context manager, or call :meth:`stop`. ``env`` is added to this process's environment
    (with telemetry off and offline), or with ``inherit=False`` is the whole environment. Raises RuntimeError (with the log's tail) when the server exits
    or is not ready (``/readyz`` 200) within ``timeout`` seconds.
    """

    def __init__(self, env: dict[str, str], log_path: str | Path, timeout: float = 240.0,
                 target: str = "serving.service:ItemService", cwd: str | Path = SERVICE_ROOT, inherit: bool = True):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=str(cwd), env={**os.environ, **OFFLINE_ENV, **env} if inherit else dict(env), stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True)
        t0 = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"bentoml serve not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.5)
        self.startup_s = time.perf_counter() - t0

    def log(self) -> str:
        """The server's output so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of the process group after 30 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def canned_photos(n: int, seed: int = 0) -> list[bytes]:
    """``n`` deterministic photos as encoded files: JPEG and PNG, RGB, greyscale and RGBA, of
    different sizes (smooth gradients plus seeded noise), so the check exercises the decoder's paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (80 + 13 * i, 60 + 7 * i)
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([(x * 255 // w + 40 * i) % 256, y * 255 // h, (x + y + 30 * i) % 256], -1)
        rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
        image, fmt = Image.fromarray(rgb), ("JPEG", "PNG")[i % 2]
        if i % 4 == 2:
            image = image.convert("L")
        elif i % 4 == 3:
            image = image.convert("RGBA")
            fmt = "PNG"
        buf = io.BytesIO()
        image.save(buf, fmt)
        out.append(buf.getvalue())
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def serving_check(tag: str, bentoml_home: str | Path | None, config: ServingCheckConfig = ServingCheckConfig(),
                  log_path: str | Path | None = None) -> dict:
    """Serve the packaged model ``tag`` on loopback and check it against the in-process model.

    Args:
        tag: ``name:version`` in the BentoML store at ``bentoml_home``.
        log_path: where the server's output goes (default: a temporary file, its tail kept in the
            result on failure).

    Returns:
        ``{"passed": bool, "reason": str, "tag", "startup_s", "latency_ms": {request: ms},
        "max_abs_diff": {request: float}, "config": {...}}``; ``reason`` says what failed (the first
        failed request and why), or what passed.
    """
    import httpx

    found = find_packaged_model(tag, bentoml_home)
    result: dict = {"passed": False, "tag": tag, "config": asdict(config), "latency_ms": {}, "max_abs_diff": {}}
    if found is None:
        result["reason"] = f"{tag} is not in the BentoML store under {bentoml_home or '$BENTOML_HOME'}"
        return result
    tag, path = found
    result["tag"] = tag
    ids, index, expected, requests = _canned_requests(tag, path, bentoml_home, config)

    tmp = tempfile.TemporaryDirectory(prefix="item-serving-check-")
    log = Path(log_path) if log_path else Path(tmp.name) / "server.log"
    env = {"BENTOML_HOME": str(Path(bentoml_home).resolve()) if bentoml_home else os.environ.get("BENTOML_HOME", ""),
           "ITEM_MODEL_TAG": tag, "ITEM_TRAFFIC_SAMPLE": "0", "ITEM_STORAGE_ROOT": str(Path(tmp.name) / "storage"),
           "ITEM_API_KEY": ""}
    env = {k: v for k, v in env.items() if v or k == "ITEM_API_KEY"}

    def fail(reason: str) -> dict:
        result["reason"] = reason
        logger.warning("serving check of %s FAILED: %s", tag, reason)
        return result

    try:
        try:
            server = LocalServer(env, log, timeout=config.startup_timeout_s)
        except RuntimeError as exc:
            return fail(f"the server did not start: {str(exc)[:1500]}")
        result["startup_s"] = round(server.startup_s, 1)
        with server, httpx.Client(base_url=server.url, timeout=max(30.0, config.max_latency_ms / 1000 * 3)) as client:
            reason = (_check_embed(client, requests, expected, tag, config, result)
                      or _check_similar(client, ids, index, requests, config, result))
            if reason:
                return fail(reason)
        slowest = max(result["latency_ms"], key=result["latency_ms"].get)
        if result["latency_ms"][slowest] > config.max_latency_ms:
            return fail(f"{slowest} took {result['latency_ms'][slowest]:.0f} ms > max_latency_ms "
                        f"{config.max_latency_ms:.0f}")
        result["passed"] = True
        closeness = (f"within {max(result['max_abs_diff'].values()):.1e} of the in-process model"
                     if "min_cosine" not in result else
                     f"at cosine >= {min(result['min_cosine'].values()):.5f} to the in-process fp32 model "
                     f"({expected['precision']})")
        result["reason"] = (f"served on loopback in {result['startup_s']} s; {len(result['latency_ms'])} canned "
                            f"requests answered 200, vectors {closeness}, slowest "
                            f"{result['latency_ms'][slowest]:.0f} ms ({slowest})")
        logger.info("serving check of %s passed: %s", tag, result["reason"])
        return result
    finally:
        tmp.cleanup()


def _canned_requests(tag: str, path: Path, bentoml_home: str | Path | None, config: ServingCheckConfig
                     ) -> tuple[list[str], np.ndarray | None, dict[str, np.ndarray], dict[str, list[dict]]]:
    """The canned requests of :func:`serving_check` and what the in-process model answers to them: the
    titles of the first catalog listings the server will search (else canned titles) with canned photos.

    Returns:
        ``(catalog ids, the joint catalog embeddings or None, {kind: expected fp32 (n, D) vectors,
        "precision": the precision the model is served in},
        {request name: listings})``.
    """
    import torch

    from item_model.inference import embed_listings, precision
    from item_model.image_utils import decode_image
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor

    from serving.store import served_index_folder

    model = ItemModel.from_pretrained(str(path)).eval()
    processor = ItemProcessor.from_pretrained(str(path), model.config)
    titles = [f"canned listing {i}" for i in range(config.n_listings)]
    ids: list[str] = []
    index = None
    with served_index_folder(tag, path, bentoml_home) as (folder, _):     # the index the server will search
        has_index = (folder / INDEX_DIR / "index.json").is_file()
        if has_index:
            from components.index.layout import load_catalog_index
            listings, embeddings, _ = load_catalog_index(folder / INDEX_DIR)
    if has_index:
        picked = listings.head(config.n_listings)
        titles = [t if isinstance(t, str) and t.strip() else f"canned listing {i}"
                  for i, t in enumerate(picked["title"].tolist())] + titles[len(picked):]
        ids, index = listings["product_id"].astype(str).tolist(), embeddings.get("joint")
    photos = canned_photos(config.n_listings)
    pixels = [decode_image(p, processor.image_size) for p in photos]
    with torch.no_grad(), precision(model, "fp32"):      # the reference is always the fp32 model
        expected = {"joint": embed_listings(model, processor, titles, pixels),
                    "text": embed_listings(model, processor, titles, None),
                    "image": embed_listings(model, processor, None, pixels)}
    # the precision the server embeds in: its config's, or the environment it inherits from this process
    from item_model.modeling_item import PRECISION_ENV
    expected["precision"] = os.environ.get(PRECISION_ENV) or model.config.inference_precision
    requests = {"embed joint": [{"title": t, "image": _b64(p)} for t, p in zip(titles, photos)],
                "embed title-only": [{"title": t} for t in titles],
                "embed photo-only": [{"image": _b64(p)} for p in photos]}
    return ids, index, expected, requests


def _check_embed(client, requests: dict[str, list[dict]], expected: dict[str, np.ndarray], tag: str,
                 config: ServingCheckConfig, result: dict) -> str | None:
    """POST /embed with each canned request; the first failure's reason, else None (latencies and
    differences go into ``result``). Served vectors are compared with the in-process fp32 vectors:
    component by component to ``config.tolerance`` for a model served in fp32, by cosine to
    ``config.min_cosine`` for one served in a faster precision (``expected["precision"]``)."""
    fast = expected.get("precision", "fp32") != "fp32"
    for (name, body), kind in zip(requests.items(), ("joint", "text", "image")):
        t0 = time.perf_counter()
        r = client.post("/embed", json={"listings": body})
        result["latency_ms"][name] = round(1e3 * (time.perf_counter() - t0), 1)
        if r.status_code != 200:
            return f"POST /embed ({name}) answered {r.status_code}: {r.text[:300]}"
        answer = r.json()
        served = np.array([a["embedding"] for a in answer], dtype=np.float32)
        if served.shape != expected[kind].shape or any(a["kind"] != kind for a in answer) \
                or any(a["model_version"] != tag for a in answer):
            return (f"POST /embed ({name}): {served.shape} vectors of kinds "
                    f"{sorted({a['kind'] for a in answer})} from {sorted({a['model_version'] for a in answer})}, "
                    f"expected {expected[kind].shape} '{kind}' vectors from {tag}")
        diff = float(np.abs(served - expected[kind]).max())
        result["max_abs_diff"][name] = diff
        if fast:
            cosine = float((served * expected[kind]).sum(1).min())
            result.setdefault("min_cosine", {})[name] = cosine
            if cosine < config.min_cosine:
                return (f"POST /embed ({name}): served {expected['precision']} vectors drift from the fp32 "
                        f"model: cosine {cosine:.5f} < min_cosine {config.min_cosine}")
        elif diff > config.tolerance:
            return (f"POST /embed ({name}): served vectors differ from the in-process model by "
                    f"{diff:.2e} > tolerance {config.tolerance:.0e}")
    return None


def _check_similar(client, ids: list[str], index: np.ndarray | None, requests: dict[str, list[dict]],
                   config: ServingCheckConfig, result: dict) -> str | None:
    """POST /similar by a catalog product_id (scores against the in-process cosine) and by a listing;
    the first failure's reason, else None (latencies and differences go into ``result``)."""
    if index is not None and ids:
        k = min(5, len(ids) - 1)
        t0 = time.perf_counter()
        r = client.post("/similar", json={"product_id": ids[0], "k": k})
        result["latency_ms"]["similar by product_id"] = round(1e3 * (time.perf_counter() - t0), 1)
        if r.status_code != 200:
            return f"POST /similar (product_id {ids[0]!r}) answered {r.status_code}: {r.text[:300]}"
        got = r.json()["results"]
        unknown = [n["product_id"] for n in got if n["product_id"] not in ids]
        if unknown:      # the server searched another index than the one read here (was a ValueError)
            return (f"POST /similar (product_id {ids[0]!r}): results {unknown[:5]} are not in the catalog "
                    f"index of {result['tag']} ({len(ids)} listings)")
        rows = [ids.index(n["product_id"]) for n in got]
        want = index[rows] @ index[0]
        diff = float(np.abs(np.array([n["score"] for n in got]) - want).max()) if got else 0.0
        result["max_abs_diff"]["similar by product_id"] = diff
        # an approximate index stores float16 vectors: its scores are the cosine to ~1e-3
        allowed = max(config.tolerance, 1e-5) if r.json().get("search", "exact") == "exact" else 2e-3
        if len(got) != k or diff > allowed or ids[0] in [n["product_id"] for n in got]:
            return (f"POST /similar (product_id {ids[0]!r}): {len(got)} results (expected {k}), "
                    f"scores off the in-process cosine by {diff:.2e}")
    t0 = time.perf_counter()
    r = client.post("/similar", json={"listing": requests["embed joint"][0], "k": 3})
    result["latency_ms"]["similar by listing"] = round(1e3 * (time.perf_counter() - t0), 1)
    if r.status_code not in (200, 503) or (r.status_code == 503 and index is not None):
        return f"POST /similar (listing) answered {r.status_code}: {r.text[:300]}"
    return None


def serving_check_step(tag: str, bentoml_home: str, gate_config: dict, registry_root: str, version: str,
                       out_path: str, log_path: str | None = None) -> dict:
    """The pipeline's serving check of a blessed, packaged challenger: run :func:`serving_check`,
    write its result to ``out_path`` (JSON), and when it fails record the version as blocked in the
    registry with the reason (the champion stays). Returns the result dict.

    Raises:
        ServingCheckError: the gate config's ``serving_check`` section is malformed.
    """
    from item_model.io import write_json_atomic
    from components.registry import ModelRegistry

    config = ServingCheckConfig.from_gate_config(gate_config)
    registry = ModelRegistry(registry_root)
    if config.enabled and find_packaged_model(tag, bentoml_home or None) is None:
        # on a cluster the package task ran in another pod, whose store is gone: package the registry's
        # copy of the version into this task's store (the same files, from the same registry version)
        from serving.store import package_registry_version
        logger.info("%s is not in this task's BentoML store; packaging registry version %s here", tag, version)
        tag = package_registry_version(registry.version_path(version), version, bentoml_home or None)
    if not config.enabled:
        result = {"passed": True, "skipped": True, "tag": tag, "reason": "serving check disabled in the gate config"}
    else:
        result = serving_check(tag, bentoml_home or None, config, log_path=log_path)
    write_json_atomic(out_path, result)
    if not result["passed"]:
        registry.record(version, "blocked", gate="serving check", automatic=True,
                        reason=f"serving check failed: {result['reason']}")
    return result
