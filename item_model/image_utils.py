"""Images of listings: the one decoder used by the processor, the evaluation, the catalog checks and
serving, and the reader of a row's encoded image.

A row's image is its ``image_bytes``, else the file or object its ``image_uri`` names. Local paths are
read here; other schemes (``gs://``) are read by the reader the storage layer registers
(:func:`register_uri_reader`, done by :mod:`item_model.data.storage` on import), so this ML library
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
                             f"(import item_model.data.storage to read gs:// objects)")
        return URI_READERS[scheme](uri)
    return Path(uri).read_bytes()


def load_image_bytes(row: pd.Series | dict) -> bytes:
    """The encoded image of a canonical row: ``image_bytes``, else the file/``gs://`` object at ``image_uri``.

    Raises:
        ValueError: the row has neither, naming the ``product_id``.
        FileNotFoundError / item_model.data.storage.StorageNotFound: ``image_uri`` names no file/object.
        ValueError: ``image_uri`` has a scheme no reader is registered for (:func:`register_uri_reader`).
    """
    data = row.get("image_bytes")
    if isinstance(data, (bytes, bytearray)) and len(data) > 0:
        return bytes(data)
    uri = row.get("image_uri")
    if isinstance(uri, str) and uri:
        return read_uri(uri)                     # a local path, or a gs:// object via the storage layer
    raise ValueError(f"row product_id={row.get('product_id')!r}: field 'image_bytes' is empty and no 'image_uri'")


def decode_image(data: bytes, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode JPEG/PNG bytes to RGB uint8 (H, W, 3), resized (bilinear) to ``size_hw`` = (height, width).

    Raises:
        PIL.UnidentifiedImageError / OSError: the bytes are not a decodable image.
    """
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if size_hw is not None and (im.height, im.width) != tuple(size_hw):
            im = im.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)
