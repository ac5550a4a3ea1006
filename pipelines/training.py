"""The ITEm training pipeline (KFP v2): validate -> pretrain -> evaluate (challenger, champion,
baselines) -> gate -> register (promote when blessed) -> (if blessed) package.

The DAG only; parameters come from ``pipelines/config.py`` (profiles and gate config).
"""

from kfp import dsl

from components.evaluate import evaluate
from components.gate import gate
from components.package import package
from components.pretrain import pretrain
from components.register_model import register_model
from components.validate_catalog import validate_catalog

PIPELINE_NAME = "item-training"
#: the DAG's task names (kfp.local writes each task's outputs to a folder of that name)
TASKS = ("validate-catalog", "pretrain", "evaluate", "gate", "register-model", "package")


@dsl.pipeline(name=PIPELINE_NAME,
              description="Validate a product catalog, pre-train ITEm, evaluate it beside baselines, "
                          "gate it, and package it for BentoML when blessed.")
def training_pipeline(
    catalog: str,
    max_listings: int,
    max_quarantine_fraction: float,
    model_config: dict,
    train_config: dict,
    modality_ablation: bool,
    bert_path: str,
    checkpoint_root: str,
    resume: bool,
    gate_config: dict,
    registry_root: str,
    model_name: str,
    bentoml_home: str,
):
    validated = validate_catalog(catalog=catalog, max_listings=max_listings,
                                 max_quarantine_fraction=max_quarantine_fraction)
    trained = pretrain(validated_catalog=validated.outputs["validated_catalog"], model_config=model_config,
                       train_config=train_config, bert_path=bert_path, checkpoint_root=checkpoint_root,
                       resume=resume)
    evaluated = evaluate(validated_catalog=validated.outputs["validated_catalog"],
                         model=trained.outputs["model"], bert_path=bert_path,
                         modality_ablation=modality_ablation, registry_root=registry_root)
    verdict = gate(eval_json=evaluated.outputs["eval_json"], eval_details=evaluated.outputs["eval_details"],
                   validated_catalog=validated.outputs["validated_catalog"], gate_config=gate_config)
    registered = register_model(model=trained.outputs["model"], eval_json=evaluated.outputs["eval_json"],
                                eval_details=evaluated.outputs["eval_details"], blessing=verdict.outputs["blessing"],
                                report=verdict.outputs["report"], report_html=verdict.outputs["report_html"],
                                validated_catalog=validated.outputs["validated_catalog"],
                                catalog_index=evaluated.outputs["catalog_index"], registry_root=registry_root, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
    with dsl.If(verdict.outputs["Output"] == True, name="blessed"):  # noqa: E712 (KFP condition syntax)
        package(model=trained.outputs["model"], eval_json=evaluated.outputs["eval_json"],
                blessing=verdict.outputs["blessing"], validated_catalog=validated.outputs["validated_catalog"],
                catalog_index=evaluated.outputs["catalog_index"], registry_version=registered.output,
                model_name=model_name, bentoml_home=bentoml_home)
