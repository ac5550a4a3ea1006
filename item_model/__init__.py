"""ITEm: unsupervised image-text product embeddings (Liao et al., arXiv:2311.02084).

The ML library of ITEm-MLOps: catalog data layer, validation, model, training, evaluation and the
gate logic. No Kubeflow or BentoML imports here.
"""

from transformers import AutoConfig, AutoModel

from .configuration_item import ItemConfig
from .modeling_item import ItemModel, ItemPreTrainedModel

AutoConfig.register("item", ItemConfig)
AutoModel.register(ItemConfig, ItemModel)

__all__ = ["ItemConfig", "ItemModel", "ItemPreTrainedModel"]
__version__ = "0.1.0"
