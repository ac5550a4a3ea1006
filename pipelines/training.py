"""The ITEm training pipeline (KFP v2): validate -> pretrain -> evaluate -> gate -> (if blessed) package.

The DAG only; parameters come from ``pipelines/config.py`` (profiles and gate config).
"""

from kfp import dsl

from components.evaluate import evaluate
from components.gate import gate
from components.package import package
from components.pretrain import pretrain
from components.validate_catalog import validate_catalog

PIPELINE_NAME = "item-training"


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
    gate_config: dict,
    model_name: str,
    bentoml_home: str,
):
    validated = validate_catalog(catalog=catalog, max_listings=max_listings,
                                 max_quarantine_fraction=max_quarantine_fraction)
    trained = pretrain(validated_catalog=validated.outputs["validated_catalog"], model_config=model_config,
                       train_config=train_config, bert_path=bert_path)
    evaluated = evaluate(validated_catalog=validated.outputs["validated_catalog"],
                         model=trained.outputs["model"], bert_path=bert_path,
                         modality_ablation=modality_ablation)
    verdict = gate(eval_json=evaluated.outputs["eval_json"], gate_config=gate_config)
    with dsl.If(verdict.outputs["Output"] == True, name="blessed"):  # noqa: E712 (KFP condition syntax)
        package(model=trained.outputs["model"], eval_json=evaluated.outputs["eval_json"],
                blessing=verdict.outputs["blessing"], validated_catalog=validated.outputs["validated_catalog"],
                catalog_index=evaluated.outputs["catalog_index"],
                model_name=model_name, bentoml_home=bentoml_home)
