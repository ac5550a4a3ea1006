"""ITEm: a single-stream BERT over title tokens and image patches, pre-trained with six objectives.

Source: B. Liao, M. Kozielski, S. Hewavitharana, J. Yuan, S. Khadivi, T. Lancewicki,
"ITEm: Unsupervised Image-Text Embedding Learning for eCommerce", arXiv:2311.02084 (2024); the
concrete choices (sizes, ratios, heads) are this project's, in ``shared/docs/item-model.md``.

Notation: B batch, T text length, N image patches, D hidden size, P patch side (pixels), C channels.

Input sequence::

    [CLS] title tokens [SEP] patch_1 ... patch_N
    |<---- token type 0 --->| |<- token type 1 ->|

Objectives (each weighted by ``config.<name>_weight``, 0 = off):

* MLM  - masked title tokens predicted from their own final hidden state (BERT, Devlin et al. 2019).
* MIM  - masked patches' per-patch-normalised pixels regressed from their own hidden state;
         MSE over masked patches only (SimMIM, Xie et al. 2022; MAE ``norm_pix_loss``, He et al. 2022).
         With CNN image tokens (``config.image_tokens``) the target is the masked cell's normalised
         CNN feature (and, with ``+pixels``, its normalised low-resolution pixels): the frozen
         encoder's feature as the target, as BEiT v2 / MaskFeat regress a teacher's features.
* GMLM - masked tokens predicted from the ``[CLS]`` state + the position embedding only.
* GMIM - masked patches reconstructed from the ``[CLS]`` state + the patch-position embedding only.
* ITM  - matched / mismatched image-title pair classified from ``[CLS]`` (binary cross-entropy).
* InfoNCE - the product vector itself: the ``[CLS]`` state of the masked training pass must pick, among
         the batch, the clean title-only and the clean photo-only ``[CLS]`` states of its own
         listing (stop-gradient keys, in-batch negatives, duplicates of its title or photo never
         negatives). InfoNCE: van den Oord et al. 2018; in-batch negatives and a small temperature as
         SimCLR (Chen et al. 2020) and SimCSE (Gao et al. 2021); image-text alignment of the
         fused vector with unimodal vectors as ALBEF's ITC (Li et al. 2021). Without it no loss reads
         the final ``[CLS]`` state under MLM + MIM, and the served vector is a by-product.

Modality dropout (``config.modality_dropout``) feeds some rows one stream only through the attention
mask, so the text-only and image-only vectors are trained inputs, not out-of-distribution ones.
Masked objectives are computed on matched pairs only (``itm_labels == 1``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertOnlyMLMHead
from transformers.utils import ModelOutput

from .configuration_item import CELL_PIXELS_SIDE, INFERENCE_PRECISIONS, ItemConfig
from .hardware import cpu_has_native_bf16
from .feature_cache import CACHE_DIR_ENV, ImageFeatureCache, encoder_version
from .image_encoders import EfficientNetLite0, efficientnet_lite0_path


logger = logging.getLogger(__name__)
#: environment variable that overrides ``ItemConfig.inference_precision`` (``fp32`` / ``bf16``)
PRECISION_ENV = "ITEM_INFERENCE_PRECISION"


@dataclass
class ItemPreTrainingOutput(ModelOutput):
    """Output of :meth:`ItemModel.forward`.

    Attributes:
        loss: scalar float32, the weighted sum of the enabled objectives (None without labels).
        losses: ``{objective: scalar tensor}`` of the enabled objectives that had targets.
        last_hidden_state: (B, L, D) float32, L = T + N (or T, or 1 + N).
        embedding: (B, D) float32, L2-normalised ``[CLS]`` state (the product embedding).
        itm_logits: (B,) float32 or None.
        infonce_logits: ``{"text"|"image": (Q, B) float32}`` query-to-key similarity / tau of the
            InfoNCE rows, duplicates masked to -inf (None when InfoNCE is off).
    """

    loss: torch.Tensor | None = None
    losses: dict | None = None
    last_hidden_state: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    infonce_logits: dict | None = None


def infonce_loss(query: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, duplicates: torch.Tensor,
                 logit_scale: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """InfoNCE of ``query[rows]`` against all ``keys``, the positive of query i being key i.

    ``L = -mean_i log( exp(s q_i.k_i) / sum_{j not dup(i)} exp(s q_i.k_j) )`` with s = 1 / tau
    (van den Oord et al. 2018, eq. 4; in-batch negatives as SimCLR). Keys that duplicate query i's
    listing (``duplicates[i, j]``, j != i) are removed from its denominator, so a batch of identical
    titles or photos neither yields NaN nor pushes duplicates apart.

    Args:
        query: (B, D) float, L2-normalised. keys: (B, D) float, L2-normalised.
        rows: (B,) bool, the queries that take part. duplicates: (B, B) bool.
        logit_scale: scalar, s = 1 / tau.

    Returns:
        (mean loss over the selected rows in nats, or None when no row is selected;
        logits (Q, B) float32 with the removed entries at -inf).
    """
    logits = (query[rows].float() @ keys.float().T) * logit_scale.float()
    idx = rows.nonzero(as_tuple=True)[0]
    dup = duplicates[idx].clone()
    dup[torch.arange(len(idx), device=dup.device), idx] = False
    logits = logits.masked_fill(dup, float("-inf"))
    if len(idx) == 0:
        return None, logits
    return F.cross_entropy(logits, idx), logits


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P*P*C), patches in row-major order, each flattened as (P, P, C)."""
    b, c, h, w = pixel_values.shape
    p = patch_size
    x = pixel_values.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation of MIM targets: (x - mean) / sqrt(var + eps) over each patch's values (MAE)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


class ItemPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the ``save_pretrained`` / ``from_pretrained`` plumbing."""

    config_class = ItemConfig
    base_model_prefix = "item"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, ItemModel):
            module.mask_patch_embedding.normal_(0.0, std)
            module.infonce_logit_scale.fill_(math.log(1.0 / self.config.infonce_temperature))


class ItemModel(ItemPreTrainedModel):
    """ITEm encoder with its pre-training heads (MLM, GMLM, MIM, GMIM, ITM) and the InfoNCE temperature.

    Build from a BERT checkpoint with :meth:`from_bert`; reload a trained model with
    ``ItemModel.from_pretrained(path)`` (safetensors).
    """

    _tied_weights_keys = {
        "mlm_head.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "gmlm_head.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "mlm_head.predictions.decoder.bias": "mlm_head.predictions.bias",
        "gmlm_head.predictions.decoder.bias": "gmlm_head.predictions.bias",
    }

    def __init__(self, config: ItemConfig):
        super().__init__(config)
        bert_config = config.to_bert_config()
        bert_config._attn_implementation = config._attn_implementation or "sdpa"
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        d = config.hidden_size
        if config.cnn == "efficientnet_lite0":
            # frozen, in eval mode whatever the model's mode (BatchNorm statistics kept); its ImageNet
            # weights are loaded by from_bert and saved with the model (a model folder is self-contained)
            self.image_encoder = EfficientNetLite0().requires_grad_(False).eval()
        self.patch_embedding = nn.Linear(config.image_token_dim, d)
        self.patch_position_embedding = nn.Embedding(config.num_patches, d)
        self.mask_patch_embedding = nn.Parameter(torch.zeros(d))
        self.mlm_head = BertOnlyMLMHead(bert_config)
        self.gmlm_head = BertOnlyMLMHead(bert_config)
        self.gmlm_query_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mim_head = nn.Linear(d, config.image_token_dim)
        self.gmim_query_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.gmim_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=config.layer_norm_eps),
                                       nn.Linear(d, config.image_token_dim))
        self.itm_head = nn.Linear(d, 1)
        self.infonce_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.infonce_temperature)),
                                                requires_grad=bool(config.infonce_learn_temperature))
        self.post_init()

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_bert(cls, bert_path: str, **config_overrides) -> "ItemModel":
        """A new ITEm model whose backbone is the BERT checkpoint at ``bert_path``.

        Encoder layers beyond ``num_hidden_layers`` (an override may ask for fewer) are dropped;
        the patch embedding and all heads start from random initialisation.

        Raises:
            OSError: ``bert_path`` holds no BERT checkpoint.
        """
        bert = BertModel.from_pretrained(bert_path, add_pooling_layer=False)
        config = ItemConfig.from_bert_config(bert.config, **config_overrides)
        model = cls(config)
        state = {k: v for k, v in bert.state_dict().items()}
        missing, unexpected = model.bert.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith("encoder.layer.")]
        if unexpected or [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]:
            raise ValueError(f"BERT checkpoint {bert_path!r} does not fit: missing={missing}, "
                             f"unexpected={unexpected}")
        if config.cnn == "efficientnet_lite0":
            state = torch.load(efficientnet_lite0_path(), map_location="cpu", weights_only=True)
            model.image_encoder.load_state_dict(state, strict=True)
        model.tie_weights()
        return model

    def train(self, mode: bool = True) -> "ItemModel":
        """``nn.Module.train``, except that a frozen CNN image encoder always stays in eval mode."""
        super().train(mode)
        if hasattr(self, "image_encoder"):
            self.image_encoder.eval()
        return self

    def get_input_embeddings(self):
        return self.bert.embeddings.word_embeddings

    def get_output_embeddings(self):
        return self.mlm_head.predictions.decoder

    # ----------------------------------------------------------------------------- embeddings
    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) long -> (B, T, D): word + position + token-type-0 embeddings, LayerNorm, dropout.
        With ``config.ablate_stream == "text"`` every position but ``[CLS]`` is zeroed."""
        x = self.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        if getattr(self.config, "ablate_stream", None) == "text":
            keep = torch.zeros_like(x[:1, :, :1])
            keep[:, 0] = 1
            x = x * keep
        return x

    def image_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The photo's token inputs, which are also the MIM targets: (B, C, H, W) float32 normalised
        pixels -> (B, N, K) float32, cells in row-major order.

        ``image_tokens == "patches"``: the flattened pixel patches, K = P*P*C (:func:`patchify`).
        ``"efficientnet_lite0"``: the frozen CNN's last feature map, K = 1280 channels per cell of
        stride 32 (``+pixels``: then the cell's pixels average-pooled to 8 x 8, K = 1280 + 192),
        computed without gradient, channels-last (the fast layout of oneDNN's depthwise
        convolutions), under bf16 autocast where the CPU has native bf16 (on a GPU always; fp32
        elsewhere), rounded to float16 and returned as float32. Each photo's features are looked up
        in, and stored to, the model's :class:`~item_model.feature_cache.ImageFeatureCache` first
        (keyed by the exact pixels and the encoder's version, so a changed photo is never answered
        with a stale feature; a cached and a fresh feature are bitwise equal).
        """
        cfg = self.config
        if cfg.cnn is None:
            return patchify(pixel_values, cfg.patch_size)
        cache, bf16 = self.image_feature_cache()
        keys = [cache.key(row) for row in pixel_values]
        found = [cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            px = pixel_values[missing].contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast(device_type=px.device.type, dtype=torch.bfloat16, enabled=bf16):
                fmap = self.image_encoder.feature_map(px)
            feats = fmap.float().flatten(2).transpose(1, 2).to(torch.float16).cpu().numpy()
            for i, f in zip(missing, feats):
                cache.put(keys[i], f)
                found[i] = f
        features = torch.from_numpy(np.stack(found)).to(device=pixel_values.device, dtype=torch.float32)
        if cfg.cell_pixel_dim:
            small = F.avg_pool2d(pixel_values.float(), cfg.patch_size // CELL_PIXELS_SIDE)
            features = torch.cat([features, patchify(small, CELL_PIXELS_SIDE)], dim=-1)
        return features

    def mim_targets(self, inputs: torch.Tensor) -> torch.Tensor:
        """MIM/GMIM regression targets of image token inputs (R, K): per-token normalised when
        ``config.mim_norm_pix`` (MAE's ``norm_pix_loss``; with ``+pixels`` the CNN feature and the
        pixels each on their own), else the inputs. (R, K) float32."""
        inputs = inputs.float()
        if not self.config.mim_norm_pix:
            return inputs
        if not self.config.cell_pixel_dim:
            return normalize_patches(inputs)
        cut = inputs.shape[-1] - self.config.cell_pixel_dim
        return torch.cat([normalize_patches(inputs[..., :cut]), normalize_patches(inputs[..., cut:])], dim=-1)

    def image_feature_cache(self) -> tuple[ImageFeatureCache, bool]:
        """(the cache of the frozen CNN's features, whether they are computed under bf16 autocast).

        Made on first use: in memory, and in the folder named by the environment variable
        ``ITEM_IMAGE_FEATURE_CACHE`` when set (shared by the pipeline's steps); keyed by
        :func:`~item_model.feature_cache.encoder_version` of the CNN's weights, which are frozen.
        """
        if getattr(self, "_feature_cache", None) is None:
            device = next(self.image_encoder.parameters()).device
            bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
            version = encoder_version(self.config.cnn, self.image_encoder, "bf16" if bf16 else "fp32")
            self._feature_cache = (ImageFeatureCache(version, os.environ.get(CACHE_DIR_ENV) or None), bf16)
        return self._feature_cache

    def embed_patches(self, pixel_values: torch.Tensor | None, mim_mask: torch.Tensor | None = None,
                      image_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) float32 normalised pixels -> ((B, N, D) image token embeddings, (B, N, K) token
        inputs, :meth:`image_inputs`); pass ``image_inputs`` instead of the pixels when already computed
        (a CNN's features are then not computed again).

        Masked tokens (``mim_mask`` (B, N) bool) have their projection replaced by the learned mask
        embedding; position and token-type-1 embeddings are then added, LayerNorm and dropout applied.
        With ``config.ablate_stream == "image"`` the result is all zeros.
        """
        patches = self.image_inputs(pixel_values) if image_inputs is None else image_inputs
        x = self.patch_embedding(patches)
        if mim_mask is not None:
            x = torch.where(mim_mask.unsqueeze(-1), self.mask_patch_embedding.to(x.dtype), x)
        emb = self.bert.embeddings
        x = x + self.patch_position_embedding.weight.unsqueeze(0) + emb.token_type_embeddings.weight[1]
        x = emb.dropout(emb.LayerNorm(x))
        if getattr(self.config, "ablate_stream", None) == "image":
            x = torch.zeros_like(x)
        return x, patches

    def encode(self, input_ids=None, attention_mask=None, pixel_values=None, mim_mask=None,
               text_only=None, image_only=None, image_inputs=None):
        """Run the single-stream encoder.

        Args:
            input_ids: (B, T) long ``[CLS] title [SEP] [PAD]...`` or None (image only: a bare
                ``[CLS] [SEP]`` text stream is used).
            attention_mask: (B, T) 0/1 for the text stream (None = all ones).
            pixel_values: (B, C, H, W) float32, normalised; or None (text only).
            mim_mask: (B, N) bool patches to mask, or None.
            text_only / image_only: (B,) bool rows whose photo / title (all but ``[CLS]`` and
                ``[SEP]``) is hidden from attention (modality dropout), or None.
            image_inputs: (B, N, K) float32, the photo's :meth:`image_inputs` if already computed
                (then ``pixel_values`` may be None).

        Returns:
            (last_hidden_state (B, L, D), image token inputs (B, N, K) or None, text length T).

        Raises:
            ValueError: both streams are None, or the batch sizes differ.
        """
        if image_inputs is None and pixel_values is not None:
            image_inputs = self.image_inputs(pixel_values)
        if input_ids is None and image_inputs is None:
            raise ValueError("encode() needs input_ids, pixel_values or both")
        if input_ids is None:
            b = image_inputs.shape[0]
            cls_id = self.config.cls_token_id if getattr(self.config, "cls_token_id", None) is not None else 101
            sep_id = self.config.sep_token_id if getattr(self.config, "sep_token_id", None) is not None else 102
            input_ids = torch.tensor([[cls_id, sep_id]], device=image_inputs.device).expand(b, 2)
            attention_mask = None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_only is not None and image_only.any():
            special = torch.zeros_like(attention_mask)
            special[:, 0] = 1
            sep = (attention_mask.sum(1) - 1).clamp(min=0)
            special[torch.arange(len(sep), device=sep.device), sep] = 1
            attention_mask = torch.where(image_only[:, None], attention_mask * special, attention_mask)
        parts, masks, patches = [self.embed_text(input_ids)], [attention_mask], None
        if image_inputs is not None:
            if image_inputs.shape[0] != input_ids.shape[0]:
                raise ValueError(f"batch sizes differ: input_ids {tuple(input_ids.shape)}, "
                                 f"pixel_values {tuple(image_inputs.shape)}")
            img, patches = self.embed_patches(None, mim_mask, image_inputs)
            parts.append(img)
            patch_mask = torch.ones(img.shape[:2], dtype=attention_mask.dtype, device=img.device)
            if text_only is not None:
                patch_mask = patch_mask * (~text_only[:, None]).to(patch_mask.dtype)
            masks.append(patch_mask)
        hidden = torch.cat(parts, dim=1)
        mask2d = torch.cat(masks, dim=1)
        mask = create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden, attention_mask=mask2d)
        hidden = self.bert.encoder(hidden, attention_mask=mask).last_hidden_state
        return hidden, patches, input_ids.shape[1]

    def text_vector(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The title stream's vector t: the title fed alone, read out by ``config.text_pooling``
        (``"cls"``: the final ``[CLS]`` state; ``"mean"``: the mean of the final states of the
        title's other tokens, ``[SEP]`` included, padding excluded; Reimers & Gurevych 2019).

        Args:
            input_ids / attention_mask: (B, T) long / 0-1 (None: no padding).

        Returns:
            (B, D) float32, L2-normalised rows.
        """
        hidden = self.encode(input_ids, attention_mask)[0].float()
        if getattr(self.config, "text_pooling", "cls") == "cls":
            return F.normalize(hidden[:, 0], dim=-1)
        mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).to(hidden.dtype)
        mask = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, 1:]], dim=1)[..., None]
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)

    def inference_autocast(self):
        """The context :meth:`embed` and :meth:`embed_kinds` run in: bf16 autocast when
        ``config.inference_precision`` (or the environment variable ``ITEM_INFERENCE_PRECISION``) is
        ``"bf16"`` and the device computes bf16 natively (a GPU, or a CPU with ``avx512_bf16`` /
        ``amx_bf16``: :func:`~item_model.hardware.cpu_has_native_bf16`), else a no-op (fp32; a bf16
        request on a CPU without it is logged once)."""
        import contextlib

        precision = os.environ.get(PRECISION_ENV) or getattr(self.config, "inference_precision", "fp32")
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"{PRECISION_ENV}={precision!r} must be one of {list(INFERENCE_PRECISIONS)}")
        if precision == "fp32":
            return contextlib.nullcontext()
        device = self.device.type
        if device == "cpu" and not cpu_has_native_bf16():
            if not getattr(self, "_warned_bf16", False):
                logger.warning("inference_precision bf16 asked, but this CPU has no native bf16: fp32")
                self._warned_bf16 = True
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    @torch.no_grad()
    def embed(self, input_ids=None, attention_mask=None, pixel_values=None) -> torch.Tensor:
        """Product embedding, L2-normalised. (B, D) float32.

        Pass both streams for the joint embedding, or one for a text-only / image-only embedding:
        the title fed alone gives t (:meth:`text_vector`, ``config.text_pooling``), the photo fed
        alone the final ``[CLS]`` state of its pass. The joint embedding is the final ``[CLS]``
        state of the joint pass j, or, with ``config.readout_text_weight`` w > 0,
        ``normalize(w * t + j)`` (both L2-normalised first), so that the title's identity
        survives in the served vector.
        """
        with self.inference_autocast():
            if pixel_values is None:
                return self.text_vector(input_ids, attention_mask)
            hidden, _, _ = self.encode(input_ids, attention_mask, pixel_values)
            joint = F.normalize(hidden[:, 0].float(), dim=-1)
            w = float(getattr(self.config, "readout_text_weight", 0.0) or 0.0)
            if w > 0 and input_ids is not None:
                joint = F.normalize(w * self.text_vector(input_ids, attention_mask) + joint, dim=-1)
            return joint

    @torch.no_grad()
    def embed_kinds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                    kinds: tuple[str, ...] = ("joint", "text", "image")) -> dict[str, torch.Tensor]:
        """The joint, text-only and image-only embeddings of the same listings in one call, each exactly
        what :meth:`embed` returns for that input, with each encoder pass run once: the title
        stream's vector (:meth:`text_vector`) serves both the text-only vector and the joint read-out.

        Args:
            input_ids / attention_mask: (B, T) long / 0-1, the titles.
            pixel_values: (B, C, H, W) float32, the photos.
            kinds: a subset of ``("joint", "text", "image")``.

        Returns:
            ``{kind: (B, D) float32}``, L2-normalised rows.

        Raises:
            ValueError: an unknown kind.
        """
        if set(kinds) - {"joint", "text", "image"}:
            raise ValueError(f"kinds: {list(kinds)} must be among 'joint', 'text', 'image'")
        with self.inference_autocast():
            return self._embed_kinds(input_ids, attention_mask, pixel_values, kinds)

    def _embed_kinds(self, input_ids, attention_mask, pixel_values, kinds) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        w = float(getattr(self.config, "readout_text_weight", 0.0) or 0.0)
        text = None
        if "text" in kinds or ("joint" in kinds and w > 0):
            text = self.text_vector(input_ids, attention_mask)
        inputs = self.image_inputs(pixel_values) if {"joint", "image"} & set(kinds) else None
        if "joint" in kinds:
            joint = F.normalize(self.encode(input_ids, attention_mask, image_inputs=inputs)[0][:, 0].float(), dim=-1)
            out["joint"] = F.normalize(w * text + joint, dim=-1) if w > 0 else joint
        if "text" in kinds:
            out["text"] = text
        if "image" in kinds:
            out["image"] = F.normalize(self.encode(None, None, image_inputs=inputs)[0][:, 0].float(), dim=-1)
        return out

    # ----------------------------------------------------------------------------- pre-training
    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, mlm_labels=None,
                mim_mask=None, itm_labels=None, text_only=None, image_only=None, clean_input_ids=None,
                duplicate_titles=None, duplicate_photos=None, **kwargs) -> ItemPreTrainingOutput:
        """Encode and, given targets, compute the enabled objectives.

        Args:
            input_ids: (B, T) long, already MLM-masked by the collator.
            attention_mask: (B, T) 0/1.
            pixel_values: (B, C, H, W) float32 normalised (ITM negatives already swapped in).
            mlm_labels: (B, T) long original ids at masked positions, -100 elsewhere (MLM, GMLM).
            mim_mask: (B, N) bool masked patches (MIM, GMIM).
            itm_labels: (B,) float 1 = matched pair, 0 = swapped image (ITM). Masked objectives use
                matched rows only.
            text_only / image_only: (B,) bool modality-dropout rows (see :meth:`encode`).
            clean_input_ids: (B, T) long unmasked title ids, the InfoNCE title-only keys.
            duplicate_titles / duplicate_photos: (B, B) bool, pairs never used as InfoNCE negatives.

        Returns:
            :class:`ItemPreTrainingOutput`. Losses: MLM/GMLM cross-entropy over masked tokens
            (nats), MIM/GMIM mean squared error over masked patches' values, ITM binary cross-entropy,
            InfoNCE cross-entropy over the batch (nats; ``log B`` at chance).

        Raises:
            ValueError: InfoNCE is on and ``clean_input_ids`` or the duplicate matrices are missing.
        """
        cfg = self.config
        w = cfg.objective_weights()
        inputs = self.image_inputs(pixel_values) if pixel_values is not None else None
        hidden, patches, t_len = self.encode(input_ids, attention_mask, None, mim_mask, text_only, image_only,
                                             image_inputs=inputs)
        cls = hidden[:, 0]
        matched = itm_labels > 0.5 if itm_labels is not None else None
        losses: dict[str, torch.Tensor] = {}

        if mlm_labels is not None and (w["mlm"] > 0 or w["gmlm"] > 0):
            sel = mlm_labels != -100
            if matched is not None:
                sel = sel & matched[:, None]
            if sel.any():
                labels = mlm_labels[sel]
                if w["mlm"] > 0:
                    logits = self.mlm_head(hidden[:, :t_len][sel])
                    losses["mlm"] = F.cross_entropy(logits.float(), labels)
                if w["gmlm"] > 0:
                    b_idx, t_idx = sel.nonzero(as_tuple=True)
                    pos = self.bert.embeddings.position_embeddings(t_idx)
                    query = self.gmlm_query_norm(cls[b_idx] + pos)
                    losses["gmlm"] = F.cross_entropy(self.gmlm_head(query).float(), labels)

        if mim_mask is not None and patches is not None and (w["mim"] > 0 or w["gmim"] > 0):
            sel = mim_mask if matched is None else mim_mask & matched[:, None]
            if sel.any():
                target = self.mim_targets(patches[sel])
                if w["mim"] > 0:
                    losses["mim"] = F.mse_loss(self.mim_head(hidden[:, t_len:][sel]).float(), target)
                if w["gmim"] > 0:
                    b_idx, n_idx = sel.nonzero(as_tuple=True)
                    query = self.gmim_query_norm(cls[b_idx] + self.patch_position_embedding(n_idx))
                    losses["gmim"] = F.mse_loss(self.gmim_head(query).float(), target)

        itm_logits = None
        if itm_labels is not None and w["itm"] > 0:
            itm_logits = self.itm_head(cls).squeeze(-1)
            losses["itm"] = F.binary_cross_entropy_with_logits(itm_logits.float(), itm_labels.float())

        infonce_logits = None
        if w["infonce"] > 0 and pixel_values is not None:
            if clean_input_ids is None or duplicate_titles is None or duplicate_photos is None:
                raise ValueError("InfoNCE needs clean_input_ids, duplicate_titles and duplicate_photos "
                                 "(PretrainingCollator provides them when infonce_weight > 0)")
            infonce_logits, parts = self._infonce(cls, attention_mask, inputs, matched, text_only,
                                                  image_only, clean_input_ids, duplicate_titles, duplicate_photos)
            if parts:
                losses["infonce"] = torch.stack(parts).mean()

        loss = sum(w[k] * v for k, v in losses.items()) if losses else None
        return ItemPreTrainingOutput(loss=loss, losses=losses, last_hidden_state=hidden,
                                     embedding=F.normalize(cls.float(), dim=-1), itm_logits=itm_logits,
                                     infonce_logits=infonce_logits)

    def _infonce(self, cls, attention_mask, image_inputs, matched, text_only, image_only, clean_input_ids,
                 duplicate_titles, duplicate_photos) -> tuple[dict, list]:
        """The InfoNCE terms: every matched row's ``[CLS]`` against the clean title-only keys (rows that
        see their title) and the clean photo-only keys (rows that see their photo)."""
        b = cls.shape[0]
        query = F.normalize(cls, dim=-1)
        rows = matched if matched is not None else torch.ones(b, dtype=torch.bool, device=cls.device)
        no = torch.zeros(b, dtype=torch.bool, device=cls.device)
        text_only = no if text_only is None else text_only
        image_only = no if image_only is None else image_only
        with torch.no_grad():                                   # stop-gradient keys (clean views)
            text_key = F.normalize(self.encode(clean_input_ids, attention_mask)[0][:, 0], dim=-1)
            image_key = F.normalize(self.encode(None, None, image_inputs=image_inputs)[0][:, 0], dim=-1)
        scale = self.infonce_logit_scale.clamp(max=math.log(100.0)).exp()
        logits, parts = {}, []
        for kind, key, sel, dup in (("text", text_key, rows & ~image_only, duplicate_titles),
                                    ("image", image_key, rows & ~text_only, duplicate_photos)):
            loss, logits[kind] = infonce_loss(query, key, sel, dup.to(cls.device), scale)
            if loss is not None:
                parts.append(loss)
        return logits, parts


# the Hugging Face Auto classes know the "item" model type once this module is imported
from transformers import AutoConfig, AutoModel  # noqa: E402

AutoConfig.register("item", ItemConfig, exist_ok=True)
AutoModel.register(ItemConfig, ItemModel, exist_ok=True)
