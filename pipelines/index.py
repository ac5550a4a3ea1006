"""The ITEm index pipeline (KFP v2): embed a catalog with one registry version of the model, one task per
shard in a ``dsl.ParallelFor``, then one task that builds the catalog index from the shards' files.

The DAG only; the logic is in :mod:`components.index.build`, the parameters come from
``item index`` (:mod:`pipelines.cli.index`). Shard tasks write their output to the storage root
(``<storage root>/indexes/<model version>/shards/``), not as KFP artifacts, so that a second run finds
the first run's vectors (incremental refresh) and a failed shard can be re-run alone; on a cluster each
shard task gets the cluster config's ``resources.embed-shard`` (a GPU where set), so Kubeflow itself
is the engine that scales the embedding. The training pipeline (``pipelines/training.py``) runs the
same two components on the whole catalog for a blessed model, so every catalog index has one writer.
"""

from kfp import dsl

from components.build_index import build_index
from components.embed_shard import embed_shard
from pipelines.cluster import on_cluster

PIPELINE_NAME = "item-index"


def build_index_pipeline(cluster: dict | None = None):
    """The index pipeline; with ``cluster`` every task carries the cluster settings. Returns a KFP pipeline."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Embed a catalog with a registry version of ITEm, shard by shard in parallel, "
                              "re-embedding only new or changed listings, and build its catalog index.")
    def index_pipeline(catalog: str, model_version: str, registry_root: str, storage_root: str, index_root: str,
                       shards: list, settings: dict):
        with dsl.ParallelFor(items=shards, name="shards") as shard:
            embedded = embed_shard(catalog=catalog, shard=shard, model_version=model_version,
                                   registry_root=registry_root, storage_root=storage_root, index_root=index_root,
                                   settings=settings)
        build_index(model_version=model_version, storage_root=storage_root, index_root=index_root,
                    settings=settings).after(embedded)
        on_cluster(cluster)

    return index_pipeline


#: the pipeline without cluster settings (``item index`` through kfp.local)
index_pipeline = build_index_pipeline()
