"""Request and response models of the ITEm service, the checks every request passes before it
reaches the model (so one bad listing never fails a batch, and every failure is a 4xx naming the
field).

Limits (environment variables, read at import; defaults in brackets):

    ITEM_MAX_LISTINGS      listings per ``/embed`` request                       [64]
    ITEM_MAX_TITLE_CHARS   characters per title (the catalog validation's limit)  [200]
    ITEM_MAX_IMAGE_BYTES   encoded bytes per image                                [4 MiB]
    ITEM_MAX_IMAGE_SIDE    pixels per image side (the catalog validation's limit) [4096]
    ITEM_MAX_K             largest ``k`` of ``/similar``                          [100]
    ITEM_MAX_BODY_BYTES    bytes per request body (enforced by the service's ASGI guard) [8 MiB]
    ITEM_MAX_IMAGE_PIXELS  pixels per photo, from its header, before decoding     [12,000,000]
    ITEM_MAX_REQUEST_PIXELS  pixels of all photos of one request, from their headers [64,000,000]

A request's photos are checked against both pixel budgets from their headers
(:func:`check_request_images`) and decoded (:func:`decode_images`) before the request reaches
BentoML's validation, off the event loop (the service's ASGI guard runs the check in a thread and the
decoding in a pool of processes); the decoded pixels are handed to :class:`Listing`'s validator
(:func:`store_predecoded`), so every photo is decoded once.

This module imports no model code: the image size listings are decoded to is set by the service
once its model is loaded (:func:`set_image_size`).
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections import OrderedDict
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"environment variable {name}={value} must be >= 1")
    return value


MAX_LISTINGS = _env_int("ITEM_MAX_LISTINGS", 64)
MAX_TITLE_CHARS = _env_int("ITEM_MAX_TITLE_CHARS", 200)        # = ValidationConfig.title_max_chars
MAX_IMAGE_BYTES = _env_int("ITEM_MAX_IMAGE_BYTES", 4 * 1024 * 1024)
MAX_IMAGE_SIDE = _env_int("ITEM_MAX_IMAGE_SIDE", 4096)          # = ValidationConfig.image_max_side
MAX_K = _env_int("ITEM_MAX_K", 100)
MAX_BODY_BYTES = _env_int("ITEM_MAX_BODY_BYTES", 8 * 1024 * 1024)
MAX_IMAGE_PIXELS = _env_int("ITEM_MAX_IMAGE_PIXELS", 12_000_000)   # = item_model.image_utils.MAX_IMAGE_PIXELS
MAX_REQUEST_PIXELS = _env_int("ITEM_MAX_REQUEST_PIXELS", 64_000_000)

#: (height, width) listing photos are resized to; set by the service from the model config.
_IMAGE_SIZE: tuple[int, int] | None = None


def set_image_size(size_hw: tuple[int, int] | None) -> None:
    """Set the (height, width) in pixels that :class:`Listing` images are decoded and resized to
    (the model's ``(config.image_height, config.image_width)``); None keeps the native size."""
    global _IMAGE_SIZE
    _IMAGE_SIZE = None if size_hw is None else (int(size_hw[0]), int(size_hw[1]))


def decode_base64_image(value: str) -> bytes:
    """Base64 text (standard alphabet, padding required; a ``data:image/...;base64,`` prefix is
    allowed) -> the encoded image bytes.

    Raises:
        ValueError: not base64, empty, or over ``MAX_IMAGE_BYTES`` (message without the field name).
    """
    text = value.strip()
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ValueError("a data URL must be of the form 'data:image/...;base64,<data>'")
    if len(text) // 4 * 3 > MAX_IMAGE_BYTES + 2:
        raise ValueError(f"image of about {len(text) // 4 * 3} bytes exceeds the limit of {MAX_IMAGE_BYTES} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64 (expected the JPEG/PNG file bytes, base64-encoded)") from None
    if not data:
        raise ValueError("empty image")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image of {len(data)} bytes exceeds the limit of {MAX_IMAGE_BYTES} bytes")
    return data


def decode_listing_image(data: bytes, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 (H, W, 3) at ``size_hw`` (``item_model.image_utils.decode_image``),
    after checking the header: at most ``MAX_IMAGE_SIDE`` pixels a side and the decoder's pixel budget
    (``item_model.image_utils.MAX_IMAGE_PIXELS``), so a small file cannot decompress into gigabytes.

    Raises:
        ValueError: not a decodable image, or too large (message without the field name).
    """
    from item_model.image_utils import ImageTooLarge, decode_image

    _check_header(data)
    try:
        return decode_image(data, size_hw, max_pixels=MAX_IMAGE_PIXELS)   # checks the budget before decoding
    except ImageTooLarge as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # truncated or corrupt pixel data, unsupported modes
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None


def _check_header(data: bytes) -> int:
    """The photo's pixel count from its header, after the per-photo limits (side, pixel budget).

    Raises:
        ValueError: no readable image header, or over a limit (message without the field name).
    """
    from item_model.image_utils import image_size
    try:
        width, height = image_size(data)
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, truncated headers...
        raise ValueError(f"not a decodable image ({type(exc).__name__})") from None
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise ValueError(f"image of {width} x {height} px exceeds the limit of {MAX_IMAGE_SIDE} px a side")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {width} x {height} px = {width * height / 1e6:.1f} megapixels exceeds the "
                         f"limit of {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels a photo (ITEM_MAX_IMAGE_PIXELS)")
    return width * height


class RequestRejected(Exception):
    """A request refused before validation: HTTP ``status`` and ``message`` (``"<field>: <why>"``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


#: photos decoded off the event loop (:func:`store_predecoded`), keyed by their base64 text, waiting for
#: :class:`Listing`'s validator (which takes them out); bounded, oldest dropped first
_PREDECODED: "OrderedDict[str, list]" = OrderedDict()      # text -> [pixels, times still to be taken]
_PREDECODED_LOCK = threading.Lock()
_PREDECODED_MAX = 4 * MAX_LISTINGS * 8


def _request_images(path: str, payload: Any) -> list[tuple[str, str]]:
    """``(field path, base64 text)`` of every photo in a JSON request body of ``/embed`` or ``/similar``."""
    if path == "/embed" and isinstance(payload, dict) and isinstance(payload.get("listings"), list):
        items = [(f"listings[{i}]", x) for i, x in enumerate(payload["listings"])]
    elif path == "/similar" and isinstance(payload, dict):
        items = [("listing", payload.get("listing"))]
    else:
        return []
    return [(f"{where}.image", x["image"]) for where, x in items
            if isinstance(x, dict) and isinstance(x.get("image"), str) and x["image"]]


def check_request_images(path: str, body: bytes) -> list[tuple[str, bytes]]:
    """Check a request's photos against the pixel budgets from their headers (no pixel decoded).

    A photo over ``MAX_IMAGE_SIDE`` or ``MAX_IMAGE_PIXELS`` is refused naming its field, and photos
    holding more than ``MAX_REQUEST_PIXELS`` together refuse the request. A photo whose base64 or
    header is broken is left to :class:`Listing`'s validator, which names the field the same way; a
    body that is not JSON is left to BentoML.

    Returns:
        ``(base64 text, encoded bytes)`` of each photo that passed, to decode (:func:`decode_images`).

    Raises:
        RequestRejected: 400 (one photo over a per-photo limit, ``listings[i].image: ...``) or 413
            (the request's photos over ``MAX_REQUEST_PIXELS`` together, naming ``listings``/``listing``).
    """
    import json
    try:
        payload = json.loads(body)
    except ValueError:
        return []
    checked, total = [], 0
    for field, text in _request_images(path, payload):
        try:
            data = decode_base64_image(text)
        except ValueError:
            continue
        try:
            total += _check_header(data)
        except ValueError as exc:
            if "not a decodable image" in str(exc):
                continue
            raise RequestRejected(400, f"{field}: {exc}") from None
        checked.append((text, data))
    if total > MAX_REQUEST_PIXELS:
        where = "listings" if path == "/embed" else "listing"
        raise RequestRejected(413, f"{where}: the photos of this request hold {total / 1e6:.1f} megapixels "
                                   f"together, over the limit of {MAX_REQUEST_PIXELS / 1e6:.1f} megapixels a "
                                   f"request (ITEM_MAX_REQUEST_PIXELS); send them in smaller requests")
    return checked


def decode_images(datas: list[bytes], size_hw: tuple[int, int]) -> list[Optional[np.ndarray]]:
    """Decode checked photos to uint8 (H, W, 3) at ``size_hw`` (None where decoding fails: the
    validator decodes that one again and names its field). A top-level function, so that the service
    can run it in a pool of processes: PNG decoding holds the GIL, and in a thread it stalled the
    event loop (``/readyz`` 0.8 s during 12 x 2000 x 2000 PNGs; docs/serving.md)."""
    out: list[Optional[np.ndarray]] = []
    for data in datas:
        try:
            out.append(decode_listing_image(data, size_hw))
        except ValueError:
            out.append(None)
    return out


def store_predecoded(texts: list[str], pixels: list[Optional[np.ndarray]]) -> int:
    """Hand decoded photos to :class:`Listing`'s validator (keyed by their base64 text).

    Returns:
        how many were stored.
    """
    n = 0
    with _PREDECODED_LOCK:
        for text, px in zip(texts, pixels):
            if px is not None:                          # the same photo twice in a request: taken twice
                entry = _PREDECODED.setdefault(text, [px, 0])
                entry[1] += 1
                n += 1
        while len(_PREDECODED) > _PREDECODED_MAX:
            _PREDECODED.popitem(last=False)
    return n


def image_size_hw() -> Optional[tuple[int, int]]:
    """The (height, width) listing photos are decoded to (:func:`set_image_size`), or None."""
    return _IMAGE_SIZE


def _take_predecoded(text: str) -> Optional[np.ndarray]:
    with _PREDECODED_LOCK:
        entry = _PREDECODED.get(text)
        if entry is None:
            return None
        entry[1] -= 1
        if entry[1] <= 0:
            del _PREDECODED[text]
        return entry[0]


class _DecodedImage(str):
    """The base64 text of a validated photo, carrying its decoded pixels (uint8 (H, W, 3))."""

    pixels: np.ndarray

    @classmethod
    def of(cls, text: str, pixels: np.ndarray) -> "_DecodedImage":
        out = cls(text)
        out.pixels = pixels
        return out


class Listing(BaseModel):
    """One listing: a title, a photo, or both (at least one).

    ``image`` is the JPEG/PNG file, base64-encoded (or a ``data:image/...;base64,`` URL). On
    validation the photo is decoded and resized to the model's input size (:attr:`pixels`, uint8
    (H, W, 3)); neither the bytes nor the pixels are ever logged.
    """

    model_config = ConfigDict(extra="forbid")

    title: Optional[str] = Field(None, max_length=MAX_TITLE_CHARS,
                                 description=f"product title, at most {MAX_TITLE_CHARS} characters",
                                 examples=["Lucera Women Silver Earrings"])
    image: Optional[str] = Field(None, description="JPEG/PNG photo, base64-encoded "
                                 f"(at most {MAX_IMAGE_BYTES} bytes, {MAX_IMAGE_SIDE} px a side)")

    @field_validator("image")
    @classmethod
    def _decode(cls, value: Optional[str]) -> Optional[str]:
        # Decoded here, not in the model call, so that a bad photo fails its own request with a
        # 4xx naming the field before any batching; the pixels ride on the validated string.
        if value is None or value == "":
            return None
        pixels = _take_predecoded(value)                # decoded off the event loop (store_predecoded)
        if pixels is None:
            pixels = decode_listing_image(decode_base64_image(value), _IMAGE_SIZE)
        return _DecodedImage.of(value, pixels)

    @model_validator(mode="after")
    def _not_empty(self) -> "Listing":
        if not self.has_title and self.image is None:
            raise ValueError("the listing has neither a 'title' nor an 'image'")
        return self

    @property
    def has_title(self) -> bool:
        return isinstance(self.title, str) and self.title.strip() != ""

    @property
    def pixels(self) -> Optional[np.ndarray]:
        """The decoded photo, uint8 (H, W, 3) at the model's image size, or None."""
        return getattr(self.image, "pixels", None)

    @property
    def kind(self) -> Literal["joint", "text", "image"]:
        """Which embedding this listing gets: ``joint`` (title + photo), ``text`` or ``image``."""
        if self.has_title:
            return "joint" if self.image is not None else "text"
        return "image"


def _id_to_str(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


ProductId = Annotated[str, BeforeValidator(_id_to_str), Field(min_length=1, max_length=64,
                                                               examples=["1163"])]


class Embedding(BaseModel):
    """One listing's product embedding."""

    embedding: list[float] = Field(description="L2-normalised vector, D floats (D = 384 for ITEm)")
    kind: Literal["joint", "text", "image"] = Field(description="joint (title + photo), text or image")
    model_version: str = Field(description="BentoML tag of the model that computed it", examples=["item:abc123"])
    error: Optional[str] = Field(None, description="set only inside the service when this listing alone failed in "
                                 "its batch; the request is then answered 500 naming it, and never carries it")


class Neighbour(BaseModel):
    """One catalog listing returned by ``/similar``."""

    product_id: str
    title: Optional[str] = None
    category: Optional[str] = None
    score: float = Field(description="mode vector: cosine similarity to the query, in [-1, 1]; keyword: the "
                                     "BM25 score; hybrid: the reciprocal-rank-fusion score")


class SimilarResult(BaseModel):
    """The top-k catalog listings for a query, best first."""

    model_version: str
    query_kind: Literal["joint", "text", "image", "catalog"] = Field(
        description="the query's embedding: a listing's joint/text/image embedding, or 'catalog' for "
                    "a product_id (its stored embedding)")
    index: Literal["joint", "text", "image"] = Field(
        description="the catalog embeddings searched: the joint ones, or those of the query's kind")
    product_id: Optional[str] = Field(None, description="the queried product_id (excluded from the results)")
    k: int
    catalog_size: int
    search: Literal["exact", "usearch-hnsw", "faiss-hnsw-sq8+rerank", "faiss-ivfpq+rerank", "milvus", "filtered-cells",
                    "bm25"] = Field(
        "exact", description="how the index was searched: exactly (every listing scored, or under a selective "
                             "filter every matching one), through the approximate index (HNSW, inverted file or "
                             "Milvus) built for catalogs above the exact-search threshold, 'filtered-cells' (a "
                             "filter that removed the query's neighbourhood: the matching listings of the k-means "
                             "cells nearest the query, scored exactly), or 'bm25' (mode keyword)")
    mode: Literal["vector", "keyword", "hybrid"] = Field(
        "vector", description="vector: cosine similarity; keyword: BM25 over the titles; hybrid: both, fused by "
                              "reciprocal rank fusion")
    matching: Optional[int] = Field(None, description="listings the filters and exclude_ids keep (the catalog "
                                                      "size without them)")
    index_source: Literal["package", "catalog"] = Field(
        "package", description="'catalog': the catalog index of this model version under the storage root "
                               "(written by the training run, refreshed by `item index`); 'package': the copy "
                               "of it packaged with the model")
    note: Optional[str] = Field(None, description="set when the answer differs from the request, e.g. k clipped")
    results: list[Neighbour]


def format_loc(loc: Any) -> str:
    """A pydantic error location -> a field path: ``("listings", 2, "image")`` -> ``listings[2].image``;
    the empty location (the body itself) -> ``body``."""
    out = ""
    for part in loc or ():
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def error_message(errors: list[dict], limit: int = 5) -> str:
    """Pydantic errors (``ValidationError.errors()``) -> one line, each error as ``field: message``."""
    parts = []
    for err in errors[:limit]:
        msg = str(err.get("msg", "invalid"))
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        parts.append(f"{format_loc(err.get('loc'))}: {msg}")
    if len(errors) > limit:
        parts.append(f"(and {len(errors) - limit} more)")
    return "; ".join(parts)
