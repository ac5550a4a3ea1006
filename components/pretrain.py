"""KFP component: pre-train ITEm (MLM, MIM, GMLM, GMIM, ITM) on the validated catalog's train split."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.config import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def pretrain(
    validated_catalog: Input[Dataset],
    model_config: dict,
    train_config: dict,
    bert_path: str,
    checkpoint_root: str,
    resume: bool,
    model: Output[Model],
):
    """A Hugging Face model folder (safetensors, config, tokenizer, training curve JSON + PNG).

    With ``checkpoint_root`` set, checkpoints go to a folder keyed by catalog and settings, so a
    re-run of this task (or ``item run --resume``) continues from the last one when ``resume``."""
    import logging

    from components.steps.training import pretrain_step

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = pretrain_step(validated_catalog.path, model.path, model_config, train_config, bert_path,
                            checkpoint_root=checkpoint_root, resume=resume)
    model.metadata.update({"framework": "transformers", "n_train": summary["n_train"],
                           "final_loss": summary["final"].get("loss"),
                           "catalog_fingerprint": summary["catalog_fingerprint"]})
