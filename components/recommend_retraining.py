"""KFP component, run only on drift: the retraining recommendation."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def recommend_retraining(
    drift_summary: Input[Artifact],
    retrain: bool,
    catalog: str,
    recommendation: Output[Artifact],
    recommendation_md: Output[Markdown],
):
    """recommendation (JSON: drifted modalities, score vs threshold, action, command) and the same
    as Markdown."""
    import logging

    from monitoring.steps import recommend_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rec = recommend_step(drift_summary.path, retrain, catalog, recommendation.path, recommendation_md.path)
    recommendation.metadata.update({"drifted_modalities": rec["drifted_modalities"],
                                    "retrain_requested": rec["retrain_requested"]})
