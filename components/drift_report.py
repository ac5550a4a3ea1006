"""KFP component: per-modality embedding drift (Evidently EmbeddingsDrift, calibrated thresholds)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def drift_report(
    current_embeddings: Input[Dataset],
    model_tag: str,
    bentoml_home: str,
    storage_root: str,
    drift_config: dict,
    report: Output[HTML],
    summary: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """``storage_root`` (calibration cache) may be a folder or ``gs://bucket/prefix``.

    The Evidently HTML report, the JSON summary (score, calibrated threshold, method and verdict per
    modality) and KFP Metrics ``<modality>.score`` / ``<modality>.threshold``; returns the verdict.

    The verdict is the single return value (KFP output ``Output``) rather than a named output:
    kfp 2.17's local orchestrator resolves ``dsl.If`` conditions only on outputs named ``Output``.
    """
    import logging
    import tempfile

    from components import storage
    from monitoring.steps import drift_report_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # the calibration cache lives under the storage root; a gs:// root is staged locally and synced back
    with tempfile.TemporaryDirectory(prefix="item-storage-") as staged:
        root = storage_root or None
        if storage.is_gcs(storage_root):
            root = staged
            if storage.list_files(storage.join(storage_root, "calibration")):
                storage.download_tree(storage.join(storage_root, "calibration"), f"{staged}/calibration")
        result = drift_report_step(current_embeddings.path, model_tag, bentoml_home or None, root,
                                   drift_config, report.path, summary.path)
        if storage.is_gcs(storage_root) and storage.list_files(f"{staged}/calibration"):
            storage.upload_tree(f"{staged}/calibration", storage.join(storage_root, "calibration"))
    for modality, r in result["modalities"].items():
        if r["status"] == "tested":
            metrics.log_metric(f"{modality}.score", float(r["score"]))
            metrics.log_metric(f"{modality}.threshold", float(r["threshold"]))
    summary.metadata.update({"drift": result["drift"], "drifted_modalities": result["drifted_modalities"],
                             "model_tag": result["model_tag"]})
    return bool(result["drift"])
