"""The pipelines' parameters, declared once as dataclasses.

Everything else is derived from these: the KFP pipeline functions' signatures
(:func:`pipeline_signature`), ``item run``'s and the cluster's argument dicts
(:func:`pipelines.config.pipeline_arguments`, :func:`pipelines.config.cluster_arguments`), and the
monitoring pipeline's forwarding of the training parameters to its nested training run
(:data:`MonitoringParams` holds every :class:`TrainingParams` field). A new training parameter is one
new field here and its use in ``pipelines/training.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields


@dataclass
class TrainingParams:
    """Parameters of the training pipeline (``item-training``)."""

    catalog: str                       #: catalog folder or gs:// prefix (absolute)
    max_listings: int                  #: 0 = every listing, else a deterministic sample
    max_quarantine_fraction: float     #: validation stops above this share of quarantined rows
    model_config: dict                 #: ItemConfig overrides (item_model/configuration_item.py)
    train_config: dict                 #: TrainConfig fields (item_model/train.py)
    modality_ablation: bool            #: also evaluate the text-only and image-only vectors
    bert_path: str                     #: BERT checkpoint folder ("" = all-MiniLM-L6-v2 from its package)
    checkpoint_root: str               #: training checkpoints ("" on a cluster)
    resume: bool                       #: continue from the last checkpoint of the same settings
    gate_config: dict                  #: the promotion gate (pipelines/configs/gate.yaml)
    registry_root: str                 #: model registry, folder or gs:// prefix
    model_name: str                    #: BentoML model name
    bentoml_home: str                  #: BentoML store ("" = $BENTOML_HOME or ~/bentoml)
    storage_root: str                  #: the catalog index goes to <storage_root>/indexes/<version>
    index_shards: list                 #: the shards the index steps embed in parallel: [0, ..., num_shards - 1]
    index_settings: dict               #: catalog_embedding.index_settings (num_shards, kinds, backend, ...)


@dataclass
class MonitoringOnlyParams:
    """The monitoring pipeline's own parameters (before the forwarded training ones)."""

    current: str                       #: catalog batch folder or traffic log
    model_tag: str                     #: the champion in the BentoML store
    bentoml_home: str                  #: BentoML store (shared with the nested training run)
    storage_root: str                  #: calibrations live under it
    since: str                         #: traffic-log window start (ISO, UTC, or "")
    until: str                         #: traffic-log window end, exclusive
    drift_config: dict                 #: monitoring.drift.DriftConfig as a dict
    retrain: bool                      #: on drift, also run the training pipeline


def _specs(*classes: type) -> list[tuple[str, type]]:
    """``[(name, type)]`` of the classes' fields in order, each name once (the first wins)."""
    out: dict[str, type] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            out.setdefault(f.name, hints[f.name])
    return list(out.items())


TRAINING_FIELDS: list[str] = [f.name for f in fields(TrainingParams)]
MONITORING_SPECS = _specs(MonitoringOnlyParams, TrainingParams)
TRAINING_SPECS = _specs(TrainingParams)


def pipeline_signature(specs: list[tuple[str, type]]) -> Callable[[Callable[[dict], None]], Callable]:
    """Decorator: turn ``body(params: dict)`` into a function whose signature is ``specs`` (what
    ``@dsl.pipeline`` reads with ``inspect.signature``; KFP calls it with the parameters' channels,
    positionally in that order), so a pipeline's parameter list is written once."""
    sig = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=t)
                             for n, t in specs])

    def decorate(body: Callable[[dict], None]) -> Callable:
        def pipeline(*args, **kwargs):
            return body(dict(sig.bind(*args, **kwargs).arguments))
        pipeline.__signature__ = sig
        pipeline.__name__ = pipeline.__qualname__ = body.__name__
        pipeline.__doc__ = body.__doc__
        return pipeline
    return decorate


def training_subset(params: dict) -> dict:
    """The training pipeline's parameters out of a monitoring pipeline's (for the nested run)."""
    return {name: params[name] for name in TRAINING_FIELDS}


def check_training_arguments(args: dict) -> dict:
    """``args`` as :class:`TrainingParams` would hold them. Raises TypeError naming a missing or unknown field."""
    return dataclasses.asdict(TrainingParams(**args))


__all__ = ["TrainingParams", "MonitoringOnlyParams", "TRAINING_FIELDS", "TRAINING_SPECS", "MONITORING_SPECS",
           "pipeline_signature", "training_subset", "check_training_arguments"]
