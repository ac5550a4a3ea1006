"""The model side of the ITEm service (:mod:`serving.service`): :class:`ServedModel`, one packaged
model with its catalog index, loaded from its BentoML store folder, that embeds listings and searches
the index; the service swaps whole bundles.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from components.storage.layout import INDEX_DIR

logger = logging.getLogger("bentoml.item")     # a child of BentoML's logger: its handlers print it

#: listings per model call (BentoML splits bigger requests) and the longest a request may wait in
#: the batching queue before it is answered 503 (overloaded)
MAX_BATCH_SIZE = int(os.environ.get("ITEM_MAX_BATCH_SIZE", "64"))
MAX_LATENCY_MS = int(os.environ.get("ITEM_MAX_LATENCY_MS", "10000"))
#: fault injection for tests (like the registry's ITEM_REGISTRY_CRASH): a listing with this exact title
#: makes the model call raise, so that the isolation of one failing listing in a batch can be tested
FAULT_TITLE_ENV = "ITEM_FAULT_TITLE"


class ServedModel:
    """One packaged model ready to answer: weights, processor and catalog index, loaded from its
    store folder (:meth:`load`). Immutable once loaded; the service swaps whole bundles."""

    def __init__(self, tag: str, model, processor, catalog=None, index_source: str = "package"):
        self.tag, self.model, self.processor = tag, model, processor
        self.dim = int(model.config.hidden_size)
        #: the catalog index (components.index.search.CatalogSearch: vectors per kind, approximate
        #: index per kind above the exact-search threshold, filters, BM25 over the titles); None = none
        self.catalog = catalog
        self.index_source = index_source
        empty = np.empty(0, dtype=object)
        self.indexes = catalog.vectors if catalog is not None else {}
        self.ann = catalog.ann if catalog is not None else {}
        self.ids = catalog.ids if catalog is not None else empty
        self.row_of = catalog.row_of if catalog is not None else {}
        self.titles = _column(catalog, "title")
        self.categories = _column(catalog, "category")

    def search(self, kind: str, query: np.ndarray, k: int, exclude: int | None = None,
               mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """Top-k rows of the index ``kind`` for a (D,) float32 query: (rows (k',) int64, cosine scores
        (k',) float32, ``"exact"`` or the approximate backend's kind), best first; ``exclude`` is a row
        never returned, ``mask`` ((n,) bool) the rows that may be
        (:meth:`components.index.search.CatalogSearch.vector_search`)."""
        return self.catalog.vector_search(kind, query, k, exclude, mask)

    @classmethod
    def load(cls, tag: str, path: Path) -> "ServedModel":
        """Load the model folder ``path`` (a BentoML store entry) and warm it up (one forward pass).

        The catalog index searched is the whole catalog's index of the registry version ``tag`` was
        packaged from, under the storage root (:func:`serving.store.served_index_folder`), else the copy
        of it packaged with the model; an index built above the exact-search threshold brings its
        approximate (HNSW) index per kind.

        Raises:
            ValueError: the catalog index's width differs from the model's D, or a whole-catalog index
                names another model version.
            IndexVersionMismatch: an approximate index holds another model version's vectors.
        """
        import torch

        from components.index.layout import load_catalog_index
        from components.index.backends import load_index
        from components.index.lexical import LEXICAL_DIR, LexicalIndex
        from components.index.search import CatalogSearch
        from item_model.modeling_item import ItemModel
        from item_model.processing_item import ItemProcessor
        from serving.store import registry_version_of, served_index_folder

        path = Path(path)
        model = ItemModel.from_pretrained(str(path)).eval()
        processor = ItemProcessor.from_pretrained(str(path), model.config)
        dim = int(model.config.hidden_size)
        catalog = None
        packaged_from = registry_version_of(tag)           # the store's model list, read once
        with served_index_folder(tag, path, registry_version=packaged_from) as (folder, source):
            index_dir = Path(folder) / INDEX_DIR
            if (index_dir / "index.json").is_file():
                listings, embeddings, meta = load_catalog_index(index_dir)
                version = packaged_from if source == "catalog" else None
                if source == "catalog" and meta.get("model_version") != version:
                    raise ValueError(f"{index_dir}: field 'model_version' is {meta.get('model_version')!r}, "
                                     f"expected {version!r}; an index never mixes two models")
                indexes, ann = {}, {}
                for name, matrix in embeddings.items():
                    if matrix.shape[1] != dim:
                        raise ValueError(f"{index_dir}: {name} embeddings of width {matrix.shape[1]}, model D = {dim}")
                    indexes[name] = np.ascontiguousarray(matrix, dtype=np.float32)
                    if meta.get("search", "exact") != "exact":
                        ann[name] = load_index(Path(folder) / "vector_index" / name, model_version=version)
                        if getattr(ann[name], "vectors", None) is not None:
                            # the re-rank copy, float16 mapped from disk, serves product_id lookups: the
                            # float32 matrix is not kept (1.5 GB per kind at 10^6)
                            indexes[name] = ann[name].vectors
                catalog = CatalogSearch(listings, indexes, ann, LexicalIndex.load(index_dir / LEXICAL_DIR,
                                                                                  listings["title"]))
                logger.info("catalog index of %s (%s): %d listings x %d, kinds %s, %s search, filter columns %s "
                            "(fingerprint %s)", tag, "the storage root's" if source == "catalog" else "the packaged copy",
                            len(listings), dim, sorted(indexes), "approximate" if ann else "exact",
                            sorted(catalog.filter.columns), str(meta.get("catalog_fingerprint", ""))[:16])
            else:
                logger.warning("%s has no %s/: /similar answers 503", tag, INDEX_DIR)
        served = cls(tag, model, processor, catalog, index_source=source)
        with torch.no_grad():  # warm-up: the first request should not pay for lazy initialisation
            h, w = processor.image_size
            served.embed(["warm up"], [np.zeros((h, w, 3), dtype=np.uint8)])
        return served

    def embed(self, titles: list[str | None], images: list[np.ndarray | None]) -> np.ndarray:
        """(n, D) float32 L2-normalised embeddings; photos of another size than this model's input
        (decoded for the model served before a swap) are resized first."""
        from item_model.inference import embed_listings
        h, w = self.processor.image_size
        images = [im if im is None or im.shape[:2] == (h, w) else _resize(im, h, w) for im in images]
        fault = os.environ.get(FAULT_TITLE_ENV)
        if fault and fault in titles:
            raise RuntimeError(f"injected fault ({FAULT_TITLE_ENV})")
        return embed_listings(self.model, self.processor, titles, images, batch_size=max(MAX_BATCH_SIZE, 1))


def search_ids(served: ServedModel, query: np.ndarray, k: int, exclude: int | None = None,
                kind: str | None = None) -> list[str]:
    """The product ids of ``served``'s top-k for a query vector: the joint index for a catalog query
    (``kind`` None), else :func:`searched_kind`."""
    rows, _, _ = served.search("joint" if kind is None else searched_kind(served, kind), query, k, exclude=exclude)
    return [str(served.ids[r]) for r in rows]


def searched_kind(served: ServedModel, kind: str) -> str:
    """The catalog index a listing query of ``kind`` ("joint" / "text" / "image") searches: the index of
    its own kind when the package has it, else the joint one: a title-only or photo-only embedding
    scores same products far better against the catalog's embeddings of the same kind (tiny test
    model: Recall@10 0.88 / 1.00) than against the joint ones (0.00 / 0.15)."""
    return kind if kind in served.indexes else "joint"


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def _column(catalog, name: str) -> np.ndarray:
    """A listings column as an object array, None for missing values (or for a column the index lacks)."""
    if catalog is None:
        return np.empty(0, dtype=object)
    if name not in catalog.listings:
        return np.full(len(catalog.ids), None, dtype=object)
    col = catalog.listings[name].astype(object)
    return col.where(col.notna(), None).to_numpy()
