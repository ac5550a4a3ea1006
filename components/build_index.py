"""KFP component: gather every shard's vectors into the catalog index of one model version, exact below
``exact_max`` listings and with an approximate index above (faiss HNSW-SQ8 re-ranked, usearch HNSW, or a
Milvus collection) (:func:`components.index.build.build_index`)."""

from kfp import dsl

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_index(
    model_version: str,
    storage_root: str,
    index_root: str,
    settings: dict,
) -> dict:
    """Writes ``<index root>/catalog_index/`` (and ``vector_index/`` above ``exact_max``; ``index_root``,
    or "" for ``<storage_root>/indexes/<model_version>``); returns the index's summary (n, dim, kinds,
    search, written)."""
    import logging

    from components.index.build import build_index as build
    from components.index.build import index_root_of, index_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = index_settings(**settings)
    return build(index_root or index_root_of(model_version, storage_root or None), model_version, s["num_shards"],
                 exact_max=s["exact_max"], ann=s["ann"], backend=s["backend"], milvus_uri=s["milvus_uri"])
