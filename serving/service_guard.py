"""The HTTP side of the ITEm service (:mod:`serving.service`) in front of the model: the ASGI middleware
:class:`RequestGuard` (content types, body size, API key, photos checked and decoded off the event loop,
4xx bodies shaped as ``{"error": "<field>: <message>"}``) and the pool of photo-decoding processes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from typing import Any

from serving import schemas
from serving.schemas import MAX_LISTINGS

logger = logging.getLogger("bentoml.item")     # a child of BentoML's logger: its handlers print it

MODEL_VERSION_HEADER = "x-item-model-version"
#: the request header that carries the API key (``serving.service.API_KEY``, from ``ITEM_API_KEY``)
API_KEY_HEADER = "X-API-Key"
#: the routes the key guards; BentoML's health routes (/livez, /readyz, /healthz) stay open
PROTECTED_ROUTES = ("/embed", "/similar", "/metrics")
#: the version answering now (the ``X-Item-Model-Version`` header; each response body names the
#: version that produced it, which is authoritative during a swap); set by :mod:`serving.service`
CURRENT: dict[str, str] = {}
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
    * Unknown fields: a JSON body naming a top-level field the route does not take (``fields``: the
      API function's parameters) is 400 naming it, never answered as if it were not there (a client
      sending ``"filters"`` must not believe it filtered).
    * Every API response carries the model version in ``X-Item-Model-Version``.
    * API key: with ``ITEM_API_KEY`` set, ``/embed``, ``/similar`` and ``/metrics`` need it in the
      ``X-API-Key`` header (compared in constant time, ``hmac.compare_digest``), else 401 naming the
      header; the health routes stay open for the orchestrator's probes.

    Multipart forms: on ``/embed`` either ``title`` (text) and/or ``image`` (file) for one listing,
    or ``listings`` (a JSON array of listings) where an ``"image"`` of the form ``"@name"`` names
    an uploaded file part; on ``/similar`` the fields ``product_id``, ``k``, ``title``, ``image``.
    """

    def __init__(self, app, routes: dict[str, tuple[str, ...]], max_body_bytes: int, api_key: str = "",
                 fields: dict[str, frozenset[str]] | None = None) -> None:
        self.app = app
        self.routes = routes
        self.fields = fields or {}
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
        self._check_fields(path, body)
        return scope, body

    def _check_fields(self, path: str, body: bytes) -> None:
        """Raise _Reject(400) naming each top-level field of a JSON object body that ``path`` does not
        take. A body that is not a JSON object is left to BentoML's own validation."""
        known = self.fields.get(path)
        if known is None:
            return
        try:
            payload = json.loads(body)
        except ValueError:
            return
        unknown = sorted(set(payload) - known) if isinstance(payload, dict) else []
        if unknown:
            accepted = ", ".join(sorted(known))
            raise _Reject(400, "; ".join(f"{name}: unknown field ({path} takes {accepted})" for name in unknown))

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


def tiny_png() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()
