"""KFP component: embed one shard of a catalog with one registry version of ITEm, reusing the vectors of
listings whose title and photo did not change (:func:`item_model.lifecycle.catalog_embedding.embed_shard`)."""

from kfp import dsl

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def embed_shard(
    catalog: str,
    shard: int,
    num_shards: int,
    model_version: str,
    registry_root: str,
    index_root: str,
    kinds: list,
    batch_size: int,
) -> dict:
    """Writes ``<index_root>/shards/shard-SSSSS-of-NNNNN.parquet``; returns its counts (listings,
    embedded, reused, removed, skipped, written)."""
    import logging

    from item_model.data import storage
    from item_model.lifecycle.catalog_embedding import embed_shard as embed
    from item_model.lifecycle.registry import ModelRegistry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model_dir = ModelRegistry(registry_root).version_path(model_version) / "model"
    with storage.local_copy(catalog) as local:          # a gs:// catalog is downloaded
        return embed(str(local), int(shard), int(num_shards), model_dir, model_version, index_root,
                     kinds=tuple(kinds), batch_size=int(batch_size))
