"""KFP component: gather every shard's vectors into the catalog index of one model version, exact below
``exact_max`` listings and with an approximate index above (usearch HNSW, or a Milvus collection) (:func:`item_model.lifecycle.catalog_embedding.build_index`)."""

from kfp import dsl

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_index(
    index_root: str,
    model_version: str,
    num_shards: int,
    exact_max: int,
    ann: dict,
    backend: str,
    milvus_uri: str,
) -> dict:
    """Writes ``<index_root>/catalog_index/`` (and ``vector_index/`` above ``exact_max``); returns the
    index's summary (n, dim, kinds, search, written)."""
    import logging

    from item_model.lifecycle.catalog_embedding import build_index as build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return build(index_root, model_version, int(num_shards), exact_max=int(exact_max),
                 ann={k: int(v) if isinstance(v, float) else v for k, v in (ann or {}).items()},
                 backend=backend, milvus_uri=milvus_uri)
