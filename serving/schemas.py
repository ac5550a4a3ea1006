"""Request and response models of the ITEm service, the checks every request passes before it
reaches the model (so one bad listing never fails a batch, and every failure is a 4xx naming the
field), and the exact search of ``/similar`` (:func:`top_k`).

Limits (environment variables, read at import; defaults in brackets):

    ITEM_MAX_LISTINGS      listings per ``/embed`` request                       [64]
    ITEM_MAX_TITLE_CHARS   characters per title (the catalog validation's limit)  [200]
    ITEM_MAX_IMAGE_BYTES   encoded bytes per image                                [4 MiB]
    ITEM_MAX_IMAGE_SIDE    pixels per image side (the catalog validation's limit) [4096]
    ITEM_MAX_K             largest ``k`` of ``/similar``                          [100]
    ITEM_MAX_BODY_BYTES    bytes per request body (enforced by the service's ASGI guard) [8 MiB]

This module imports no model code: the image size listings are decoded to is set by the service
once its model is loaded (:func:`set_image_size`).
"""

from __future__ import annotations

import base64
import binascii
import os
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
    from item_model.image_utils import ImageTooLarge, decode_image, image_size

    try:
        width, height = image_size(data)
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, truncated headers...
        raise ValueError(f"not a decodable image ({type(exc).__name__})") from None
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise ValueError(f"image of {width} x {height} px exceeds the limit of {MAX_IMAGE_SIDE} px a side")
    try:
        return decode_image(data, size_hw)          # also checks the pixel budget before decoding
    except ImageTooLarge as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # truncated or corrupt pixel data, unsupported modes
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None


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
        return _DecodedImage.of(value, decode_listing_image(decode_base64_image(value), _IMAGE_SIZE))

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


class Neighbour(BaseModel):
    """One catalog listing returned by ``/similar``."""

    product_id: str
    title: Optional[str] = None
    category: Optional[str] = None
    score: float = Field(description="cosine similarity to the query, in [-1, 1]")


class SimilarResult(BaseModel):
    """The top-k catalog listings for a query, best first."""

    model_version: str
    query_kind: Literal["joint", "text", "image", "catalog"] = Field(
        description="the query's embedding: a listing's joint/text/image embedding, or 'catalog' for "
                    "a product_id (its stored embedding)")
    index: Literal["item", "item_text_only", "item_image_only"] = Field(
        description="the catalog embeddings searched: joint ('item'), or those of the query's kind")
    product_id: Optional[str] = Field(None, description="the queried product_id (excluded from the results)")
    k: int
    catalog_size: int
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


def top_k(index: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search: one float32 matrix-vector product over the whole index
    (torch, so it uses the worker's one thread pool) and ``np.argpartition`` for the top k.

    Args:
        index: (n, D) float32, C-contiguous, L2-normalised rows (so scores are cosine similarities).
        query: (D,) float32.
        k: results wanted (>= 1); fewer when the index is smaller.
        exclude: a row never returned (the query's own row), or None.

    Returns:
        (rows (k,) int64, scores (k,) float32), best first.
    """
    import torch

    scores = torch.mv(torch.from_numpy(index), torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))).numpy()
    if exclude is not None:
        scores[exclude] = -np.inf
    k = min(int(k), len(scores) - (exclude is not None))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return top.astype(np.int64), scores[top]
