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
    :mod:`item_model.embedding_io`): a catalog folder embedded joint / text-only / image-only, or the
    traffic-log rows with ``since <= timestamp < until`` each under its served modality."""
    import logging

    from monitoring.drift import DriftConfig, embed_current_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = DriftConfig.from_dict(drift_config)
    meta = embed_current_step(current, model_tag, bentoml_home or None, current_embeddings.path, since, until,
                              max_rows=config.max_window, seed=config.seed)
    current_embeddings.metadata.update({"model_tag": meta["model_tag"], "source_type": meta["source_type"],
                                        "counts": meta["counts"]})
