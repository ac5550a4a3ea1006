"""The distributed backend of :mod:`components.index.backends`: a Milvus collection (Milvus Lite
in-process on a ``.db`` file, or a Milvus cluster through the same client).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.index.base import META_FILE, IndexVersionMismatch, _check
from item_model.io import write_json_atomic


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
