"""The faiss backends of :mod:`components.index.backends`: HNSW over 8-bit scalar-quantised vectors
(``faiss-hnsw-sq8``) and an inverted file with product-quantised residuals (``faiss-ivfpq``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.index.base import META_FILE, _check
from item_model.io import write_json_atomic

#: the largest HNSW candidate list a filtered search widens to (benchmarks/filtered_search.py: a filter
#: that removes the query's whole neighbourhood needs ~4,096 at 44k listings for Recall@10 0.99)
FILTERED_EF_MAX = 4096


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

    #: :func:`components.index.filters.filtered_search` may pass ``mask``
    supports_mask = True

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None,
               widen: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`VectorIndex.search`; ``mask`` ((n,) bool) restricts the search to the rows it keeps, by
        faiss's own filtered search (an ``IDSelectorBitmap`` in the search parameters: the graph walk or
        the inverted lists skip the other rows), with the query-time knob (``ef_search`` / ``nprobe``)
        multiplied by ``widen`` (default: 1 / the share of rows the mask keeps), up to
        :data:`FILTERED_EF_MAX` / all cells. Missing results are row -1."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if mask is None:
            scores, rows = self.index.search(q, min(k, len(self)))
        else:
            import faiss
            bitmap = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
            if widen is None:
                widen = len(mask) / max(float(np.count_nonzero(mask)), 1.0)
            scores, rows = self.index.search(q, min(k, len(self)), params=self._params(selector, max(1.0, widen)))
            del bitmap                                    # the selector reads it until here
        return rows.astype(np.int64), scores.astype(np.float32)

    def _params(self, selector, widen: float):
        """faiss search parameters with ``selector`` and the query-time knob multiplied by ``widen``."""
        raise NotImplementedError

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

    def _params(self, selector, widen: float):
        import faiss
        ef = int(self.index.hnsw.efSearch)
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(min(FILTERED_EF_MAX, np.ceil(ef * widen))))


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

    def _params(self, selector, widen: float):
        import faiss
        nprobe = int(min(self.index.nlist, np.ceil(self.index.nprobe * widen)))
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)

    def memory_bytes(self) -> int:
        """Codes and ids of the inverted lists plus the quantisers' centroids."""
        inv = self.index.invlists
        lists = sum(inv.list_size(i) for i in range(self.index.nlist)) * (inv.code_size + 8)
        pq = self.index.pq
        return int(lists + self.index.nlist * self.index.d * 4 + pq.M * pq.ksub * pq.dsub * 4)
