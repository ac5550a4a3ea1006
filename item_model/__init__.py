"""ITEm: unsupervised image-text product embeddings (Liao et al., arXiv:2311.02084).

The ML library of ITEm-MLOps, Hugging Face-style: configuration (``configuration_item``), model
(``modeling_item``), processor (``processing_item``, ``image_utils``), training (``train``,
``distributed``, ``checkpoint``), inference (``inference``), evaluation and metrics (``evaluation``,
``metrics``, ``title_decides``, ``titles_disagree``). It imports nothing of the platform, which lives
in ``components/`` and builds on the library, never the other way round (``docs/architecture.md``;
checked by the import-linter contract in ``pyproject.toml``).

The top-level names are imported on first use (PEP 562), so that ``import item_model.<anything>`` does
not load transformers: the platform sets its process environment (offline, telemetry off) before any
library reads it (:mod:`components.steps.environment`). ``modeling_item`` registers the model with
``AutoConfig`` / ``AutoModel`` when it is imported.
"""

import importlib

_LAZY = {"ItemConfig": "configuration_item", "ItemModel": "modeling_item", "ItemPreTrainedModel": "modeling_item"}

__all__ = ["ItemConfig", "ItemModel", "ItemPreTrainedModel"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
