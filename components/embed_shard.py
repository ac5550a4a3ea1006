"""KFP component: embed one shard of a catalog with one registry version of ITEm, reusing the vectors of
listings whose title and photo did not change (:func:`components.index.build.embed_shard`)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def embed_shard(
    catalog: str,
    shard: int,
    model_version: str,
    registry_root: str,
    storage_root: str,
    index_root: str,
    settings: dict,
    eval_vectors: Optional[Input[Dataset]] = None,
) -> dict:
    """Writes ``<index root>/shards/shard-SSSSS-of-NNNNN.parquet`` (``index_root``, or "" for
    ``<storage_root>/indexes/<model_version>``; ``settings``: :func:`~components.index.build.index_settings`);
    returns its counts (listings, embedded, reused, reused_from_evaluation, removed, skipped, written).
    ``eval_vectors``: the evaluate step's vectors of the same model (training pipeline), reused for
    the listings they cover (no listing embedded twice)."""
    import logging

    from components import storage
    from components.index.build import embed_shard as embed
    from components.index.build import index_root_of, index_settings
    from components.registry import ModelRegistry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = index_settings(**settings)
    if s["threads"]:                                    # shard tasks sharing a machine split its cores
        import torch
        torch.set_num_threads(s["threads"])
    model_dir = ModelRegistry(registry_root).version_path(model_version) / "model"
    root = index_root or index_root_of(model_version, storage_root or None)
    with storage.local_copy(catalog) as local:          # a gs:// catalog is downloaded
        return embed(str(local), int(shard), s["num_shards"], model_dir, model_version, root,
                     kinds=tuple(s["kinds"]), batch_size=s["batch_size"],
                     reuse_vectors=eval_vectors.path if eval_vectors is not None else None)
