"""KFP component: embed the current window (a catalog batch or a traffic-log window) with the reference model."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def embed_current(
    current: str,
    model_tag: str,
    bentoml_home: str,
    since: str,
    until: str,
    drift_config: dict,
    current_embeddings: Output[Dataset],
):
    """The current window's ITEm embeddings per modality (``embeddings.npz`` + ``embeddings.json``,
    :mod:`components.storage.embeddings`): a catalog folder embedded joint / text-only / image-only, or the
    traffic-log rows with ``since <= timestamp < until`` each under its served modality. ``current``
    may be a local path or a ``gs://`` URI."""
    import logging

    from components import storage
    from monitoring.drift import DriftConfig
    from monitoring.steps import embed_current_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = DriftConfig.from_dict(drift_config)
    with storage.local_copy(current) as local:         # a gs:// catalog batch or traffic log is downloaded
        meta = embed_current_step(str(local), model_tag, bentoml_home or None, current_embeddings.path, since,
                                  until, max_rows=config.max_window, seed=config.seed)
    current_embeddings.metadata.update({"model_tag": meta["model_tag"], "source_type": meta["source_type"],
                                        "counts": meta["counts"]})
