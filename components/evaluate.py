"""KFP component: same-product search and category probe for ITEm and the baselines."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    validated_catalog: Input[Dataset],
    model: Input[Model],
    bert_path: str,
    modality_ablation: bool,
    registry_root: str,
    metrics: Output[Metrics],
    eval_json: Output[Artifact],
    eval_details: Output[Artifact],
    item_embeddings: Output[Dataset],
):
    """KFP Metrics (``<model>.<metric>``), eval.json, per-item details (npz, for the gate's bootstrap
    tests) and the ITEm vectors it scored (npz: ``product_id`` and one float32 matrix a kind, for
    read-out studies without embedding again). The registry's champion is re-evaluated on the same
    split. The catalog index serving and drift monitoring read is not written here: the index steps
    build it from the whole catalog."""
    import logging

    from components.steps.training import evaluate_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = evaluate_step(validated_catalog.path, model.path, eval_json.path, bert_path, modality_ablation,
                           details_path=eval_details.path,
                           registry_root=registry_root, embeddings_path=item_embeddings.path)
    for name, values in result["models"].items():
        for key in ("category_accuracy", "category_macro_f1", "recall@1", "recall@10", "mAP"):
            metrics.log_metric(f"{name}.{key}", float(values[key]))
