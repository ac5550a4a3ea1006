"""Images of listings: the one decoder used by the processor, the evaluation, the catalog checks and
serving, and the reader of a row's encoded image.

A row's image is its ``image_bytes``, else the file or object its ``image_uri`` names. Local paths are
read here; other schemes (``gs://``) are read by the reader the storage layer registers
(:func:`register_uri_reader`, done by :mod:`components.storage` on import), so this ML library
does not depend on the platform that stores catalogs.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

#: URI scheme (``"gs"``) -> function reading the whole object as bytes
URI_READERS: dict[str, Callable[[str], bytes]] = {}


def register_uri_reader(scheme: str, reader: Callable[[str], bytes]) -> None:
    """Read ``<scheme>://...`` image URIs with ``reader`` (one call per image, returns the encoded bytes)."""
    URI_READERS[scheme] = reader


def read_uri(uri: str) -> bytes:
    """The bytes at ``uri``: a local path, or ``scheme://...`` through a registered reader.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: no reader is registered for the URI's scheme.
    """
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        if scheme not in URI_READERS:
            raise ValueError(f"image_uri {uri!r}: no reader for '{scheme}://' URIs "
                             f"(import components.storage to read gs:// objects)")
        return URI_READERS[scheme](uri)
    return Path(uri).read_bytes()


def load_image_bytes(row: pd.Series | dict) -> bytes:
    """The encoded image of a canonical row: ``image_bytes``, else the file/``gs://`` object at ``image_uri``.

    Raises:
        ValueError: the row has neither, naming the ``product_id``.
        FileNotFoundError / components.storage.StorageNotFound: ``image_uri`` names no file/object.
        ValueError: ``image_uri`` has a scheme no reader is registered for (:func:`register_uri_reader`).
    """
    data = row.get("image_bytes")
    if isinstance(data, (bytes, bytearray)) and len(data) > 0:
        return bytes(data)
    uri = row.get("image_uri")
    if isinstance(uri, str) and uri:
        return read_uri(uri)                     # a local path, or a gs:// object via the storage layer
    raise ValueError(f"row product_id={row.get('product_id')!r}: field 'image_bytes' is empty and no 'image_uri'")


#: the default pixel budget of one image (width x height), checked on the header before decoding:
#: a 12-megapixel photo passes; a 4096 x 4096 PNG of one colour (58 KB encoded, 50 MB decoded) does not
MAX_IMAGE_PIXELS = 12_000_000


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the budget (nothing was decoded)."""


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) declared by the image's header; no pixel data is decoded.

    Raises:
        PIL.UnidentifiedImageError / OSError: not an image Pillow can identify.
    """
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def decode_image(data: bytes, size_hw: tuple[int, int] | None = None,
                 max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes to RGB uint8 (H, W, 3), resized (bilinear) to ``size_hw`` = (height, width):
    the one decoder of the catalog (processor, evaluation, validation) and of serving.

    - the header's declared size is checked against ``max_pixels`` before any pixel is decoded
      (a decompression bomb is refused, not decoded);
    - EXIF orientation is honoured (``PIL.ImageOps.exif_transpose``: a phone photo stored sideways
      comes out upright);
    - transparency is flattened on white (a cut-out product on a transparent background looks as it
      does on a web page, not black);
    - 16-bit images (PNG ``I;16``/``I``) are scaled to 8 bits by /257, not clipped at 255.

    Raises:
        ImageTooLarge: width x height > ``max_pixels`` (None: no budget).
        PIL.UnidentifiedImageError / OSError: the bytes are not a decodable image.
    """
    from PIL import Image, ImageOps
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(f"image of {width} x {height} px ({width * height / 1e6:.1f} megapixels) exceeds "
                                f"the budget of {max_pixels / 1e6:.1f} megapixels")
        im = ImageOps.exif_transpose(im)
        im = _to_rgb(im)
        if size_hw is not None and (im.height, im.width) != tuple(size_hw):
            im = im.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _to_rgb(im):
    """Any Pillow mode -> RGB: 16/32-bit integer greyscale scaled to 8 bits, alpha flattened on white."""
    from PIL import Image
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        scale = 257.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(arr * 255.0 if arr.max(initial=0) <= 1.0 else arr), 0, 255)
                               .astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
