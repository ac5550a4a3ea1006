"""Catalog data layer: the canonical listing schema, a streaming reader for the
fashion-catalog folder layout, a deterministic hash split and a catalog fingerprint.

Canonical schema (one row per listing; a ``pandas.DataFrame`` with these columns):

================  ==========  =============================================================
column            dtype       meaning
================  ==========  =============================================================
``product_id``    str         unique listing id (required, never null)
``title``         str         listing title (required column; null/empty rows are quarantined)
``image_bytes``   bytes       encoded JPEG/PNG, or null when ``image_uri`` is given
``image_uri``     str         local path or ``gs://bucket/object`` of the image, else null
``category``      str         leaf category (required column)
``category_path`` str         category levels joined by ``" > "``, leaf last
``gender``        str         optional attribute (absent or null is allowed)
``colour``        str         optional attribute
``season``        str         optional attribute
``year``          Int64       optional attribute
``usage``         str         optional attribute
``group_id``      Int64       same-product group (from ``same_product_groups.csv``), else null
================  ==========  =============================================================

Folder layout read by :func:`read_catalog`, in a local folder or under a ``gs://bucket/prefix``
(shards, the group file and ``gs://`` image URIs are read through :mod:`components.storage`; the layout of
``shared/datasets/fashion-product-images-small`` and of the Hugging Face mirror
``ashraq/fashion-product-images-small``)::

    <catalog>/data/*.parquet          shards with columns id, productDisplayName, image{bytes,path},
                                      masterCategory, subCategory, articleType, and optional
                                      gender, baseColour, season, year, usage
    <catalog>/same_product_groups.csv optional, columns id,group_id
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

CANONICAL_COLUMNS = [
    "product_id", "title", "image_bytes", "image_uri", "category", "category_path",
    "gender", "colour", "season", "year", "usage", "group_id",
]
OPTIONAL_ATTRIBUTES = ["gender", "colour", "season", "year", "usage"]

#: source column -> canonical column, for the fashion-catalog layout
SOURCE_REQUIRED = {"id": "product_id", "productDisplayName": "title", "articleType": "category"}
SOURCE_IMAGE = "image"
SOURCE_CATEGORY_LEVELS = ["masterCategory", "subCategory", "articleType"]
SOURCE_OPTIONAL = {"gender": "gender", "baseColour": "colour", "season": "season",
                   "year": "year", "usage": "usage"}
GROUPS_FILE = "same_product_groups.csv"
SPLITS = ("train", "validation", "test")


class CatalogError(ValueError):
    """A catalog cannot be read: missing folder, unreadable shard, missing column, bad group file.

    The message names the file and the column (and rows, where rows are at fault).
    """


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of the deterministic hash split (must sum to 1) and the hash salt."""

    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1
    salt: str = "item-split-v1"


def shard_paths(catalog: str | Path) -> list[Path] | list[str]:
    """Sorted parquet shards of a catalog folder (local ``Path`` objects) or of a ``gs://bucket/prefix``
    catalog (``gs://`` URI strings, listed through :mod:`components.storage`).

    Raises:
        CatalogError: the folder or its ``data/`` subfolder does not exist, or holds no ``*.parquet``.
    """
    from components import storage
    if storage.is_gcs(catalog):
        root = str(catalog).rstrip("/")
        try:
            names = storage.list_files(storage.join(root, "data"), glob="*.parquet")
        except storage.StorageError as exc:
            raise CatalogError(f"catalog {root!r} cannot be listed: {exc}") from exc
        shards = [storage.join(root, "data", n) for n in names if "/" not in n]
        if not shards:
            raise CatalogError(f"catalog {root!r} holds no data/*.parquet shard (does the prefix exist?)")
        return shards
    root = Path(catalog)
    if not root.is_dir():
        raise CatalogError(f"catalog folder {str(root)!r} does not exist or is not a folder")
    data = root / "data"
    if not data.is_dir():
        raise CatalogError(f"catalog folder {str(root)!r} has no 'data/' folder of parquet shards")
    shards = sorted(data.glob("*.parquet"))
    if not shards:
        raise CatalogError(f"catalog folder {str(data)!r} holds no *.parquet shard")
    return shards


def _open_shard(path: Path | str) -> pq.ParquetFile:
    """A parquet shard, local or ``gs://`` (read into memory). Raises CatalogError naming it."""
    try:
        from components import storage
        if storage.is_gcs(path):
            return pq.ParquetFile(io.BytesIO(storage.read_bytes(path)))
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...; storage raises StorageError
        raise CatalogError(f"shard {str(path)!r} is unreadable: {exc}") from exc


def check_columns(path: Path, names: Sequence[str]) -> None:
    """Raise :class:`CatalogError` naming the shard and column if a required column is missing."""
    missing = [c for c in [*SOURCE_REQUIRED, SOURCE_IMAGE] if c not in names]
    if missing:
        raise CatalogError(
            f"shard {str(path)!r} lacks required column(s) {missing}; "
            f"required: {[*SOURCE_REQUIRED, SOURCE_IMAGE]}, found: {list(names)}")


def read_groups(catalog: str | Path) -> pd.Series:
    """Same-product groups: a ``product_id`` (str) -> ``group_id`` (int64) Series; empty if no file.

    Raises:
        CatalogError: the file lacks ``id``/``group_id``, has non-integer group ids, or lists an id twice.
    """
    from components import storage
    path = storage.join(catalog, GROUPS_FILE)
    if not storage.exists(path):
        return pd.Series(dtype="int64", name="group_id")
    try:
        groups = pd.read_csv(io.BytesIO(storage.read_bytes(path)), dtype={"id": str})
    except Exception as exc:
        raise CatalogError(f"group file {str(path)!r} is unreadable: {exc}") from exc
    for col in ("id", "group_id"):
        if col not in groups.columns:
            raise CatalogError(f"group file {str(path)!r} lacks column {col!r}")
    gid = pd.to_numeric(groups["group_id"], errors="coerce")
    if gid.isna().any():
        rows = groups.index[gid.isna()].tolist()[:5]
        raise CatalogError(f"group file {str(path)!r}: column 'group_id' is not an integer in rows {rows}")
    dup = groups["id"].duplicated(keep=False)
    if dup.any():
        raise CatalogError(f"group file {str(path)!r}: column 'id' repeats ids "
                           f"{groups.loc[dup, 'id'].unique()[:5].tolist()}")
    return pd.Series(gid.astype("int64").to_numpy(), index=groups["id"].to_numpy(), name="group_id")


def to_canonical(table: pa.Table | pd.DataFrame, source: str = "<table>") -> pd.DataFrame:
    """Map one shard in the fashion-catalog layout to the canonical schema (without ``group_id``).

    Args:
        table: the shard's columns (see module docstring); optional attributes may be absent.
        source: a name for messages (the shard path).

    Returns:
        DataFrame with :data:`CANONICAL_COLUMNS` except ``group_id``; missing optional attributes are null.

    Raises:
        CatalogError: a required column is missing, or the ``image`` column has no ``bytes``.
    """
    df = table.to_pandas() if isinstance(table, pa.Table) else table
    check_columns(Path(source), list(df.columns))
    out = pd.DataFrame({
        "product_id": id_strings(df["id"], source),
        "title": _titles(df["productDisplayName"], source),
    })
    img = df[SOURCE_IMAGE]

    def _bytes(v):
        if isinstance(v, dict):
            return v.get("bytes")
        return v if isinstance(v, (bytes, bytearray)) else None

    def _uri(v):
        return v.get("path") if isinstance(v, dict) and v.get("bytes") is None else None

    out["image_bytes"] = [_bytes(v) for v in img]
    out["image_uri"] = [_uri(v) for v in img]
    out["category"] = df["articleType"].astype(object)
    levels = [c for c in SOURCE_CATEGORY_LEVELS if c in df.columns]
    out["category_path"] = df[levels].astype("string").fillna("").agg(" > ".join, axis=1).astype(object)
    for src, dst in SOURCE_OPTIONAL.items():
        if src in df.columns:
            out[dst] = df[src] if dst == "year" else df[src].astype(object)
        else:
            out[dst] = None
    out["year"] = pd.to_numeric(out["year"], errors="coerce").astype("Int64")
    for name in extra_columns(df):                # a catalog's own attributes, kept for filtered search
        out[name] = df[name].to_numpy()
    return out


#: source columns the canonical schema maps or drops; any other column of scalars is a catalog's own
#: attribute and is kept under its own name (filterable in the catalog index)
SOURCE_KNOWN = {*SOURCE_REQUIRED, SOURCE_IMAGE, *SOURCE_CATEGORY_LEVELS, *SOURCE_OPTIONAL}


def extra_columns(df: pd.DataFrame) -> list[str]:
    """A shard's columns beyond the fashion-catalog layout that hold scalars (numbers, strings,
    booleans) and do not collide with a canonical column: e.g. a marketplace's ``seller_id``,
    ``price`` or ``in_stock``. Kept by :func:`to_canonical` and in the catalog index's listings."""
    out = []
    for name in df.columns:
        if name in SOURCE_KNOWN or name in CANONICAL_COLUMNS or not isinstance(name, str):
            continue
        col = df[name]
        if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype) or all(
                isinstance(v, str) for v in col.dropna().head(100)):
            out.append(name)
    return out


def id_strings(ids: pd.Series, source: str = "<table>", column: str = "id") -> pd.Series:
    """Listing ids as strings, the same whatever dtype the shard stored them in: integers stored as
    floats (one null in an integer column makes pandas and some writers do that) become ``"15970"``,
    not ``"15970.0"``, so that they still join the group file and keep their split. Nulls stay null
    (validation quarantines them).

    Raises:
        CatalogError: a float id that is not a whole number, naming the shard, the column and rows.
    """
    if pd.api.types.is_float_dtype(ids.dtype):
        values = ids.to_numpy(dtype=np.float64)
        present = ~np.isnan(values)
        frac = present & (np.mod(values, 1.0, where=present, out=np.zeros_like(values)) != 0)
        if frac.any():
            rows = np.flatnonzero(frac)[:5].tolist()
            raise CatalogError(f"shard {source!r}: column {column!r} holds non-integer numbers in rows {rows} "
                               f"(e.g. {values[rows[0]]!r}); ids must be integers or strings")
        return pd.Series([str(int(v)) if ok else pd.NA for v, ok in zip(values, present)], index=ids.index,
                         dtype=object)
    return ids.astype("string").astype(object)


def _titles(titles: pd.Series, source: str) -> pd.Series:
    """The title column, checked: strings or nulls only (an integer or bytes title would tokenize to
    nothing and train on an empty title).

    Raises:
        CatalogError: naming the shard, the column ``productDisplayName``, the rows and the types found.
    """
    bad = [i for i, v in enumerate(titles.tolist()) if v is not None and not isinstance(v, str)
           and not (isinstance(v, float) and np.isnan(v))]
    if bad:
        kinds = sorted({type(titles.iloc[i]).__name__ for i in bad})
        raise CatalogError(f"shard {source!r}: column 'productDisplayName' (the title) holds {', '.join(kinds)} "
                           f"values, not text, in {len(bad)} row(s), e.g. rows {bad[:5]}; titles must be strings")
    return titles.astype(object)


#: opt-in for catalogs whose ``image.path`` names files outside the catalog's folder or bucket
FOREIGN_IMAGES_ENV = "ITEM_ALLOW_FOREIGN_IMAGES"


def resolve_image_uris(df: pd.DataFrame, catalog: str | Path, source: str = "<table>") -> pd.DataFrame:
    """Resolve ``image_uri`` against the catalog and keep it inside: a relative path is taken relative to
    the catalog's folder (or ``gs://`` prefix); an absolute path or URI must lie inside that folder (or
    bucket), so that a catalog cannot make the pipeline read any file of the machine or any object the
    credentials reach. ``$ITEM_ALLOW_FOREIGN_IMAGES=1`` lifts the restriction (URIs are still resolved).

    Raises:
        CatalogError: URIs outside the catalog, naming the shard, the column ``image.path`` and rows.
    """
    import os

    from components import storage
    uris = df["image_uri"]
    if not uris.notna().any():
        return df
    allow = os.environ.get(FOREIGN_IMAGES_ENV, "").strip() in ("1", "true", "yes")
    gcs_catalog = storage.is_gcs(catalog)
    root = str(catalog).rstrip("/") if gcs_catalog else Path(catalog).resolve()
    bucket = storage.split_gcs(str(catalog))[0] if gcs_catalog else None
    out, bad = [], []
    for i, uri in enumerate(uris.tolist()):
        if not isinstance(uri, str) or not uri:
            out.append(uri)
            continue
        if storage.is_gcs(uri):
            resolved, inside = uri, gcs_catalog and storage.split_gcs(uri)[0] == bucket
        elif gcs_catalog:
            resolved = uri if uri.startswith("/") else storage.join(root, uri)
            inside = not uri.startswith("/") and ".." not in Path(uri).parts
        else:
            resolved = str((root / uri).resolve())
            inside = Path(resolved).is_relative_to(root)
        out.append(resolved)
        if not inside:
            bad.append(i)
    if bad and not allow:
        raise CatalogError(f"shard {source!r}: column 'image.path' names images outside the catalog {str(catalog)!r} "
                           f"in {len(bad)} row(s), e.g. rows {bad[:5]} ({uris.iloc[bad[0]]!r}); keep images inside "
                           f"the catalog's folder or bucket, or set {FOREIGN_IMAGES_ENV}=1 to allow them")
    df = df.copy()
    df["image_uri"] = out
    return df


def iter_catalog(catalog: str | Path, batch_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """Stream a catalog folder in the canonical schema, one shard (or ``batch_rows`` rows) at a time.

    Images stay encoded (``image_bytes``); nothing is decoded here.

    Yields:
        canonical DataFrames with ``group_id`` filled from ``same_product_groups.csv``.

    Raises:
        CatalogError: see :func:`shard_paths`, :func:`read_groups`, :func:`to_canonical`.
    """
    shards = shard_paths(catalog)
    groups = read_groups(catalog)
    for path in shards:
        pf = _open_shard(path)
        check_columns(path, pf.schema_arrow.names)
        if pf.metadata.num_rows == 0:
            logger.warning("shard %s holds no rows; skipped", path)
            continue
        try:
            batches = (pf.iter_batches(batch_size=batch_rows) if batch_rows
                       else [pf.read()])
            for batch in batches:
                df = to_canonical(pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch)
                                  else batch, str(path))
                df = resolve_image_uris(df, catalog, str(path))
                df["group_id"] = df["product_id"].map(groups).astype("Int64")
                yield df
        except CatalogError:
            raise
        except Exception as exc:
            raise CatalogError(f"shard {str(path)!r} is unreadable: {exc}") from exc


def read_catalog(catalog: str | Path, max_listings: int | None = None,
                 split: SplitSpec = SplitSpec()) -> pd.DataFrame:
    """Read a whole catalog folder into one canonical DataFrame, optionally a deterministic sample.

    Args:
        catalog: folder in the layout of the module docstring.
        max_listings: keep at most this many listings: every same-product group member (the
            search labels), then the others with the smallest split hash. ``None`` keeps all.
        split: split fractions/salt used to order the sample.

    Returns:
        canonical DataFrame (RangeIndex), images still encoded.
    """
    frames = list(iter_catalog(catalog))
    if not frames:
        raise CatalogError(f"catalog {str(catalog)!r}: every shard is empty; there is nothing to read")
    df = pd.concat(frames, ignore_index=True)
    logger.info("read %d listings from %d shard(s) of %s", len(df), len(frames), catalog)
    if max_listings is not None and len(df) > max_listings:
        df = sample_catalog(df, max_listings, split)
        logger.info("sampled %d listings (all same-product group members kept)", len(df))
    return df


def split_hash(product_ids: Sequence[str], salt: str = SplitSpec.salt) -> np.ndarray:
    """Uniform hash of each id in [0, 1): first 8 bytes of SHA-1(salt + ":" + id) / 2**64. float64 (n,)."""
    out = np.empty(len(product_ids), dtype=np.float64)
    for i, pid in enumerate(product_ids):
        digest = hashlib.sha1(f"{salt}:{pid}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def assign_split(product_ids: Sequence[str], spec: SplitSpec = SplitSpec()) -> np.ndarray:
    """Deterministic train/validation/test assignment by a hash of ``product_id``.

    The split of an id never depends on the other rows, so adding listings to a catalog never
    moves an existing listing to another split.

    Returns:
        object array (n,) of ``"train"``, ``"validation"`` or ``"test"``.

    Raises:
        ValueError: the fractions are negative or do not sum to 1.
    """
    fr = np.array([spec.train, spec.validation, spec.test])
    if (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fr.tolist()}")
    h = split_hash(product_ids, spec.salt)
    idx = np.searchsorted(np.cumsum(fr)[:-1], h, side="right")
    return np.array(SPLITS, dtype=object)[idx]


def sample_catalog(df: pd.DataFrame, max_listings: int, split: SplitSpec = SplitSpec()) -> pd.DataFrame:
    """Deterministic sample of at most ``max_listings`` rows that keeps same-product groups whole.

    Groups are taken in order of their id's hash while they fit in half the budget (all of them at
    catalog scale: 1,100 members), then other listings in order of their id's hash fill the rest.
    """
    gid = df["group_id"]
    grouped = gid.notna().to_numpy()
    keep_groups: list = []
    budget = min(int(grouped.sum()), max_listings // 2)
    sizes = gid[grouped].value_counts()
    order = np.argsort(split_hash([str(g) for g in sizes.index], split.salt + ":groups"), kind="stable")
    used = 0
    for g, n in zip(sizes.index[order], sizes.to_numpy()[order]):
        if used + n <= budget:
            keep_groups.append(g)
            used += int(n)
    group_rows = np.flatnonzero(gid.isin(keep_groups).to_numpy())
    rest = np.flatnonzero(~grouped)
    rank = np.argsort(split_hash(df["product_id"].to_numpy()[rest], split.salt + ":sample"), kind="stable")
    keep = np.sort(np.concatenate([group_rows, rest[rank[:max(0, max_listings - len(group_rows))]]]))
    return df.iloc[keep].reset_index(drop=True)


def fingerprint(df: pd.DataFrame) -> str:
    """SHA-256 hex digest of the catalog content (ids, titles, categories, image bytes/URIs), row-order free."""
    h = hashlib.sha256()
    order = np.argsort(df["product_id"].to_numpy().astype(str), kind="stable")
    for i in order:
        row = df.iloc[i]
        img = row["image_bytes"]
        img_digest = hashlib.sha1(img).hexdigest() if isinstance(img, (bytes, bytearray)) else str(row["image_uri"])
        h.update(f"{row['product_id']}\x1f{row['title']}\x1f{row['category_path']}\x1f{img_digest}\x1e".encode())
    return h.hexdigest()


def write_parquet_atomic(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` to parquet via a temporary file and ``os.replace`` (never half-written)."""
    from item_model.io import atomic_path
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
