"""One interface for searching a catalog's embeddings, with an exact and approximate backends.

:class:`VectorIndex` is what serving and the pipeline search through: ``search(queries, k)`` returns
row numbers and cosine scores, best first, for L2-normalised float32 vectors. Backends:

=================  ===============================================  =======================================
kind               what                                             memory per vector (D = 384)
=================  ===============================================  =======================================
``exact``          a float32 matrix and one matrix product (torch)  4 D bytes = 1,536 B
``usearch-hnsw``   HNSW graph (usearch), vectors quantised to int8  D + ~2 M x 4 bytes of links ≈ 640 B
``faiss-hnsw-sq8`` HNSW graph over 8-bit scalar-quantised vectors   D + 2 M x 4 ≈ 640 B
                   (faiss ``IndexHNSWSQ``, inner product)
``faiss-ivfpq``    inverted file, product-quantised residuals       m + 8 bytes = 200 B at m = 192
                   (faiss ``IndexIVFPQ``, inner product), with a
                   float16 re-rank copy on disk
``milvus``         a Milvus collection (HNSW, inner product): Milvus   held by the engine, not this process
                   Lite in-process on a ``.db`` file, or a Milvus
                   cluster through the same client
=================  ===============================================  =======================================

The first four are embedded (in the serving process); ``milvus`` is the distributed kind, for
catalogs that outgrow one machine (docs/scale.md).

HNSW: Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", arXiv:1603.09320; ``M`` links per node,
``ef_construction`` / ``ef_search`` candidate-list sizes at build / query time (larger = better
recall, slower). Which approximate backend serves, and with which settings, is chosen by
``benchmarks/index.py`` (docs/index.md).

Every index remembers the model version whose vectors it holds (``model_version``); :func:`load_index`
refuses an index of another version than the caller expects, so an index never mixes two models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from item_model.io import write_json_atomic

META_FILE = "vector_index.json"


class IndexVersionMismatch(ValueError):
    """An index built from another model version's vectors than the one asked for."""


class VectorIndex(Protocol):
    """Maximum-inner-product search over L2-normalised vectors (= cosine similarity)."""

    kind: str
    model_version: str

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows for each query.

        Args:
            queries: (q, D) float32, L2-normalised.
            k: results per query (fewer when the index is smaller).

        Returns:
            (rows (q, k) int64, scores (q, k) float32 cosine similarities), best first.
        """

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (vectors and graph)."""

    def save(self, folder: str | Path) -> None:
        """Write the index into ``folder`` (its own files plus ``vector_index.json``)."""


def _check(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty (n, D) matrix, got shape {vectors.shape}")
    return vectors


class ExactIndex:
    """Exact search: one (q, D) x (D, n) float32 product (torch, the process's thread pool) and top-k."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, model_version: str = ""):
        self.vectors = _check(vectors)
        self.model_version = model_version

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch
        q = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32))
        scores = q @ torch.from_numpy(self.vectors).T
        top = torch.topk(scores, min(k, len(self)), dim=1)
        return top.indices.numpy().astype(np.int64), top.values.numpy()

    def memory_bytes(self) -> int:
        return int(self.vectors.nbytes)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", self.vectors)
        write_json_atomic(folder / META_FILE, {"kind": self.kind, "n": len(self), "dim": self.vectors.shape[1],
                                               "model_version": self.model_version})

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> "ExactIndex":
        return cls(np.load(Path(folder) / "vectors.npy", allow_pickle=False), meta.get("model_version", ""))


class USearchHNSWIndex:
    """HNSW over int8-quantised vectors with usearch (inner product on L2-normalised vectors).

    Args:
        connectivity: M, links per node.
        expansion_add / expansion_search: ef at build and at query time.
        dtype: ``"i8"`` (default, D bytes a vector), ``"f16"`` or ``"f32"``.
        threads: build threads (0 = all cores).
    """

    kind = "usearch-hnsw"

    def __init__(self, dim: int, connectivity: int = 32, expansion_add: int = 128, expansion_search: int = 64,
                 dtype: str = "i8", model_version: str = ""):
        from usearch.index import Index
        self.dim, self.model_version = int(dim), model_version
        self.settings = {"connectivity": connectivity, "expansion_add": expansion_add,
                         "expansion_search": expansion_search, "dtype": dtype}
        self.index = Index(ndim=self.dim, metric="ip", dtype=dtype, connectivity=connectivity,
                           expansion_add=expansion_add, expansion_search=expansion_search)

    @classmethod
    def build(cls, vectors: np.ndarray, threads: int = 0, **settings) -> "USearchHNSWIndex":
        vectors = _check(vectors)
        out = cls(vectors.shape[1], **settings)
        out.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads, log=False)
        return out

    def __len__(self) -> int:
        return len(self.index)

    def set_ef(self, ef: int) -> None:
        """The query-time candidate list size (recall / latency trade-off)."""
        self.index.expansion_search = int(ef)
        self.settings["expansion_search"] = int(ef)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        found = self.index.search(q, min(k, len(self)), threads=1, log=False)
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(q), -1)
        scores = (1.0 - np.asarray(found.distances, dtype=np.float32)).reshape(len(q), -1)   # ip distance = 1 - dot
        return keys, scores

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.index.save(str(folder / "usearch.index"))
        write_json_atomic(folder / META_FILE, {"kind": self.kind, "n": len(self), "dim": self.dim,
                                               "model_version": self.model_version, **self.settings})

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> "USearchHNSWIndex":
        out = cls(meta["dim"], meta["connectivity"], meta["expansion_add"], meta["expansion_search"], meta["dtype"],
                  meta.get("model_version", ""))
        out.index.load(str(Path(folder) / "usearch.index"))
        return out


class _FaissIndex:
    """What the faiss backends share: a faiss index, the model version, the settings that
    ``vector_index.json`` records; ``search`` / ``save`` / ``load`` alike. Subclasses give ``kind``,
    ``SETTING_KEYS`` (the settings kept on load), ``EF_KEY`` / ``EF_DEFAULT`` (the query-time knob
    :meth:`set_ef` sets) and ``build``."""

    kind = ""
    SETTING_KEYS: tuple[str, ...] = ()
    EF_KEY, EF_DEFAULT = "", 0

    def __init__(self, index, model_version: str = "", settings: dict | None = None):
        self.index, self.model_version, self.settings = index, model_version, dict(settings or {})

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def set_ef(self, ef: int) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, rows = self.index.search(q, min(k, len(self)))
        return rows.astype(np.int64), scores.astype(np.float32)

    def save(self, folder: str | Path) -> None:
        import faiss
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "faiss.index"))
        write_json_atomic(folder / META_FILE, {"kind": self.kind, "n": len(self), "dim": int(self.index.d),
                                               "model_version": self.model_version, **self.settings})

    @classmethod
    def load(cls, folder: str | Path, meta: dict):
        import faiss
        out = cls(faiss.read_index(str(Path(folder) / "faiss.index")), meta.get("model_version", ""),
                  {k: meta[k] for k in cls.SETTING_KEYS if k in meta})
        out.set_ef(int(meta.get(cls.EF_KEY, cls.EF_DEFAULT)))
        return out


class FaissHNSWIndex(_FaissIndex):
    """HNSW over 8-bit scalar-quantised vectors with faiss (``IndexHNSWSQ``, inner product).

    Args:
        m: M, links per node. ef_construction / ef_search: candidate list sizes.
    """

    kind = "faiss-hnsw-sq8"
    SETTING_KEYS = ("m", "ef_construction", "ef_search")
    EF_KEY, EF_DEFAULT = "ef_search", 64

    @classmethod
    def build(cls, vectors: np.ndarray, m: int = 32, ef_construction: int = 128, ef_search: int = 64,
              model_version: str = "") -> "FaissHNSWIndex":
        import faiss
        vectors = _check(vectors)
        index = faiss.IndexHNSWSQ(vectors.shape[1], faiss.ScalarQuantizer.QT_8bit, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        index.train(vectors)
        index.add(vectors)
        return cls(index, model_version, {"m": m, "ef_construction": ef_construction, "ef_search": ef_search})

    def set_ef(self, ef: int) -> None:
        """The query-time candidate list size (recall / latency trade-off)."""
        self.index.hnsw.efSearch = int(ef)
        self.settings["ef_search"] = int(ef)

    def memory_bytes(self) -> int:
        import faiss
        return int(faiss.serialize_index(self.index).nbytes)


class FaissIVFPQIndex(_FaissIndex):
    """An inverted file over product-quantised residuals with faiss (``IndexIVFPQ``, inner product):
    the memory-lean index for catalogs of 10^7 and more on one machine (``m`` bytes of code + 8 of id
    a vector: 200 B at ``m = 192`` against 656 B for HNSW-SQ8; 10^7 built in 261 s here, where HNSW-SQ8
    is extrapolated to ~1.5 h), meant to be wrapped in :class:`RerankedIndex` because product quantisation alone orders
    near neighbours coarsely (Recall@10 0.44 alone, 0.999 re-ranked at 10^7: docs/index.md).

    IVFADC: Jégou, Douze & Schmid, "Product quantization for nearest neighbor search", TPAMI 2011.
    ``nlist`` coarse cells (k-means), a query scans the ``nprobe`` nearest cells; each vector's residual
    to its cell centroid is coded by ``m`` sub-quantisers of ``2 ** nbits`` centroids each.

    Args:
        nlist: coarse cells; 0 = the power of two nearest sqrt(n), at most n / 39 (faiss's floor of
            training points per centroid).
        m: sub-quantisers (bytes per code at 8 bits); must divide D. 192 (2 dimensions each at D = 384)
            is the measured choice; 96 halves the memory and needs 5x the re-rank candidates.
        nbits: bits per sub-quantiser code, 8 unless n is too small to train 256 centroids.
        nprobe: cells scanned per query (the recall / latency knob, :meth:`set_ef`).
        train_size: at most this many vectors train the quantisers (a uniform sample without replacement).
    """

    kind = "faiss-ivfpq"
    SETTING_KEYS = ("nlist", "m", "nbits", "nprobe", "train_size")
    EF_KEY, EF_DEFAULT = "nprobe", 8

    @staticmethod
    def default_nlist(n: int) -> int:
        """The power of two nearest sqrt(n), clipped to [1, n // 39]."""
        nlist = 2 ** int(round(np.log2(max(np.sqrt(max(n, 1)), 1.0))))
        return int(max(1, min(nlist, n // 39)))

    @classmethod
    def trained(cls, sample: np.ndarray, n: int, nlist: int = 0, m: int = 192, nbits: int = 8, nprobe: int = 8,
                model_version: str = "", seed: int = 0) -> "FaissIVFPQIndex":
        """An empty index whose coarse and product quantisers are trained on ``sample`` ((s, D) float32)
        for a catalog of ``n`` vectors; :meth:`add` then streams the catalog in (a 10^7 catalog never
        has to sit in memory as float32).

        Raises:
            ValueError: D not divisible by ``m``, or an empty sample.
        """
        import faiss
        sample = _check(sample)
        dim = sample.shape[1]
        if dim % m:
            raise ValueError(f"ivfpq settings: field 'm' {m} does not divide the vector dimension {dim}")
        nlist = int(nlist) or cls.default_nlist(n)
        nbits = int(min(nbits, max(1, int(np.log2(max(len(sample) // 39, 2))))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, int(m), nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(sample)
        index.nprobe = int(min(nprobe, nlist))
        return cls(index, model_version, {"nlist": nlist, "m": int(m), "nbits": nbits, "nprobe": int(nprobe)})

    @classmethod
    def build(cls, vectors: np.ndarray, nlist: int = 0, m: int = 192, nbits: int = 8, nprobe: int = 8,
              train_size: int = 262_144, model_version: str = "", seed: int = 0) -> "FaissIVFPQIndex":
        """Train on at most ``train_size`` of ``vectors`` ((n, D) float32, L2-normalised) and add them all."""
        vectors = _check(vectors)
        rng = np.random.default_rng(seed)
        sample = vectors if len(vectors) <= train_size else vectors[np.sort(rng.choice(len(vectors), train_size,
                                                                                       replace=False))]
        out = cls.trained(sample, len(vectors), nlist, m, nbits, nprobe, model_version, seed)
        out.add(vectors)
        out.settings["train_size"] = int(train_size)
        return out

    def add(self, vectors: np.ndarray) -> None:
        """Append rows (row numbers continue from :func:`len`)."""
        self.index.add(_check(vectors))

    def set_ef(self, ef: int) -> None:
        """Cells scanned per query (``nprobe``), the recall / latency knob of an inverted file."""
        self.index.nprobe = int(min(int(ef), self.index.nlist))
        self.settings["nprobe"] = int(ef)

    def memory_bytes(self) -> int:
        """Codes and ids of the inverted lists plus the quantisers' centroids."""
        inv = self.index.invlists
        lists = sum(inv.list_size(i) for i in range(self.index.nlist)) * (inv.code_size + 8)
        pq = self.index.pq
        return int(lists + self.index.nlist * self.index.d * 4 + pq.M * pq.ksub * pq.dsub * 4)


class RerankedIndex:
    """An approximate index whose candidates are re-scored exactly: the inner index returns
    ``factor * k`` candidates, their float16 vectors are read from a memory-mapped ``.npy`` file on disk
    (the page cache holds the rows queries touch, not the index's memory) and re-ranked by their
    cosine to the query. With 8-bit scalar-quantised HNSW (faiss) this keeps the memory of SQ8
    and removes its quantisation error from the final order (the IVFADC re-ranking idea of
    Jégou et al., "Searching in one billion vectors: re-rank with source coding", ICASSP 2011).

    Args:
        inner: the approximate index (e.g. :class:`FaissHNSWIndex`).
        vectors: (n, D) float16, rows aligned with the inner index's row numbers (a ``np.memmap``).
        factor: candidates per result.
    """

    def __init__(self, inner, vectors: np.ndarray, factor: int = 5):
        self.inner, self.vectors, self.factor = inner, vectors, int(factor)
        self.kind = f"{inner.kind}+rerank"
        self.model_version = inner.model_version
        self.settings = {**getattr(inner, "settings", {}), "rerank_factor": self.factor}

    @classmethod
    def build(cls, inner, vectors: np.ndarray, folder: str | Path, factor: int = 5) -> "RerankedIndex":
        """Write ``vectors`` as float16 to ``folder/rerank.f16.npy`` and map it back read-only."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "rerank.f16.npy", np.asarray(vectors, dtype=np.float16))
        return cls(inner, np.load(folder / "rerank.f16.npy", mmap_mode="r"), factor)

    def __len__(self) -> int:
        return len(self.inner)

    def set_ef(self, ef: int) -> None:
        self.inner.set_ef(ef)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(int(k), len(self))
        cand, _ = self.inner.search(q, min(len(self), self.factor * k))
        rows = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        for i, c in enumerate(cand):
            c = np.sort(c[c >= 0])                             # ascending rows: sequential reads of the map
            exact = np.asarray(self.vectors[c], dtype=np.float32) @ q[i]
            top = np.argsort(-exact, kind="stable")[:k]
            rows[i, :len(top)], scores[i, :len(top)] = c[top], exact[top]
        return rows, scores

    def memory_bytes(self) -> int:
        """The inner index's memory (the float16 vectors stay on disk, mapped)."""
        return self.inner.memory_bytes()

    def save(self, folder: str | Path) -> None:
        """The inner index's files, ``rerank.f16.npy`` (unless already there) and ``vector_index.json``
        naming this kind."""
        folder = Path(folder)
        self.inner.save(folder)
        if not (folder / "rerank.f16.npy").is_file():
            np.save(folder / "rerank.f16.npy", np.asarray(self.vectors, dtype=np.float16))
        meta = json.loads((folder / META_FILE).read_text())
        write_json_atomic(folder / META_FILE, {**meta, "kind": self.kind, "inner": self.inner.kind,
                                               "rerank_factor": self.factor})

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> "RerankedIndex":
        inner = BACKENDS[meta["inner"]].load(folder, meta)
        return cls(inner, np.load(Path(folder) / "rerank.f16.npy", mmap_mode="r", allow_pickle=False),
                   int(meta.get("rerank_factor", 5)))


def _is_server(uri: str) -> bool:
    return str(uri).startswith(("http://", "https://", "tcp://", "grpc://"))


class MilvusIndex:
    """A collection in a Milvus vector database: Milvus Lite in-process on a local ``.db`` file (what the
    tests and a single machine use) or a Milvus cluster (``http://host:19530``) for catalogs that outgrow
    one machine, through the same ``pymilvus.MilvusClient`` (https://milvus.io/docs/milvus_lite.md).

    Each vector is stored with its row number (the primary key) and searched by inner product through
    Milvus's HNSW index (``M``, ``efConstruction``; ``ef`` at query time). The collection property
    ``item.model_version`` records the model version, and :meth:`load` refuses a collection naming another.

    Args:
        uri: a local ``.db`` path (Milvus Lite) or a server URI; ``token`` for a secured server.
        collection: the collection name.
    """

    kind = "milvus"
    #: rows per insert call (Milvus limits one request's size)
    INSERT_BATCH = 5000
    #: the collection property that names the model version whose vectors it holds
    VERSION_PROPERTY = "item.model_version"

    def __init__(self, uri: str, collection: str, model_version: str = "", settings: dict | None = None,
                 token: str = ""):
        from pymilvus import MilvusClient
        self.uri, self.collection, self.model_version = str(uri), collection, model_version
        if not _is_server(self.uri):
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)          # Milvus Lite: a local .db file
        self.settings = {"M": 16, "efConstruction": 128, "ef": 64, **(settings or {})}
        self.n: int | None = None
        self.client = MilvusClient(self.uri, token=token) if token else MilvusClient(self.uri)

    @classmethod
    def build(cls, vectors: np.ndarray, uri: str, collection: str = "item", model_version: str = "",
              token: str = "", **settings) -> "MilvusIndex":
        """Create (replacing any former one) the collection ``collection`` at ``uri`` and insert ``vectors``
        ((n, D) float32, L2-normalised) with rows 0..n-1 as keys."""
        from pymilvus import DataType
        vectors = _check(vectors)
        out = cls(uri, collection, model_version, settings, token)
        c = out.client
        if c.has_collection(collection):
            c.drop_collection(collection)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        params = c.prepare_index_params()
        params.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                         params={"M": int(out.settings["M"]), "efConstruction": int(out.settings["efConstruction"])})
        c.create_collection(collection, schema=schema, index_params=params)
        c.alter_collection_properties(collection, properties={cls.VERSION_PROPERTY: model_version})
        for s in range(0, len(vectors), cls.INSERT_BATCH):
            part = vectors[s:s + cls.INSERT_BATCH]
            c.insert(collection, [{"row": s + i, "vector": v} for i, v in enumerate(part.tolist())])
        c.load_collection(collection)
        out.n, out.dim = len(vectors), int(vectors.shape[1])
        return out

    def __len__(self) -> int:
        """Rows in the collection (read from the engine once, at build or load: a stats call costs a round trip)."""
        if getattr(self, "n", None) is None:
            self.n = int(self.client.get_collection_stats(self.collection)["row_count"])
        return self.n

    def set_ef(self, ef: int) -> None:
        """The query-time candidate list size (recall / latency trade-off)."""
        self.settings["ef"] = int(ef)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(int(k), len(self))
        found = self.client.search(self.collection, data=q.tolist(), limit=k,
                                   search_params={"metric_type": "IP", "params": {"ef": max(int(self.settings["ef"]), k)}})
        rows = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        for i, hits in enumerate(found):
            for j, hit in enumerate(list(hits)[:k]):
                rows[i, j], scores[i, j] = int(hit["row"] if "row" in hit else hit["id"]), float(hit["distance"])
        return rows, scores

    def close(self) -> None:
        """Close the client; for Milvus Lite also stop this process's server of the ``.db`` (it holds the
        file's lock until then)."""
        self.client.close()
        if not _is_server(self.uri):
            from milvus_lite import server_manager_instance
            server_manager_instance.release_server(str(Path(self.uri).resolve()))

    def memory_bytes(self) -> int:
        """Not known from the client (the engine holds the vectors); the vectors' float32 size as a floor."""
        return len(self) * 4 * int(getattr(self, "dim", 0) or 0)

    def save(self, folder: str | Path) -> None:
        """Write ``vector_index.json`` naming the URI and collection (the vectors stay in Milvus; a Milvus Lite
        ``.db`` inside ``folder`` is referred to by its file name, so the folder can move)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        uri = self.uri
        if not _is_server(uri) and Path(uri).resolve().parent == folder.resolve():
            uri = Path(uri).name
        write_json_atomic(folder / META_FILE, {"kind": self.kind, "n": len(self), "dim": getattr(self, "dim", 0),
                                               "model_version": self.model_version, "uri": uri,
                                               "collection": self.collection, **self.settings})

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> "MilvusIndex":
        """Connect to the collection ``meta`` names (``MILVUS_TOKEN`` from the environment for a secured server).

        Raises:
            IndexVersionMismatch: the collection's description names another model version than ``meta``.
            ValueError: the collection does not exist.
        """
        import os
        uri = str(meta["uri"])
        if not _is_server(uri) and not Path(uri).is_absolute():
            uri = str(Path(folder) / uri)
        out = cls(uri, meta["collection"], meta.get("model_version", ""),
                  {k: meta[k] for k in ("M", "efConstruction", "ef") if k in meta}, os.environ.get("MILVUS_TOKEN", ""))
        if not out.client.has_collection(out.collection):
            raise ValueError(f"{folder}/{META_FILE}: field 'collection' names {out.collection!r}, absent at {uri}")
        described = (out.client.describe_collection(out.collection).get("properties") or {}).get(cls.VERSION_PROPERTY)
        if described != out.model_version:
            raise IndexVersionMismatch(f"{uri}: collection {out.collection!r} holds the vectors of {described!r}, "
                                       f"not of {out.model_version!r}; an index never mixes two models")
        out.n, out.dim = None, int(meta.get("dim", 0))
        out.client.load_collection(out.collection)
        len(out)
        return out


BACKENDS = {c.kind: c for c in (ExactIndex, USearchHNSWIndex, FaissHNSWIndex, FaissIVFPQIndex, MilvusIndex)}
BACKENDS["faiss-hnsw-sq8+rerank"] = RerankedIndex
BACKENDS["faiss-ivfpq+rerank"] = RerankedIndex


def load_index(folder: str | Path, model_version: str | None = None) -> VectorIndex:
    """Read an index saved by a backend's ``save``.

    Raises:
        FileNotFoundError: no ``vector_index.json`` in ``folder``. ValueError: an unknown kind.
        IndexVersionMismatch: ``model_version`` is given and the index holds another model's vectors.
    """
    meta = json.loads((Path(folder) / META_FILE).read_text())
    if meta.get("kind") not in BACKENDS:
        raise ValueError(f"{folder}/{META_FILE}: field 'kind' is {meta.get('kind')!r}, expected one of {sorted(BACKENDS)}")
    if model_version is not None and meta.get("model_version") != model_version:
        raise IndexVersionMismatch(f"{folder}: field 'model_version' is {meta.get('model_version')!r}, but the vectors "
                                   f"of {model_version!r} were asked for; an index never mixes two models")
    return BACKENDS[meta["kind"]].load(folder, meta)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int = 10, vectors: np.ndarray | None = None,
                queries: np.ndarray | None = None, eps: float = 1e-5) -> float:
    """Recall@k of an approximate search against exact search, averaged over queries.

    Without ``vectors``: |approx top-k ∩ exact top-k| / k. With ``vectors`` and ``queries`` (the
    index's (n, D) and the (q, D) queries): a returned row counts when its exact cosine to the query
    is at least the exact k-th best cosine minus ``eps``, so that among tied candidates (a catalog
    holds exact duplicates: the same title and photo listed twice) any choice is right
    (ANN-Benchmarks' distance-threshold recall, Aumüller et al., arXiv:1807.05614).
    """
    if vectors is None or queries is None:
        hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) for a, e in zip(approx_rows, exact_rows)]
        return float(np.mean(hits)) / k
    hits = []
    for a, e, q in zip(approx_rows, exact_rows, queries):
        kth = float(np.min(vectors[e[:k]] @ q))
        got = vectors[a[:k][a[:k] >= 0]] @ q
        hits.append(int(np.sum(got >= kth - eps)))
    return float(np.mean(hits)) / k


#: the approximate index the pipeline measures search through: what ``item index`` builds above its
#: exact-search threshold by default (pipelines/cli/index.py, docs/index.md): faiss HNSW-SQ8 (M = 32),
#: 5 x k candidates re-ranked from float16 vectors
ANN_SETTINGS = {"m": 32, "ef_construction": 128, "ef_search": 64, "rerank_factor": 5}

#: ``faiss-ivfpq+rerank``'s settings (nlist 0 = the power of two nearest sqrt(n)), chosen at 10^6 and
#: 10^7 by ``benchmarks/index_streaming.py`` (docs/index.md): Recall@10 0.999 at 10^7, p50 2.7 ms
IVFPQ_SETTINGS = {"nlist": 0, "m": 192, "nbits": 8, "nprobe": 8, "rerank_factor": 20}


def ann_search_metrics(emb: np.ndarray, group_ids: np.ndarray, settings: dict | None = None) -> dict[str, float]:
    """Same-product Recall@1 and Recall@10 measured through the approximate (HNSW) index serving uses
    above its exact-search threshold, instead of exact search.

    Every same-product group member queries the index of all n listings (faiss HNSW-SQ8 re-ranked
    from float16 vectors, :data:`ANN_SETTINGS`), itself excluded; a hit is a same-group listing among
    the first 1 / 10 the index returns. Compare with the exact ``recall@1`` / ``recall@10`` of
    :func:`item_model.evaluation.score_embeddings` (ties: exact search breaks them at random, the index in its own order).

    Args:
        emb: (n, D) float32, L2-normalised. group_ids: (n,) int64, -1 for no group.

    Returns:
        ``{"ann_recall@1", "ann_recall@10"}`` in [0, 1], and ``"ann_n_queries"``.

    Raises:
        ValueError: no listing is in a group.
    """
    import tempfile

    groups = np.asarray(group_ids, dtype=np.int64)
    queries = np.flatnonzero(groups >= 0)
    if len(queries) == 0:
        raise ValueError("group_id: no listing is in a same-product group; nothing to search for")
    settings = dict(settings or ANN_SETTINGS)
    factor = int(settings.pop("rerank_factor", 5))
    with tempfile.TemporaryDirectory(prefix="item-ann-") as tmp:
        index = RerankedIndex.build(FaissHNSWIndex.build(emb, **settings), emb, tmp, factor=factor)
        rows, _ = index.search(emb[queries], min(11, len(emb)))
        del index                                        # release the mapped file before the folder goes
    hits = {1: 0, 10: 0}
    for q, found in zip(queries, rows):
        found = found[(found != q) & (found >= 0)][:10]
        same = groups[found] == groups[q]
        hits[1] += bool(same[:1].any())
        hits[10] += bool(same.any())
    return {"ann_recall@1": hits[1] / len(queries), "ann_recall@10": hits[10] / len(queries),
            "ann_n_queries": int(len(queries))}
