"""The ITEm monitoring pipeline (KFP v2): embed current -> drift report -> (if drift) retraining
recommendation -> (if drift and retrain) the training pipeline, nested as a sub-pipeline.

The DAG only; the logic is in :mod:`monitoring.drift`, the parameters come from ``item monitor``
(:mod:`pipelines.cli.monitor`). The parameters after ``retrain`` are the training pipeline's own
(:data:`pipelines.training.TRAINING_PARAMETERS`), forwarded to the nested run as they are.

:data:`monitoring_pipeline` has no cluster settings (``item monitor`` through kfp.local);
:func:`build_monitoring_pipeline` with a cluster config builds it for a Kubeflow cluster
(:func:`pipelines.cluster.on_cluster` on its tasks and on the nested training pipeline's).
"""

from kfp import dsl

from components.drift_report import drift_report
from components.embed_current import embed_current
from components.recommend_retraining import recommend_retraining
from pipelines.cluster import on_cluster
from pipelines.training import TRAINING_PARAMETERS, build_training_pipeline

PIPELINE_NAME = "item-monitoring"


def build_monitoring_pipeline(cluster: dict | None = None):
    """The monitoring pipeline; with ``cluster`` every task (and the nested training pipeline) carries
    the cluster settings. Returns a KFP pipeline."""
    training_pipeline = build_training_pipeline(cluster)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Embed a new catalog batch or a traffic-log window with the champion ITEm model, test "
                              "its embeddings for drift per modality against the champion's reference (Evidently, "
                              "calibrated thresholds), and on drift recommend (and optionally run) retraining.")
    def monitoring_pipeline(current: str, model_tag: str, bentoml_home: str, storage_root: str, since: str, until: str,
                            drift_config: dict, retrain: bool,
                            # the training pipeline's parameters (bentoml_home and storage_root above are shared)
                            catalog: str, max_listings: int, max_quarantine_fraction: float, model_config: dict,
                            train_config: dict, modality_ablation: bool, bert_path: str, checkpoint_root: str,
                            resume: bool, gate_config: dict, registry_root: str, model_name: str,
                            index_shards: list, index_settings: dict):
        """Test a catalog batch or a traffic-log window for drift against the champion; on drift recommend
        (and with ``retrain`` run) retraining.

        Args:
            current: catalog batch folder or traffic log.
            model_tag: the champion in the BentoML store (``item:VERSION``).
            bentoml_home: BentoML store (shared with the nested training run).
            storage_root: calibrations live under it (and the nested run's catalog index).
            since, until: traffic-log window, ISO UTC ("" = open); ``until`` is exclusive.
            drift_config: :class:`monitoring.drift.DriftConfig` as a dict.
            retrain: on drift, also run the training pipeline.
            catalog ... index_settings: the training pipeline's parameters
                (:func:`pipelines.training.build_training_pipeline`), forwarded to the nested run.
        """
        forwarded = {name: value for name, value in locals().items() if name in TRAINING_PARAMETERS}
        embedded = embed_current(current=current, model_tag=model_tag, bentoml_home=bentoml_home, since=since,
                                 until=until, drift_config=drift_config)
        report = drift_report(current_embeddings=embedded.outputs["current_embeddings"], model_tag=model_tag,
                              bentoml_home=bentoml_home, storage_root=storage_root, drift_config=drift_config)
        with dsl.If(report.outputs["Output"] == True, name="drift"):  # noqa: E712 (KFP condition syntax)
            recommended = recommend_retraining(drift_summary=report.outputs["summary"], retrain=retrain,
                                               catalog=catalog)
            with dsl.If(retrain == True, name="retrain"):  # noqa: E712
                training_pipeline(**forwarded).after(recommended)
        on_cluster(cluster)

    return monitoring_pipeline


#: the pipeline without cluster settings (``item monitor`` through kfp.local)
monitoring_pipeline = build_monitoring_pipeline()
