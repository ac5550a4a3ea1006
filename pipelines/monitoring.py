"""The ITEm monitoring pipeline (KFP v2): embed current -> drift report -> (if drift) retraining
recommendation -> (if drift and retrain) the training pipeline, nested as a sub-pipeline.

The DAG only; the logic is in :mod:`monitoring.drift`, the parameters come from ``item monitor``
(:mod:`pipelines.cli_monitor`). The parameters after ``retrain`` are the training pipeline's own,
forwarded to the nested run; both lists come from :mod:`pipelines.params`.

:data:`monitoring_pipeline` has no cluster settings (``item monitor`` through kfp.local);
:func:`build_monitoring_pipeline` with a cluster config builds it for a Kubeflow cluster
(:func:`pipelines.training.apply_cluster` on every task, the nested training pipeline included).
"""

from kfp import dsl

from components.drift_report import drift_report
from components.embed_current import embed_current
from components.recommend_retraining import recommend_retraining
from pipelines.params import MONITORING_SPECS, pipeline_signature, training_subset
from pipelines.training import apply_cluster, build_training_pipeline

PIPELINE_NAME = "item-monitoring"


def build_monitoring_pipeline(cluster: dict | None = None):
    """The monitoring pipeline; with ``cluster`` every task (and the nested training pipeline) carries
    the cluster settings. Returns a KFP pipeline."""
    training_pipeline = build_training_pipeline(cluster)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Embed a new catalog batch or a traffic-log window with the champion ITEm model, test "
                              "its embeddings for drift per modality against the champion's reference (Evidently, "
                              "calibrated thresholds), and on drift recommend (and optionally run) retraining.")
    @pipeline_signature(MONITORING_SPECS)
    def monitoring_pipeline(p: dict):
        """The DAG over :class:`pipelines.params.MonitoringOnlyParams` then the training parameters."""
        current, model_tag, bentoml_home, storage_root = p["current"], p["model_tag"], p["bentoml_home"], p["storage_root"]
        since, until, drift_config, retrain, catalog = p["since"], p["until"], p["drift_config"], p["retrain"], p["catalog"]
        embedded = apply_cluster(embed_current(current=current, model_tag=model_tag, bentoml_home=bentoml_home,
                                               since=since, until=until, drift_config=drift_config),
                                 "embed-current", cluster)
        report = apply_cluster(drift_report(current_embeddings=embedded.outputs["current_embeddings"],
                                            model_tag=model_tag, bentoml_home=bentoml_home,
                                            storage_root=storage_root, drift_config=drift_config),
                               "drift-report", cluster)
        with dsl.If(report.outputs["Output"] == True, name="drift"):  # noqa: E712 (KFP condition syntax)
            recommended = apply_cluster(recommend_retraining(drift_summary=report.outputs["summary"], retrain=retrain,
                                                             catalog=catalog), "recommend-retraining", cluster)
            with dsl.If(retrain == True, name="retrain"):  # noqa: E712
                training_pipeline(**training_subset(p)).after(recommended)

    return monitoring_pipeline


#: the pipeline without cluster settings (``item monitor`` through kfp.local)
monitoring_pipeline = build_monitoring_pipeline()
