"""Embedding a whole catalog shard by shard, incrementally, and building its index: the logic of the
index pipeline (``pipelines/index.py``, ``item index``); no Kubeflow or BentoML imports here.

Layout under an index root (``<storage root>/indexes/<model version>/``, local or ``gs://``)::

    shards/shard-00003-of-00008.parquet   one file a shard: product_id, content_hash, model_version,
                                          title, the filter columns, group_id, and one float32
                                          fixed-size-list column per embedding kind ("joint",
                                          "text", "image": INDEX_KINDS), L2-normalised
    catalog_index/                        the whole catalog's index (:mod:`components.index.layout`
                                          layout, the one serving and monitoring read), its
                                          ``index.json`` naming the model version
    vector_index/<kind>/                  an approximate index per kind (:mod:`.vector_index`), written
                                          only when the catalog holds more than ``exact_max`` listings,
                                          with the k-means cells of filtered search (filter_cells.npz)

A listing belongs to shard ``sha1(product_id) mod num_shards``, so the same listing always lands in the
same shard and a shard task reads only its own rows' photos. Each listing carries a content hash
(SHA-256 of its title and its photo's bytes): a second run with the same model version embeds only
listings that are new or whose title or photo changed, keeps the others' vectors, and drops removed
listings; a shard whose content did not change is not rewritten (an empty delta is a no-op). The root
is per model version, so a new model version re-embeds everything, and :func:`build_index` refuses a
shard holding another version's vectors: an index never mixes two models.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components import storage
from components.storage.layout import INDEX_KINDS, LEGACY_INDEX_KINDS, index_kind
from components.index.backends import ANN_SETTINGS as RERANK_SETTINGS
from components.index.backends import IVFPQ_SETTINGS
from components.index.backends import IndexVersionMismatch
from components.index.layout import listing_columns

logger = logging.getLogger(__name__)

#: above this many listings an approximate index is built beside the exact one (docs/index.md)
DEFAULT_EXACT_MAX = 200_000
#: the approximate index kinds ``build_index`` writes (:mod:`.vector_index`)
ANN_BACKENDS = ("usearch-hnsw", "faiss-hnsw-sq8+rerank", "faiss-ivfpq+rerank", "milvus")


class ShardMissing(FileNotFoundError):
    """A shard's output is missing when the index is built (its task failed or never ran)."""


def shard_file(index_root: str | Path, shard: int, num_shards: int) -> str:
    """Location of one shard's parquet file under ``index_root``."""
    return storage.join(str(index_root), "shards", f"shard-{shard:05d}-of-{num_shards:05d}.parquet")


def shard_of(product_ids, num_shards: int) -> np.ndarray:
    """The shard of each listing: the first 8 bytes of ``sha1(product_id)`` modulo ``num_shards``.
    (n,) int64, stable across runs and machines."""
    return np.array([int.from_bytes(hashlib.sha1(str(p).encode()).digest()[:8], "big") % num_shards
                     for p in product_ids], dtype=np.int64)


def content_hashes(df: pd.DataFrame) -> np.ndarray:
    """SHA-256 hex digest of each listing's title and photo bytes (photos given by ``image_uri`` are
    read through :mod:`components.storage`). (n,) object array of 64-character strings."""
    out = []
    for title, data, uri in zip(df["title"], df["image_bytes"], df["image_uri"]):
        if not isinstance(data, (bytes, bytearray)):
            data = storage.read_bytes(uri) if isinstance(uri, str) and uri else b""
        h = hashlib.sha256(str(title).encode())
        h.update(b"\x1f")
        h.update(hashlib.sha256(data).digest())
        out.append(h.hexdigest())
    return np.array(out, dtype=object)


def model_digest(model_dir: str | Path) -> str:
    """SHA-256 hex digest of a model folder's ``config.json`` and weights (``*.safetensors``, in name
    order) and of the inference precision its vectors are computed in (``ITEM_INFERENCE_PRECISION``
    wins over the config): two vectors of one listing computed from folders of one digest are the same
    vector, whichever step computed them."""
    import os

    from item_model.modeling_item import PRECISION_ENV

    folder = Path(model_dir)
    h = hashlib.sha256()
    for path in [folder / "config.json", *sorted(folder.glob("*.safetensors"))]:
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(f"precision={os.environ.get(PRECISION_ENV, '')}".encode())
    return h.hexdigest()


def load_reusable_vectors(path: str | Path, model_dir: str | Path, kinds: tuple[str, ...]
                          ) -> dict[tuple[str, str], dict[str, np.ndarray]] | None:
    """The vectors another step computed with the same model (the evaluate step's ``item_embeddings``,
    :func:`components.steps.training.save_eval_embeddings`), keyed by ``(product_id, content_hash)``,
    or None (logged) when they cannot be reused: another model digest (:func:`model_digest`), no
    content hashes, or a kind missing. Read with ``allow_pickle=False``.

    Args:
        path: an ``.npz`` with ``product_id`` (n,) str, ``content_hash`` (n,) str, ``model_digest`` and one
            (n, D) float32 array per kind (named by kind or by the evaluation's names, ``item``, ...).
        model_dir: the model the index is embedded with (its digest must match the file's).

    Returns:
        ``{(product_id, content_hash): {kind: (D,) float32}}``, or None.
    """
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
        names = {kind: next((n for n in (kind, *[k for k, v in LEGACY_INDEX_KINDS.items() if v == kind])
                             if n in files), None) for kind in kinds}
        if "model_digest" not in files or "content_hash" not in files or None in names.values():
            logger.info("vectors at %s not reused: no model digest, content hashes or kinds %s", path,
                        [k for k, n in names.items() if n is None])
            return None
        if str(z["model_digest"]) != model_digest(model_dir):
            logger.info("vectors at %s not reused: computed by another model than %s", path, model_dir)
            return None
        ids, hashes = z["product_id"].astype(str), z["content_hash"].astype(str)
        matrices = {kind: z[name] for kind, name in names.items()}
    return {(p, h): {kind: matrices[kind][i] for kind in kinds} for i, (p, h) in enumerate(zip(ids, hashes))}


def indexable(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows that can be embedded (a non-empty title and a photo) and the ids of the others."""
    has_title = df["title"].map(lambda t: isinstance(t, str) and t.strip() != "")
    has_photo = df["image_bytes"].notna() | df["image_uri"].map(lambda u: isinstance(u, str) and u != "")
    ok = (has_title & has_photo).to_numpy()
    return df[ok].reset_index(drop=True), df.loc[~ok, "product_id"].astype(str).tolist()


def _vectors_table(df: pd.DataFrame, vectors: dict[str, np.ndarray]):
    import pyarrow as pa
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    for kind, matrix in vectors.items():
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        table = table.append_column(kind, pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)),
                                                                            matrix.shape[1]))
    return table


def _same_listings(new: pd.DataFrame, old: pd.DataFrame) -> bool:
    """Whether a shard's stored rows hold the same listing columns and values as ``new`` (an attribute
    such as a listing's category can change without its title or photo: the vectors are reused, the
    shard is rewritten so that filters see the change)."""
    cols = list(new.columns)
    if set(cols) - set(old.columns) or len(new) != len(old):
        return False
    a = new[cols].astype(str).sort_values("product_id").reset_index(drop=True)
    b = old[cols].astype(str).sort_values("product_id").reset_index(drop=True)
    return a.equals(b)


def read_shard(location: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A shard file: (rows without the vector columns, ``{kind: (n, D) float32}``).

    Raises:
        storage.StorageNotFound / FileNotFoundError: no such file.
    """
    import pyarrow.parquet as pq
    # a path, not a Python file object, and no reader threads: pyarrow's thread pool can abort the
    # process at exit after reading through a file object (apache/arrow#34314, #50482)
    source = location if not storage.is_gcs(location) else io.BytesIO(storage.read_bytes(location))
    table = pq.read_table(source, use_threads=False)
    vectors = {}
    for name in (*INDEX_KINDS, *LEGACY_INDEX_KINDS):        # a shard written before 2026-12-06: legacy names
        if name in table.column_names:
            col = table.column(name).combine_chunks()
            dim = col.type.list_size
            vectors[index_kind(name)] = np.asarray(col.values.to_numpy(zero_copy_only=False),
                                                   dtype=np.float32).reshape(-1, dim)
            table = table.drop_columns([name])
    return table.to_pandas(), vectors


def embed_shard(catalog: str | Path, shard: int, num_shards: int, model_dir: str | Path, model_version: str,
                index_root: str | Path, kinds: tuple[str, ...] = INDEX_KINDS, batch_size: int = 64,
                progress: bool = False, reuse_vectors: str | Path | None = None) -> dict:
    """Embed one shard of a catalog with one model version, reusing the vectors of unchanged listings
    (the shard's last file) and those another step already computed with the same model
    (``reuse_vectors``: the evaluate step's vectors of the training sample, :func:`load_reusable_vectors`).

    Args:
        catalog: catalog folder or ``gs://`` prefix (:func:`components.catalog.iter_catalog` layout).
        shard / num_shards: which shard (0-based) of how many.
        model_dir: the model folder (``save_pretrained`` layout) of ``model_version``.
        index_root: the index root of ``model_version`` (module docstring).
        kinds: embedding kinds to store (:data:`~components.storage.layout.INDEX_KINDS`, each the
            ``mode`` of :func:`~item_model.inference.embed_catalog`; ``"joint"`` is required).
        reuse_vectors: an ``.npz`` of vectors computed with this model (None: none).

    Returns:
        ``{"shard", "listings", "embedded", "reused", "reused_from_evaluation", "removed", "skipped",
        "written", "wall_s"}``: ``written`` False when nothing changed since the last run (the file is
        left as it was); ``reused_from_evaluation`` of the ``embedded`` listings came from
        ``reuse_vectors`` instead of a forward pass.

    Raises:
        ValueError: an unknown kind, ``"joint"`` missing, or ``shard`` outside ``[0, num_shards)``.
    """
    from components.catalog import iter_catalog
    from item_model.inference import embed_catalog_modes
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor

    if not 0 <= shard < num_shards:
        raise ValueError(f"shard: {shard} is outside [0, {num_shards})")
    if set(kinds) - set(INDEX_KINDS) or "joint" not in kinds:
        raise ValueError(f"kinds: {list(kinds)} must include 'joint' and only {list(INDEX_KINDS)}")
    t0 = time.perf_counter()
    frames = [part[shard_of(part["product_id"], num_shards) == shard] for part in iter_catalog(catalog)]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    rows, skipped = indexable(rows) if len(rows) else (rows, [])
    if skipped:
        logger.warning("shard %d: %d listing(s) without a title or a photo are not indexed, e.g. %s",
                       shard, len(skipped), skipped[:5])
    dup = rows["product_id"][rows["product_id"].duplicated()].tolist() if len(rows) else []
    if dup:
        raise ValueError(f"catalog {catalog}: field 'product_id' repeats {dup[:5]} (shard {shard})")
    hashes = content_hashes(rows) if len(rows) else np.empty(0, dtype=object)
    location = shard_file(index_root, shard, num_shards)

    old_rows, old_vectors = pd.DataFrame(columns=["product_id", "content_hash"]), {}
    if storage.exists(location):
        old_rows, old_vectors = read_shard(location)
        versions = set(old_rows["model_version"].astype(str)) if len(old_rows) else set()
        if versions - {model_version} or set(kinds) - set(old_vectors):
            logger.info("shard %d: the stored shard holds %s / kinds %s; re-embedding all", shard, versions,
                        sorted(old_vectors))
            old_rows, old_vectors = pd.DataFrame(columns=["product_id", "content_hash"]), {}
    old_row_of = {(p, h): i for i, (p, h) in enumerate(zip(old_rows["product_id"].astype(str),
                                                          old_rows["content_hash"].astype(str)))}
    reuse = np.array([old_row_of.get((str(p), h), -1) for p, h in zip(rows.get("product_id", []), hashes)],
                     dtype=np.int64)
    todo = np.flatnonzero(reuse < 0)
    removed = len(set(old_rows["product_id"].astype(str)) - set(rows.get("product_id", pd.Series(dtype=str)).astype(str)))
    stats = {"shard": shard, "listings": int(len(rows)), "embedded": int(len(todo)),
             "reused": int((reuse >= 0).sum()), "reused_from_evaluation": 0, "removed": int(removed),
             "skipped": len(skipped)}
    out = rows[[c for c in listing_columns(rows) if c != "split"]].copy() if len(rows) else rows.copy()
    if len(todo) == 0 and removed == 0 and storage.exists(location) and _same_listings(out, old_rows):
        logger.info("shard %d: no listing new, changed or removed; left as it was", shard)
        return {**stats, "written": False, "wall_s": round(time.perf_counter() - t0, 2)}

    vectors: dict[str, np.ndarray] = {}
    if len(todo) or not old_vectors:               # (an empty new shard still needs the width D)
        model = ItemModel.from_pretrained(str(model_dir)).eval()
        processor = ItemProcessor.from_pretrained(str(model_dir), model.config)
        dim = int(model.config.hidden_size)
    else:
        dim = next(iter(old_vectors.values())).shape[1]
    given = load_reusable_vectors(reuse_vectors, model_dir, tuple(kinds)) if reuse_vectors and len(todo) else None
    known = [given.get((str(rows["product_id"].iloc[i]), hashes[i])) for i in todo] if given else [None] * len(todo)
    compute = todo[[k is None for k in known]] if len(todo) else todo
    stats["reused_from_evaluation"] = int(len(todo) - len(compute))
    fresh = embed_catalog_modes(model, processor, rows.iloc[compute], tuple(kinds),
                                batch_size=batch_size, progress=progress) if len(compute) else {}
    for kind in kinds:
        matrix = np.zeros((len(rows), dim), dtype=np.float32)
        if (reuse >= 0).any():
            matrix[reuse >= 0] = old_vectors[kind][reuse[reuse >= 0]]
        for i, k in zip(todo, known):
            if k is not None:
                matrix[i] = k[kind]
        if len(compute):
            matrix[compute] = fresh[kind]
        vectors[kind] = matrix
    out["product_id"] = out["product_id"].astype(str)
    out.insert(1, "content_hash", hashes.astype(str))
    out.insert(2, "model_version", model_version)
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(_vectors_table(out, vectors), buf)
    storage.write_bytes(location, buf.getvalue())           # atomic locally, one object on gs://
    logger.info("shard %d: %d listings (%d new or changed, of which %d computed and %d taken from the evaluation; "
                "%d reused, %d removed) -> %s", shard, len(rows), len(todo), len(compute),
                stats["reused_from_evaluation"], stats["reused"], removed, location)
    return {**stats, "written": True, "wall_s": round(time.perf_counter() - t0, 2)}


def build_index(index_root: str | Path, model_version: str, num_shards: int, exact_max: int = DEFAULT_EXACT_MAX,
                ann: dict | None = None, backend: str = "faiss-hnsw-sq8+rerank", milvus_uri: str = "") -> dict:
    """Gather every shard of ``index_root`` into the catalog index (and above ``exact_max`` listings an
    approximate index per kind with ``ann`` settings, docs/index.md).

    Args:
        backend: the approximate index: ``"usearch-hnsw"`` (embedded, float16 HNSW, saved in
            ``vector_index/<kind>/``), ``"faiss-hnsw-sq8+rerank"`` (embedded, 8-bit HNSW whose candidates
            are re-scored from float16 vectors mapped from disk), ``"faiss-ivfpq+rerank"`` (embedded,
            an inverted file of 192-byte product-quantisation codes, the same re-scoring: for 10^7 and
            more on one machine, docs/scale.md), or ``"milvus"`` (a collection per kind in Milvus: ``milvus_uri`` a server, or by default a
            Milvus Lite ``.db`` in ``vector_index/<kind>/``; :class:`.vector_index.MilvusIndex`).

    Returns:
        ``{"model_version", "n", "dim", "kinds", "shards", "search", "catalog_fingerprint", "written"}``;
        ``written`` False when the index already held exactly these shards' content.

    Raises:
        ShardMissing: a shard's file is missing (naming it; re-run that shard alone).
        IndexVersionMismatch: a shard holds another model version's vectors.
        ValueError: a product_id in two shards, or shards of different widths or kinds.
    """
    from components.index.layout import load_catalog_index, save_catalog_index

    frames, parts = [], []
    for shard in range(num_shards):
        location = shard_file(index_root, shard, num_shards)
        if not storage.exists(location):
            raise ShardMissing(f"{location}: shard {shard} of {num_shards} has no output; re-run it alone "
                               f"(item index --shard {shard}) before building the index")
        rows, vectors = read_shard(location)
        versions = sorted(set(rows["model_version"].astype(str))) if len(rows) else []
        if versions and versions != [model_version]:
            raise IndexVersionMismatch(f"{location}: field 'model_version' holds {versions}, expected "
                                       f"{model_version!r}; an index never mixes two models")
        frames.append(rows)
        parts.append(vectors)
    kinds = sorted(parts[0]) if parts else []          # every shard file holds every kind, empty ones too
    if any(sorted(p) != kinds for p in parts if p):
        raise ValueError(f"{index_root}: shards hold different embedding kinds {[sorted(p) for p in parts]}")
    listings = pd.concat(frames, ignore_index=True)
    if listings.empty:
        raise ValueError(f"{index_root}: the catalog has no indexable listing")
    dup = listings["product_id"][listings["product_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{index_root}: field 'product_id' {dup[:5]} appears in two shards")
    embeddings = {k: np.concatenate([p[k] for p in parts if k in p and len(p[k])]) for k in kinds}
    order = np.argsort(listings["product_id"].to_numpy().astype(str), kind="stable")   # shard-count free order
    listings = listings.iloc[order].reset_index(drop=True)
    embeddings = {k: np.ascontiguousarray(v[order]) for k, v in embeddings.items()}
    # titles and photos (content hashes) and the attributes filters read: a relabelled listing rebuilds
    attributes = listings.drop(columns=["content_hash", "model_version"]).astype(str)
    fingerprint = hashlib.sha256("\n".join(listings["content_hash"].astype(str)).encode()
                                 + pd.util.hash_pandas_object(attributes, index=False).to_numpy().tobytes()).hexdigest()
    n, dim = len(listings), int(embeddings["joint"].shape[1])
    if backend not in ANN_BACKENDS:
        raise ValueError(f"backend: {backend!r}, expected one of {ANN_BACKENDS}")
    search = "exact" if n <= exact_max else backend
    result = {"model_version": model_version, "n": n, "dim": dim, "kinds": kinds, "shards": num_shards,
              "search": search, "catalog_fingerprint": fingerprint}
    target = storage.join(str(index_root), "catalog_index")
    gcs = storage.is_gcs(str(index_root))
    with storage.local_copy(str(index_root)) as local:      # gs://: a download, uploaded back below
        local_target = Path(local) / "catalog_index"
        if (local_target / "index.json").is_file():
            _, _, meta = load_catalog_index(local_target)
            if meta.get("catalog_fingerprint") == fingerprint and meta.get("model_version") == model_version \
                    and meta.get("search") == search:
                logger.info("index of %s already holds these %d listings; nothing to do", model_version, n)
                return {**result, "written": False}
        save_catalog_index(local_target, listings, embeddings, fingerprint,
                           extra={"model_version": model_version, "search": search, "shards": num_shards})
        for kind, matrix in embeddings.items() if search != "exact" else ():
            folder = Path(local) / "vector_index" / kind
            if search == "milvus":
                from components.index.backends import MilvusIndex
                name = "item_" + re.sub(r"[^0-9A-Za-z_]", "_", f"{model_version}_{kind}")
                built = MilvusIndex.build(matrix, milvus_uri or str(folder / "milvus.db"), name,
                                          model_version=model_version, **(ann or {}))
                built.save(folder)
                built.close()
            elif search in ("faiss-hnsw-sq8+rerank", "faiss-ivfpq+rerank"):
                from components.index.backends import FaissHNSWIndex, FaissIVFPQIndex, RerankedIndex
                settings = dict(ann or {})
                factor = int(settings.pop("rerank_factor", 5))
                inner_cls = FaissHNSWIndex if search == "faiss-hnsw-sq8+rerank" else FaissIVFPQIndex
                inner = inner_cls.build(matrix, model_version=model_version, **settings)
                RerankedIndex.build(inner, matrix, folder, factor=factor).save(folder)
            else:
                from components.index.backends import USearchHNSWIndex
                USearchHNSWIndex.build(matrix, model_version=model_version, **(ann or {})).save(folder)
            if search != "milvus":                 # filtered search's cells (components.index.filters)
                from components.index.filters import CoarseCells
                CoarseCells.build(matrix).save(folder)
        if gcs:
            storage.upload_tree(local_target, target)
            if search != "exact":
                storage.upload_tree(Path(local) / "vector_index", storage.join(str(index_root), "vector_index"))
    logger.info("index of %s: %d listings x %d, kinds %s, %s search", model_version, n, dim, kinds, search)
    return {**result, "written": True}


def index_root_of(model_version: str, storage_root: str | Path | None = None) -> str:
    """The index root of a model version: ``<storage root>/indexes/<model version>``."""
    return storage.join(str(storage.storage_root(storage_root)), "indexes", model_version)


#: the approximate index's settings per backend, used above ``exact_max`` (chosen in docs/index.md;
#: ``faiss-hnsw-sq8+rerank`` is the one ``eval.json``'s ``ann_recall@k`` is measured through)
BACKEND_SETTINGS = {"usearch-hnsw": {"connectivity": 32, "expansion_add": 128, "expansion_search": 64, "dtype": "f16"},
                    "faiss-hnsw-sq8+rerank": dict(RERANK_SETTINGS),
                    "faiss-ivfpq+rerank": dict(IVFPQ_SETTINGS),
                    "milvus": {"M": 32, "efConstruction": 128, "ef": 64}}
DEFAULT_BACKEND = "faiss-hnsw-sq8+rerank"


class IndexSettingsError(ValueError):
    """A bad index setting; ``field`` names it (a key of :func:`index_settings`' result)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"index settings: field {field!r} {message}")
        self.field = field


def index_settings(num_shards: int = 2, kinds: list[str] | tuple[str, ...] = INDEX_KINDS, batch_size: int = 64,
                   exact_max: int = DEFAULT_EXACT_MAX, backend: str = DEFAULT_BACKEND, milvus_uri: str = "",
                   ann: dict | None = None, threads: int = 0) -> dict:
    """The index steps' settings as one JSON-able dict (the ``settings`` parameter of the ``embed-shard``
    and ``build-index`` KFP components, a profile's ``index`` section, ``item index``'s options),
    validated and with numbers made ints again (kfp.local hands dict numbers back as floats).

    Args:
        num_shards: shards of the catalog (``sha1(product_id) mod num_shards``), >= 1.
        kinds: embedding kinds to index (:data:`~components.storage.layout.INDEX_KINDS`; ``"joint"`` is
            required; the legacy names ``item``, ``item_text_only``, ``item_image_only`` are read as
            the kinds they stand for).
        batch_size: listings per forward pass, >= 1.
        exact_max: listings above which an approximate index is built beside the exact one, >= 0.
        backend: one of :data:`ANN_BACKENDS`; ``ann`` its settings (default :data:`BACKEND_SETTINGS`).
        milvus_uri: a Milvus server for ``backend="milvus"`` ("" = Milvus Lite inside the index).
        threads: PyTorch threads of each shard task (0 = PyTorch's default, every core it sees). Shard
            tasks that share a machine must split its cores: two 2-thread tasks on 2 cores embedded at
            half the rate of two 1-thread tasks (49 vs 25 ms a listing each, measured here).

    Returns:
        ``{"num_shards", "kinds", "batch_size", "exact_max", "backend", "ann", "milvus_uri", "threads"}``.

    Raises:
        IndexSettingsError: a ValueError naming the field at fault (its ``field``).
    """
    try:
        kinds = list(dict.fromkeys(index_kind(str(k)) for k in kinds))
    except ValueError as exc:
        raise IndexSettingsError("kinds", f"{list(kinds)}: {exc}") from None
    if "joint" not in kinds:
        raise IndexSettingsError("kinds", f"{kinds} must include 'joint' (the product embedding)")
    if backend not in ANN_BACKENDS:
        raise IndexSettingsError("backend", f"{backend!r} is not one of {ANN_BACKENDS}")
    out = {"num_shards": int(num_shards), "kinds": kinds, "batch_size": int(batch_size), "exact_max": int(exact_max),
           "backend": backend, "milvus_uri": str(milvus_uri or ""), "threads": int(threads)}
    for field, low in (("num_shards", 1), ("batch_size", 1), ("exact_max", 0), ("threads", 0)):
        if out[field] < low:
            raise IndexSettingsError(field, f"is {out[field]}, must be >= {low}")
    settings = BACKEND_SETTINGS[backend] if ann is None else ann
    out["ann"] = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in dict(settings).items()}
    return out


def local_threads(num_shards: int, cpus: int | None = None) -> int:
    """PyTorch threads for each of ``num_shards`` shard tasks run side by side on this machine
    (kfp.local starts every ``dsl.ParallelFor`` iteration at once): its cores split evenly, at least 1."""
    import os
    return max(1, (cpus or os.cpu_count() or 1) // max(1, int(num_shards)))


def ensure_index(catalog: str | Path, model_dir: str | Path, model_version: str,
                 storage_root: str | Path | None = None, settings: dict | None = None) -> dict:
    """The catalog index of ``model_version`` at :func:`index_root_of`, built in this process with
    :func:`embed_shard` and :func:`build_index` (the index pipeline's code, one shard after another)
    when it does not exist yet; an existing one is left as it is (``item index`` refreshes it).

    Used where a version reaches serving without the training pipeline's index steps (``item gate
    approve`` of a version the gate refused). Returns the index's ``index.json`` content.
    """
    import json
    root = index_root_of(model_version, storage_root)
    meta_path = storage.join(root, "catalog_index", "index.json")
    if not storage.exists(meta_path):
        s = index_settings(**(settings or {}))
        logger.info("no catalog index of %s yet: embedding %s in %d shard(s)", model_version, catalog, s["num_shards"])
        for shard in range(s["num_shards"]):
            embed_shard(catalog, shard, s["num_shards"], model_dir, model_version, root, kinds=tuple(s["kinds"]),
                        batch_size=s["batch_size"])
        build_index(root, model_version, s["num_shards"], exact_max=s["exact_max"], ann=s["ann"],
                    backend=s["backend"], milvus_uri=s["milvus_uri"])
    return json.loads(storage.read_bytes(meta_path))


@contextlib.contextmanager
def local_index(index_root: str | Path):
    """A local folder holding the index of ``index_root`` (``catalog_index/`` and, when built,
    ``vector_index/``) for as long as the context is open: ``index_root`` itself when local, else a
    temporary download of those two folders without the shard files. Yields None when the root holds
    no built index."""
    root = str(index_root)
    if not storage.exists(storage.join(root, "catalog_index", "index.json")):
        yield None
        return
    if not storage.is_gcs(root):
        yield Path(root)
        return
    import tempfile
    with tempfile.TemporaryDirectory(prefix="item-index-") as tmp:
        storage.download_tree(storage.join(root, "catalog_index"), Path(tmp) / "catalog_index")
        if storage.list_files(storage.join(root, "vector_index")):
            storage.download_tree(storage.join(root, "vector_index"), Path(tmp) / "vector_index")
        yield Path(tmp)
