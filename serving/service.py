"""The ITEm BentoML service: product embeddings (``POST /embed``) and same-product search over the
catalog index packaged with the model (``POST /similar``).

    bentoml serve serving.service:ItemService --port 3000      # or: item serve [--tag item:VERSION]

The model is ``ITEM_MODEL_TAG`` when set (pinned), else the model registry's champion, else
``item:latest`` in the BentoML model store (:func:`resolve_model_tag`). Unless pinned, the service
polls the champion pointer (``ITEM_WATCH_INTERVAL_S``, default 10 s; ``gs://`` registries too) and,
when it moves (a promotion, ``item gate reject``), loads the new champion beside the old one and
swaps them in one assignment (:meth:`ItemService.swap_to`): requests in flight finish on the model
they started on, every response names the version that produced it, ``/readyz`` stays 200. Its store entry holds the Hugging Face model folder and, built at
package time, ``catalog_index/`` (:mod:`components.index.layout`): the embeddings of the catalog the model
was validated on, with ids and titles.

Endpoints (BentoML also serves ``/livez``, ``/readyz``, ``/healthz``, ``/metrics`` (Prometheus) and
the OpenAPI document at ``/docs.json``):

* ``POST /embed`` ``{"listings": [{"title": ..., "image": <base64 JPEG/PNG>}, ...]}`` -> one
  ``{"embedding": [D floats], "kind", "model_version"}`` per listing, in order. A batchable API:
  concurrent requests are batched together by BentoML's adaptive batching. Also accepts
  ``multipart/form-data`` (see :class:`RequestGuard`).
* ``POST /similar`` ``{"listing": {...}}`` or ``{"product_id": "1163"}``, ``"k": 10`` -> the top-k
  catalog listings by cosine similarity over the whole catalog's index of the served version under the
  storage root (``<storage root>/indexes/<version>/``), else the copy of it packaged with the model;
  exact search (a float32 matrix product and ``np.argpartition``) or, for an index built above its
  exact-search threshold, its approximate index (the answer's ``search`` and ``index_source`` say
  which); a ``product_id`` query uses its stored embedding and excludes itself; a title-only or
  photo-only listing is searched against the catalog's embeddings of that kind when the index holds
  them, see :data:`INDEX_KINDS`; ``k`` above the index size is clipped, with a ``note``.

Bad input never reaches the model: every listing is validated and its photo decoded before
batching (:mod:`serving.schemas`), and :class:`RequestGuard` enforces content types and the body
size limit; each failure is a 4xx ``{"error": "<field>: <message>", ...}``.

Served embeddings are sampled into the traffic log (:mod:`serving.traffic_log`).
"""

from __future__ import annotations

import os

from components.steps.environment import set_offline_defaults  # noqa: E402

set_offline_defaults()
# OpenMP threads sleep instead of spinning while they wait: the model's threads share the cores with the
# HTTP event loop, and spinning threads starve it (benchmarks/serving.py, c = 16: 81.7 -> 105.0 embeddings/s
# with two threads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import base64  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, Optional  # noqa: E402

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from bentoml.exceptions import InvalidArgument, NotFound  # noqa: E402
from pydantic import Field  # noqa: E402

from serving import schemas  # noqa: E402
from components.storage.layout import INDEX_DIR, INDEX_KINDS  # noqa: E402
from serving.schemas import (MAX_K, MAX_LISTINGS, Embedding, Listing, Neighbour, ProductId,  # noqa: E402
                             SimilarResult, top_k)

logger = logging.getLogger("bentoml.item")     # a child of BentoML's logger: its handlers print it

MODEL_NAME = "item"
MODEL_VERSION_HEADER = "x-item-model-version"
#: the request header that carries the API key, and the key (``ITEM_API_KEY``; unset or empty: no key)
API_KEY_HEADER = "X-API-Key"
API_KEY = os.environ.get("ITEM_API_KEY", "")
#: the routes the key guards; BentoML's health routes (/livez, /readyz, /healthz) stay open
PROTECTED_ROUTES = ("/embed", "/similar", "/metrics")
#: the catalog embeddings a listing query is searched against, by the query's kind: a title-only
#: or photo-only embedding scores same products far better against the catalog's embeddings of the
#: same kind (tiny test model: Recall@10 0.88 / 1.00) than against the joint ones (0.00 / 0.15)

#: listings per model call (BentoML splits bigger requests) and the longest a request may wait in
#: the batching queue before it is answered 503 (overloaded)
MAX_BATCH_SIZE = int(os.environ.get("ITEM_MAX_BATCH_SIZE", "64"))
MAX_LATENCY_MS = int(os.environ.get("ITEM_MAX_LATENCY_MS", "10000"))
#: torch intra-op threads of the worker: every core. With OpenMP's passive wait policy (above) the
#: model's threads yield to the HTTP event loop (request parsing, validation, photo decoding, JSON)
#: when it needs a core; one thread fewer than the cores left the model at half speed on 2 cores
#: (docs/serving.md, benchmark).
TORCH_THREADS = int(os.environ.get("ITEM_TORCH_THREADS", "0")) or max(1, os.cpu_count() or 1)
#: processes that decode request photos off the event loop (PNG decoding holds the GIL, so threads
#: would stall it); requests beyond them wait, while health checks and small requests go on
DECODE_PROCESSES = int(os.environ.get("ITEM_DECODE_PROCESSES", "2"))


_DECODE_POOL = None


def decode_pool():
    """The serving process's pool of ``DECODE_PROCESSES`` photo-decoding processes (``spawn``ed: the
    parent runs torch threads, which do not survive a fork), made on first use."""
    global _DECODE_POOL
    if _DECODE_POOL is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        _DECODE_POOL = ProcessPoolExecutor(max(1, DECODE_PROCESSES), mp_context=multiprocessing.get_context("spawn"))
    return _DECODE_POOL


def resolve_model_tag(tag: str | None = None) -> str:
    """The tag of the model to serve, resolved to a concrete version in the local BentoML store.

    Order: ``tag``, else the environment variable ``ITEM_MODEL_TAG``, else the model registry's
    champion (:func:`serving.store.champion_tag`: the store entry packaged from the version the
    champion pointer names; registry ``$ITEM_REGISTRY`` or ``$ITEM_STORAGE_ROOT/registry``), else,
    when the registry has no champion yet, ``item:latest`` (the newest model saved as ``item``).

    Returns:
        ``item:<version>``.

    Raises:
        bentoml.exceptions.NotFound: no such model in the store at ``$BENTOML_HOME``, or the
            registry's champion was never packaged (the message says which tag and where it looked).
    """
    from serving.store import champion_tag

    wanted = tag or os.environ.get("ITEM_MODEL_TAG", "").strip()
    if not wanted:
        from components.registry import RegistryError
        try:
            wanted = champion_tag(model_name=MODEL_NAME)
        except (LookupError, RegistryError) as exc:
            raise NotFound(str(exc)) from None
        if wanted:
            logger.info("serving the registry's champion %s", wanted)
        else:
            wanted = f"{MODEL_NAME}:latest"
            logger.info("the registry has no champion yet: serving %s", wanted)
    try:
        return str(bentoml.models.get(wanted).tag)
    except NotFound:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise NotFound(f"model {wanted!r} is not in the BentoML model store under {home}: package one "
                       f"(item run) or pass --tag / ITEM_MODEL_TAG") from None


MODEL_TAG = resolve_model_tag()
#: a model named at start-up (``ITEM_MODEL_TAG``, ``item serve --tag``) is served as it is; otherwise
#: the service follows the registry's champion pointer, polled every ``ITEM_WATCH_INTERVAL_S`` seconds
#: (0 = never)
PINNED = bool(os.environ.get("ITEM_MODEL_TAG", "").strip())
WATCH_INTERVAL_S = float(os.environ.get("ITEM_WATCH_INTERVAL_S", "10"))
#: the version answering now (the ``X-Item-Model-Version`` header; each response body names the
#: version that produced it, which is authoritative during a swap)
CURRENT = {"tag": MODEL_TAG}
#: fault injection for tests (like the registry's ITEM_REGISTRY_CRASH): a listing with this exact title
#: makes the model call raise, so that the isolation of one failing listing in a batch can be tested
FAULT_TITLE_ENV = "ITEM_FAULT_TITLE"
#: shadow comparison (serving/shadow.py): a challenger (registry version or ``name:version``) that
#: answers a sample of requests off the users' path, and the share of requests it gets
SHADOW = os.environ.get("ITEM_SHADOW", "").strip()
SHADOW_SAMPLE = float(os.environ.get("ITEM_SHADOW_SAMPLE", "0.2"))

EMBED_BATCH_LISTINGS = bentoml.metrics.Histogram(
    name="item_embed_batch_listings", documentation="listings embedded per model call of /embed",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
EMBED_BATCH_SECONDS = bentoml.metrics.Histogram(
    name="item_embed_batch_seconds", documentation="wall time of one model call of /embed (a batch), seconds",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
TRAFFIC_ROWS = bentoml.metrics.Counter(
    name="item_traffic_log_rows", documentation="embeddings sampled into the traffic log")
LISTING_FAILURES = bentoml.metrics.Counter(
    name="item_embed_listing_failures", documentation="listings whose embedding failed alone (their request got 500)")
SWAPS = bentoml.metrics.Counter(
    name="item_model_swaps", documentation="times the served model was swapped after the champion pointer moved")


def _json_response(status: int, payload: dict, extra_headers: list | None = None) -> tuple[dict, dict]:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return ({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])},
            {"type": "http.response.body", "body": body, "more_body": False})


class _Reject(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RequestGuard:
    """ASGI middleware in front of the API routes.

    * Content types: ``application/json`` everywhere, ``multipart/form-data`` too on ``/embed`` and
      ``/similar`` (converted here to the JSON body, so both take the same validation path);
      anything else is 415.
    * Body size: more than ``max_body_bytes`` (``ITEM_MAX_BODY_BYTES``) is 413, whether announced by
      ``Content-Length`` or streamed.
    * Photos: checked against the per-photo (400) and per-request (413) pixel budgets from their
      headers (in a thread) and decoded in a pool of ``ITEM_DECODE_PROCESSES`` processes, never on the
      event loop (:func:`serving.schemas.check_request_images`, :func:`serving.schemas.decode_images`).
    * Error bodies: every 4xx from the API routes becomes ``{"error": "<field>: <message>; ...",
      "detail": [...]}`` (BentoML's pydantic errors carry the field only in ``detail[].loc``).
    * Every API response carries the model version in ``X-Item-Model-Version``.
    * API key: with ``ITEM_API_KEY`` set, ``/embed``, ``/similar`` and ``/metrics`` need it in the
      ``X-API-Key`` header (compared in constant time, ``hmac.compare_digest``), else 401 naming the
      header; the health routes stay open for the orchestrator's probes.

    Multipart forms: on ``/embed`` either ``title`` (text) and/or ``image`` (file) for one listing,
    or ``listings`` (a JSON array of listings) where an ``"image"`` of the form ``"@name"`` names
    an uploaded file part; on ``/similar`` the fields ``product_id``, ``k``, ``title``, ``image``.
    """

    def __init__(self, app, routes: dict[str, tuple[str, ...]], max_body_bytes: int, api_key: str = "") -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = int(max_body_bytes)
        self.api_key = api_key.encode()

    async def _predecode(self, path: str, body: bytes) -> None:
        """Check the photos' headers in a thread, decode them in the process pool, hand the pixels to
        validation (:mod:`serving.schemas`). Raises schemas.RequestRejected (400/413)."""
        import asyncio

        import anyio
        checked = await anyio.to_thread.run_sync(schemas.check_request_images, path, body)
        size = schemas.image_size_hw()
        if not checked or size is None:
            return
        pixels = await asyncio.get_running_loop().run_in_executor(
            decode_pool(), schemas.decode_images, [d for _, d in checked], size)
        schemas.store_predecoded([t for t, _ in checked], pixels)

    def _authorised(self, scope) -> bool:
        import hmac
        if not self.api_key or scope.get("path") not in PROTECTED_ROUTES:
            return True
        wanted = API_KEY_HEADER.lower().encode()
        given = next((v for k, v in scope.get("headers", []) if k.lower() == wanted), b"")
        return hmac.compare_digest(given, self.api_key)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self._authorised(scope):
            start, end = _json_response(401, {"error": f"{API_KEY_HEADER}: missing or wrong API key"},
                                        [(b"www-authenticate", API_KEY_HEADER.encode())])
            await send(start)
            await send(end)
            return
        if scope["type"] != "http" or scope.get("path") not in self.routes:
            await self.app(scope, receive, send)
            return
        version_header = [(MODEL_VERSION_HEADER.encode(), CURRENT["tag"].encode())]
        if scope.get("method") != "POST":
            await self.app(scope, receive, self._shaping_send(send, version_header))
            return
        try:
            scope, body = await self._read(scope, receive)
        except _Reject as exc:
            start, end = _json_response(exc.status, {"error": exc.message}, version_header)
            await send(start)
            await send(end)
            return
        if body is None:  # the client went away
            return
        if b'"image"' in body:  # photos: pixel budgets from the headers, then decoded off the event loop
            try:
                await self._predecode(scope["path"], body)
            except schemas.RequestRejected as exc:
                start, end = _json_response(exc.status, {"error": exc.message}, version_header)
                await send(start)
                await send(end)
                return

        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, self._shaping_send(send, version_header, embed=scope["path"] == "/embed"))

    async def _read(self, scope, receive) -> tuple[dict, bytes | None]:
        from starlette.datastructures import Headers

        path = scope["path"]
        headers = Headers(scope=scope)
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        allowed = self.routes[path]
        if media not in allowed:
            raise _Reject(415, f"Content-Type: {path} accepts {' or '.join(allowed)}, got "
                               f"{media or 'no Content-Type header'!r}")
        declared = headers.get("content-length")
        if declared is not None:
            try:
                declared_n = int(declared)
            except ValueError:
                raise _Reject(400, f"Content-Length: not an integer ({declared!r})") from None
            if declared_n > self.max_body_bytes:
                raise _Reject(413, f"body: {declared_n} bytes exceed the limit of {self.max_body_bytes} "
                                   f"bytes (ITEM_MAX_BODY_BYTES)")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return scope, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Reject(413, f"body: more than {self.max_body_bytes} bytes (ITEM_MAX_BODY_BYTES)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if media == "multipart/form-data":
            body = await self._form_to_json(path, scope, body)
            raw = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
            raw += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            scope = {**scope, "headers": raw}
        return scope, body

    async def _form_to_json(self, path: str, scope, body: bytes) -> bytes:
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        async def once():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request({k: v for k, v in scope.items() if k != "app"}, once).form(
                max_files=MAX_LISTINGS, max_fields=2 * MAX_LISTINGS + 8, max_part_size=self.max_body_bytes)
        except Exception as exc:
            raise _Reject(400, f"body: not a valid multipart/form-data body ({getattr(exc, 'message', exc)})") from None
        try:
            fields: dict[str, Any] = {}
            for name, value in form.multi_items():
                if name in fields:
                    raise _Reject(400, f"{name}: given more than once in the form")
                fields[name] = await value.read() if isinstance(value, UploadFile) else value
        finally:
            await form.close()

        def text(name: str) -> str | None:
            value = fields.pop(name, None)
            if isinstance(value, bytes):
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Reject(400, f"{name}: not UTF-8 text") from None
            return value

        def image(name: str, where: str) -> str | None:
            value = fields.pop(name, None)
            if value is None:
                return None
            if isinstance(value, bytes):  # an uploaded file: its bytes, base64-encoded
                if not value:
                    raise _Reject(400, f"{where}: the uploaded file is empty")
                return base64.b64encode(value).decode("ascii")
            return value  # a text field: already base64

        def listing(where: str) -> dict | None:
            out = {k: v for k, v in (("title", text("title")), ("image", image("image", f"{where}.image")))
                   if v is not None}
            return out or None

        if path == "/embed":
            if "listings" in fields:
                raw = text("listings")
                try:
                    listings = json.loads(raw)
                except (TypeError, ValueError):
                    raise _Reject(400, "listings: not a JSON array of listings") from None
                if not isinstance(listings, list):
                    raise _Reject(400, "listings: not a JSON array of listings")
                files: dict[str, str | None] = {}
                for i, item in enumerate(listings):
                    ref = item.get("image") if isinstance(item, dict) else None
                    if isinstance(ref, str) and ref.startswith("@"):
                        name = ref[1:]
                        if name not in files:
                            if name not in fields:
                                raise _Reject(400, f"listings[{i}].image: no file part named {name!r} in the form")
                            files[name] = image(name, f"listings[{i}].image")
                        item["image"] = files[name]
                payload: dict[str, Any] = {"listings": listings}
            else:
                one = listing("listings[0]")
                payload = {"listings": [one] if one else []}
        else:
            payload = {}
            for name in ("product_id", "k"):
                if name in fields:
                    payload[name] = text(name)
            one = listing("listing")
            if one:
                payload["listing"] = one
        if fields:
            raise _Reject(400, f"{sorted(fields)[0]}: unexpected form field")
        return json.dumps(payload).encode()

    def _shaping_send(self, send, extra_headers: list, embed: bool = False):
        state: dict[str, Any] = {"start": None, "chunks": []}

        async def shaping_send(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": list(message.get("headers", [])) + extra_headers}
                ctype = dict((k.lower(), v) for k, v in message["headers"]).get(b"content-type", b"")
                if ctype.startswith(b"application/json") and (400 <= status < 500 or (status == 200 and embed)):
                    state["start"] = message  # hold it: the body may be rewritten
                    return
                await send(message)
            elif message["type"] == "http.response.body" and state["start"] is not None:
                state["chunks"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, body = state["start"], b"".join(state["chunks"])
                state["start"] = None
                if start["status"] == 200:
                    failed = _failed_listings(body)
                    if failed is None:
                        await send(start)
                        await send({"type": "http.response.body", "body": body, "more_body": False})
                        return
                    start, body = {**start, "status": 500}, json.dumps({"error": failed}).encode()
                else:
                    body = _shape_error(body)
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
            else:
                await send(message)

        return shaping_send


def _failed_listings(body: bytes) -> str | None:
    """For an /embed answer: ``"listings[i]: embedding failed (...); ..."`` when some listing failed
    alone in its batch (its entry carries ``error``), else None. A byte search first: the JSON is parsed
    only when an error string is there."""
    if b'"error":"' not in body and b'"error": "' not in body:
        return None
    try:
        items = json.loads(body)
    except ValueError:
        return None
    failed = [f"listings[{i}]: embedding failed ({e['error']})" for i, e in enumerate(items)
              if isinstance(e, dict) and e.get("error")]
    return "; ".join(failed) or None


def _shape_error(body: bytes) -> bytes:
    """A 4xx JSON body from BentoML -> ``{"error": "<field>: <message>", "detail"?: [...]}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML wraps BentoMLException messages in a one-element list
    if isinstance(data, dict) and isinstance(data.get("detail"), list) and data["detail"] \
            and all(isinstance(d, dict) and "loc" in d for d in data["detail"]):
        detail = [{k: v for k, v in d.items() if k in ("type", "loc", "msg")} for d in data["detail"]]
        data = {"error": schemas.error_message(detail), "detail": detail}
    return json.dumps(data).encode()


class ServedModel:
    """One packaged model ready to answer: weights, processor and catalog index, loaded from its
    store folder (:meth:`load`). Immutable once loaded; the service swaps whole bundles."""

    def __init__(self, tag: str, model, processor, indexes: dict[str, np.ndarray], ids: np.ndarray,
                 titles: np.ndarray, categories: np.ndarray, ann: dict | None = None, index_source: str = "package"):
        self.tag, self.model, self.processor = tag, model, processor
        self.dim = int(model.config.hidden_size)
        self.indexes, self.ids, self.titles, self.categories = indexes, ids, titles, categories
        #: kind -> approximate index (:mod:`components.index.backends`), for a catalog built above
        #: the exact-search threshold by ``item index``; empty = exact search
        self.ann = dict(ann or {})
        self.index_source = index_source
        self.row_of = {pid: i for i, pid in enumerate(ids)}

    def search(self, kind: str, query: np.ndarray, k: int, exclude: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, str]:
        """Top-k rows of the index ``kind`` for a (D,) float32 query: (rows (k',) int64, cosine scores
        (k',) float32, ``"exact"`` or the approximate backend's kind), best first; ``exclude`` is a row
        never returned."""
        ann = self.ann.get(kind)
        if ann is None:
            rows, scores = top_k(self.indexes[kind], query, k, exclude=exclude)
            return rows, scores, "exact"
        rows, scores = ann.search(query[None, :], k + (exclude is not None))
        keep = (rows[0] >= 0) & (rows[0] != (-1 if exclude is None else exclude))
        return rows[0][keep][:k], scores[0][keep][:k], ann.kind

    @classmethod
    def load(cls, tag: str, path: Path) -> "ServedModel":
        """Load the model folder ``path`` (a BentoML store entry) and warm it up (one forward pass).

        The catalog index searched is the whole catalog's index of the registry version ``tag`` was
        packaged from, under the storage root (:func:`serving.store.served_index_folder`), else the copy
        of it packaged with the model; an index built above the exact-search threshold brings its
        approximate (HNSW) index per kind.

        Raises:
            ValueError: the catalog index's width differs from the model's D, or a whole-catalog index
                names another model version.
            IndexVersionMismatch: an approximate index holds another model version's vectors.
        """
        import torch

        from components.index.layout import load_catalog_index
        from components.index.backends import load_index
        from item_model.modeling_item import ItemModel
        from item_model.processing_item import ItemProcessor
        from serving.store import registry_version_of, served_index_folder

        path = Path(path)
        model = ItemModel.from_pretrained(str(path)).eval()
        processor = ItemProcessor.from_pretrained(str(path), model.config)
        dim = int(model.config.hidden_size)
        indexes: dict[str, np.ndarray] = {}
        ann: dict = {}
        ids = titles = categories = np.empty(0, dtype=object)
        packaged_from = registry_version_of(tag)           # the store's model list, read once
        with served_index_folder(tag, path, registry_version=packaged_from) as (folder, source):
            index_dir = Path(folder) / INDEX_DIR
            if (index_dir / "index.json").is_file():
                listings, embeddings, meta = load_catalog_index(index_dir)
                version = packaged_from if source == "catalog" else None
                if source == "catalog" and meta.get("model_version") != version:
                    raise ValueError(f"{index_dir}: field 'model_version' is {meta.get('model_version')!r}, "
                                     f"expected {version!r}; an index never mixes two models")
                for name, matrix in embeddings.items():
                    if matrix.shape[1] != dim:
                        raise ValueError(f"{index_dir}: {name} embeddings of width {matrix.shape[1]}, model D = {dim}")
                    indexes[name] = np.ascontiguousarray(matrix, dtype=np.float32)
                    if meta.get("search", "exact") != "exact":
                        ann[name] = load_index(Path(folder) / "vector_index" / name, model_version=version)
                        if getattr(ann[name], "vectors", None) is not None:
                            # the re-rank copy, float16 mapped from disk, serves product_id lookups: the
                            # float32 matrix is not kept (1.5 GB per kind at 10^6)
                            indexes[name] = ann[name].vectors
                ids = listings["product_id"].astype(str).to_numpy()
                titles = listings["title"].astype(object).where(listings["title"].notna(), None).to_numpy()
                categories = (listings["category"].astype(object).where(listings["category"].notna(), None)
                              .to_numpy() if "category" in listings else np.full(len(listings), None))
                logger.info("catalog index of %s (%s): %d listings x %d, kinds %s, %s search (fingerprint %s)", tag,
                            "the storage root's" if source == "catalog" else "the packaged copy", len(ids), dim, sorted(indexes),
                            "approximate" if ann else "exact", str(meta.get("catalog_fingerprint", ""))[:16])
            else:
                logger.warning("%s has no %s/: /similar answers 503", tag, INDEX_DIR)
        served = cls(tag, model, processor, indexes, ids, titles, categories, ann=ann,
                     index_source=source)
        with torch.no_grad():  # warm-up: the first request should not pay for lazy initialisation
            h, w = processor.image_size
            served.embed(["warm up"], [np.zeros((h, w, 3), dtype=np.uint8)])
        return served

    def embed(self, titles: list[str | None], images: list[np.ndarray | None]) -> np.ndarray:
        """(n, D) float32 L2-normalised embeddings; photos of another size than this model's input
        (decoded for the model served before a swap) are resized first."""
        from item_model.inference import embed_listings
        h, w = self.processor.image_size
        images = [im if im is None or im.shape[:2] == (h, w) else _resize(im, h, w) for im in images]
        fault = os.environ.get(FAULT_TITLE_ENV)
        if fault and fault in titles:
            raise RuntimeError(f"injected fault ({FAULT_TITLE_ENV})")
        return embed_listings(self.model, self.processor, titles, images, batch_size=max(MAX_BATCH_SIZE, 1))


def _search_ids(served: ServedModel, query: np.ndarray, k: int, exclude: int | None = None,
                kind: str | None = None) -> list[str]:
    """The product ids of ``served``'s top-k for a query vector: the joint index for a catalog query
    (``kind`` None), else the index of the query's kind when the package has it."""
    searched = "item" if kind is None else (INDEX_KINDS[kind] if INDEX_KINDS[kind] in served.indexes else "item")
    rows, _, _ = served.search(searched, query, k, exclude=exclude)
    return [str(served.ids[r]) for r in rows]


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def _tiny_png() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()


@bentoml.service(
    name="item",
    workers=1,   # one process; torch uses the cores inside it
    threads=1,   # /embed batches run one at a time in one thread (and share a lock with /similar)
    traffic={"timeout": 60, "max_concurrency": 256},
    logging={"access": {"enabled": os.environ.get("ITEM_ACCESS_LOG", "1") != "0"}},  # a line per request
)
class ItemService:
    """ITEm product embeddings and same-product search (see the module docstring)."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch

        from serving.traffic_log import TrafficLog, TrafficLogConfig

        torch.set_num_threads(TORCH_THREADS)
        self._model_lock = threading.Lock()
        stored = self.bento_model
        #: the model answering requests now; a request takes it once and uses only it
        self.served: ServedModel = ServedModel.load(str(stored.tag), Path(stored.path))
        schemas.set_image_size(self.served.processor.image_size)     # requests' photos are decoded to it
        CURRENT["tag"] = self.served.tag
        self.traffic = TrafficLog(TrafficLogConfig.from_env(), self.served.tag)
        # start the decoding processes now (each imports numpy and Pillow once), not on the first photo
        h, w = self.served.processor.image_size
        pool = decode_pool()
        for f in [pool.submit(schemas.decode_images, [_tiny_png()], (h, w)) for _ in range(DECODE_PROCESSES)]:
            f.result(timeout=120)
        self.shadow = self._start_shadow(SHADOW) if SHADOW else None
        self._stop = threading.Event()
        self.watching = WATCH_INTERVAL_S > 0 and not PINNED
        if self.watching:
            threading.Thread(target=self._watch_champion, name="champion-watch", daemon=True).start()
        logger.info("serving %s (D = %d, image %s, %d torch threads), traffic log sample %.3f under %s; %s",
                    self.served.tag, self.served.dim, self.served.processor.image_size, TORCH_THREADS,
                    self.traffic.config.sample_rate, self.traffic.directory,
                    f"watching the registry's champion every {WATCH_INTERVAL_S:g} s" if self.watching
                    else "pinned to this model (ITEM_MODEL_TAG / --tag), not watching the registry")

    # --------------------------------------------------------------------------- shadow
    def _start_shadow(self, wanted: str):
        """Load the challenger ``wanted`` (a registry version, or a ``name:version`` store tag) beside the
        champion and start the shadow comparison (:class:`serving.shadow.Shadow`).

        Raises:
            LookupError: no package of it in the BentoML store.
        """
        from components.storage.layout import find_packaged_model
        from serving.shadow import Shadow
        from serving.store import package_of, registry_version_of

        tag = wanted if ":" in wanted else package_of(wanted, model_name=MODEL_NAME)
        found = find_packaged_model(tag) if tag else None
        if found is None:
            raise LookupError(f"shadow challenger {wanted!r} has no package in the BentoML store "
                              f"(item gate approve packages a version; or pass its name:version tag)")
        challenger = ServedModel.load(*found)
        version = wanted if ":" not in wanted else (registry_version_of(found[0]) or found[0].replace(":", "-"))
        shadow = Shadow(challenger, _search_ids, self._embed_shadow, self.traffic.config.storage_root, version,
                        sample=SHADOW_SAMPLE,
                        rows_per_file=int(os.environ.get("ITEM_SHADOW_ROWS_PER_FILE", "200")),
                        flush_seconds=float(os.environ.get("ITEM_SHADOW_FLUSH_SECONDS", "30")))
        logger.info("shadow: %s (registry version %s) answers %.0f %% of requests off the users' path; log %s",
                    challenger.tag, version, 100 * SHADOW_SAMPLE, shadow.log.directory)
        return shadow

    def _embed_shadow(self, served: "ServedModel", listings: list[Listing]) -> np.ndarray:
        with self._model_lock:
            return served.embed([l.title if l.has_title else None for l in listings], [l.pixels for l in listings])

    # --------------------------------------------------------------------------- hot swap
    def _watch_champion(self) -> None:
        """Poll the registry's champion pointer; when it names another packaged model, load that model
        and its catalog index beside the current one, then swap (see :meth:`swap_to`)."""
        from serving.store import champion_tag

        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                wanted = champion_tag(model_name=MODEL_NAME)
            except Exception as exc:  # an unreadable registry or a champion not packaged: keep serving
                logger.warning("champion watch: %s; still serving %s", exc, self.served.tag)
                continue
            if wanted and wanted != self.served.tag:
                try:
                    self.swap_to(wanted)
                except Exception:
                    logger.exception("champion watch: could not load %s; still serving %s", wanted, self.served.tag)

    def swap_to(self, tag: str) -> None:
        """Load the packaged model ``tag`` (weights, processor, catalog index) and warm it up while the
        current one keeps answering, then make it the served model in one assignment: requests already
        running finish on the model they started with, every later one gets the new model, and each
        response names the version that produced it.

        Raises:
            LookupError: ``tag`` is not in the BentoML store. ValueError: its catalog index is malformed.
        """
        from components.storage.layout import find_packaged_model

        found = find_packaged_model(tag)
        if found is None:
            raise LookupError(f"{tag} is not in the BentoML store")
        t0 = time.perf_counter()
        new = ServedModel.load(*found)
        old, self.served = self.served, new
        CURRENT["tag"] = new.tag
        schemas.set_image_size(new.processor.image_size)
        SWAPS.inc()
        logger.info("now serving %s (was %s; loaded and warmed up in %.1f s)", new.tag, old.tag,
                    time.perf_counter() - t0)

    # ------------------------------------------------------------------------------- model calls
    def _embed(self, served: "ServedModel", listings: list[Listing]) -> tuple[np.ndarray, dict[int, str]]:
        """Validated listings -> ((n, D) float32 L2-normalised embeddings by ``served``, ``{position:
        error}`` of listings that failed); the embedded ones are sampled into the traffic log.

        When the batch's model call fails, each listing is embedded alone, so one failing listing
        fails only itself (and with it only its own request, see :class:`RequestGuard`)."""
        titles = [l.title if l.has_title else None for l in listings]
        pixels = [l.pixels for l in listings]
        failed: dict[int, str] = {}
        with self._model_lock:  # /embed batches and /similar listing queries come from different threads
            try:
                vectors = served.embed(titles, pixels)
            except Exception:
                logger.exception("a batch of %d listings failed; embedding them one by one", len(listings))
                vectors = np.zeros((len(listings), served.dim), dtype=np.float32)
                for i in range(len(listings)):
                    try:
                        vectors[i] = served.embed([titles[i]], [pixels[i]])[0]
                    except Exception as exc:
                        failed[i] = f"{type(exc).__name__}: {exc}"
        ok = [i for i in range(len(listings)) if i not in failed]
        logged = self.traffic.record(vectors[ok], [listings[i].kind for i in ok], [listings[i].has_title for i in ok],
                                     [listings[i].pixels is not None for i in ok],
                                     [len(listings[i].title) if listings[i].has_title else 0 for i in ok],
                                     model_tag=served.tag)
        if logged:
            TRAFFIC_ROWS.inc(logged)
        if failed:
            LISTING_FAILURES.inc(len(failed))
        return vectors, failed

    # -------------------------------------------------------------------------------------- API
    @bentoml.api(route="/embed", batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def embed(self, listings: Annotated[list[Listing], Field(min_length=1, max_length=MAX_LISTINGS)]
              ) -> list[Embedding]:
        """Product embeddings of listings (title and/or base64 JPEG/PNG image), in request order:
        L2-normalised float vectors of the model's width D, with their kind (joint / text / image)
        and the model version. Concurrent requests are batched together (adaptive batching)."""
        served = self.served
        EMBED_BATCH_LISTINGS.observe(len(listings))
        t0 = time.perf_counter()
        vectors, failed = self._embed(served, listings)
        elapsed = time.perf_counter() - t0
        EMBED_BATCH_SECONDS.observe(elapsed)
        if self.shadow is not None and "item" in served.indexes:
            for i, (v, l) in enumerate(zip(vectors, listings)):
                if i not in failed and self.shadow.sampled():
                    self.shadow.submit(route="/embed", champion=served, query_kind=l.kind, champion_ms=1e3 * elapsed,
                                       champion_vector=v, listing=l)
        return [Embedding(embedding=[], kind=l.kind, model_version=served.tag, error=failed[i]) if i in failed
                else Embedding(embedding=v.tolist(), kind=l.kind, model_version=served.tag)
                for i, (v, l) in enumerate(zip(vectors, listings))]

    @bentoml.api(route="/similar")
    async def similar(self, listing: Optional[Listing] = None, product_id: Optional[ProductId] = None,
                      k: Annotated[int, Field(ge=1, le=MAX_K)] = 10) -> SimilarResult:
        """The top-k same-product candidates in the catalog index for a listing (title and/or image)
        or a catalog ``product_id`` (its stored embedding; itself excluded), by cosine similarity,
        best first, with ids and titles. Searches the catalog's joint embeddings, or for a title-only /
        photo-only listing the catalog's embeddings of the same kind when the index holds them
        (cross-kind scores do not rank same products); exactly, or through the approximate index
        the index was built with (``search`` in the answer)."""
        served = self.served
        t0 = time.perf_counter()
        if (listing is None) == (product_id is None):
            raise InvalidArgument("listing, product_id: give exactly one of 'listing' or 'product_id'")
        if "item" not in served.indexes:
            from bentoml.exceptions import ServiceUnavailable
            raise ServiceUnavailable(f"{served.tag} was packaged without a catalog index")
        if product_id is not None:
            row = served.row_of.get(product_id)
            if row is None:
                raise NotFound(f"product_id: {product_id!r} is not in the catalog index of {served.tag} "
                               f"({len(served.ids)} listings)")
            # a few ms of one matrix-vector product: cheaper here than two thread hand-offs
            kind, searched = "catalog", "item"
            query = np.asarray(served.indexes["item"][row], dtype=np.float32)
            rows, scores, how = served.search("item", query, k, exclude=row)
        else:
            import anyio
            kind = listing.kind
            searched = INDEX_KINDS[kind] if INDEX_KINDS[kind] in served.indexes else "item"
            def search():
                vectors, failed = self._embed(served, [listing])
                if failed:
                    raise RuntimeError(f"listing: embedding failed ({failed[0]})")
                return served.search(searched, vectors[0], k)
            rows, scores, how = await anyio.to_thread.run_sync(search)
        if self.shadow is not None and self.shadow.sampled():
            self.shadow.submit(route="/similar", champion=served, query_kind=kind,
                               champion_ms=1e3 * (time.perf_counter() - t0),
                               champion_ids=[str(served.ids[r]) for r in rows], listing=listing, product_id=product_id)
        room = len(served.ids) - (product_id is not None)
        note = (f"k={k} clipped to {room}: the catalog index holds {len(served.ids)} listings"
                + (" (the queried one excluded)" if product_id is not None else "")) if k > room else None
        return SimilarResult(
            model_version=served.tag, query_kind=kind, index=searched, product_id=product_id, k=k,
            catalog_size=len(served.ids), search=how, index_source=served.index_source, note=note,
            results=[Neighbour(product_id=served.ids[r], title=served.titles[r], category=served.categories[r],
                               score=float(s)) for r, s in zip(rows, scores)])

    @bentoml.on_shutdown
    def _close(self) -> None:
        self._stop.set()
        self.traffic.close()
        if self.shadow is not None:
            self.shadow.close()
        if _DECODE_POOL is not None:
            _DECODE_POOL.shutdown(wait=False, cancel_futures=True)


# BentoML decides the media type of a root-model output (/embed returns a JSON array) by rebuilding
# its JSON schema on every response, several ms a request here; it is JSON, so say it once.
ItemService.apis["embed"].output_spec.media_type = "application/json"

ItemService.add_asgi_middleware(
    RequestGuard,
    routes={"/embed": ("application/json", "multipart/form-data"),
            "/similar": ("application/json", "multipart/form-data")},
    max_body_bytes=schemas.MAX_BODY_BYTES,
    api_key=API_KEY)
