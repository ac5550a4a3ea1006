"""ITEm: unsupervised image-text product embeddings (Liao et al., arXiv:2311.02084).

The ML library of ITEm-MLOps, Hugging Face-style: configuration (``configuration_item``), model
(``modeling_item``), processor (``processing_item``, ``image_utils``), training (``train``,
``distributed``, ``checkpoint``), evaluation and metrics (``evaluation``, ``metrics``, ``title_decides``).
It imports nothing of the platform.

The platform lives in two sub-packages that build on the library, never the other way round
(``docs/architecture.md``; checked by the import-linter contracts in ``pyproject.toml``):
:mod:`item_model.data` (storage, catalog, validation) and :mod:`item_model.lifecycle` (pipeline steps,
gate, registry, catalog index).
"""

from transformers import AutoConfig, AutoModel

from .configuration_item import ItemConfig
from .modeling_item import ItemModel, ItemPreTrainedModel

AutoConfig.register("item", ItemConfig)
AutoModel.register(ItemConfig, ItemModel)

__all__ = ["ItemConfig", "ItemModel", "ItemPreTrainedModel"]
__version__ = "0.1.0"
