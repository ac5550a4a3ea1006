"""ITEm with CNN image tokens (``ItemConfig.image_tokens = "efficientnet_lite0"``, issue 30): the tokens'
shapes, the frozen encoder staying frozen through real training steps while gradients reach the
projection, the feature cache (keyed by the pixels and the encoder's version, never stale), and real
catalog photos (greyscale, tiny, undecodable) handled as the raw-patch path handles them."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer

from components import catalog as cat
from item_model.configuration_item import IMAGENET_MEAN, ItemConfig
from item_model.feature_cache import CACHE_DIR_ENV, ImageFeatureCache
from item_model.image_encoders import load_efficientnet_lite0
from item_model.inference import embed_catalog_modes
from item_model.modeling_item import ItemModel
from item_model.processing_item import ItemProcessor, default_bert_path
from item_model.train import TrainConfig, pretrain
from tests.conftest import CATALOG

BERT = default_bert_path()
CNN = {"image_tokens": "efficientnet_lite0", "image_height": 160, "image_width": 128, "patch_size": 32}


@pytest.fixture(scope="module")
def listings():
    df = cat.read_catalog(str(CATALOG), max_listings=600)
    return df.dropna(subset=["title"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def cnn_model():
    torch.manual_seed(0)
    model = ItemModel.from_bert(BERT, num_hidden_layers=2, itm_weight=0.0, gmlm_weight=0.0, modality_dropout=0.2,
                                text_pooling="mean", **CNN)
    return model, ItemProcessor(AutoTokenizer.from_pretrained(BERT), model.config)


def _pixels(proc: ItemProcessor, rows) -> torch.Tensor:
    return proc.pixel_values([proc.image_array(r) for r in rows])


def test_config_of_cnn_tokens():
    c = ItemConfig(**CNN)
    assert c.num_patches == 20 and c.image_token_dim == 1280 and c.pixel_mean == list(IMAGENET_MEAN)
    assert ItemConfig().image_token_dim == 16 * 16 * 3 and ItemConfig().pixel_mean == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="patch_size=16 must be 32"):
        ItemConfig(**{**CNN, "patch_size": 16})
    with pytest.raises(ValueError, match="image_tokens='resnet50'"):
        ItemConfig(image_tokens="resnet50")


def test_image_tokens_are_the_cnn_feature_map_cells(cnn_model, listings):
    model, proc = cnn_model
    model.eval()
    px = _pixels(proc, listings.head(4).to_dict("records"))
    assert px.shape == (4, 3, 160, 128)
    inputs = model.image_inputs(px)
    assert inputs.shape == (4, 20, 1280) and inputs.dtype == torch.float32
    with torch.inference_mode():                                  # the packaged CNN in fp32, row-major cells
        ref = load_efficientnet_lite0().feature_map(px).flatten(2).transpose(1, 2)
    cos = F.cosine_similarity(inputs, ref, dim=-1)
    # bf16 autocast on this CPU, float16 storage: measured mean cosine 0.998, lowest cell 0.965 (a sparse one)
    assert cos.mean() > 0.99 and cos.min() > 0.9, (cos.mean(), cos.min())
    tokens, targets = model.embed_patches(px)
    assert tokens.shape == (4, 20, model.config.hidden_size) and torch.equal(targets, inputs)
    assert model.mim_head.out_features == 1280 and model.patch_embedding.in_features == 1280
    assert model.patch_position_embedding.num_embeddings == 20


def test_training_moves_the_projection_and_never_the_frozen_cnn(listings):
    torch.manual_seed(1)
    model = ItemModel.from_bert(BERT, num_hidden_layers=2, itm_weight=0.0, gmlm_weight=0.0, **CNN)
    proc = ItemProcessor(AutoTokenizer.from_pretrained(BERT), model.config)
    cnn_before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}   # BatchNorm statistics too
    proj_before = model.patch_embedding.weight.detach().clone()
    history = pretrain(model, proc, listings.head(48), TrainConfig(steps=3, batch_size=8, warmup_steps=1,
                                                                   log_every=1), progress=False)
    assert all(np.isfinite(h["loss"]) for h in history) and "mim" in history[-1]
    assert not (model.patch_embedding.weight.detach() - proj_before).abs().max() == 0    # the projection learned
    after = model.image_encoder.state_dict()
    assert all(torch.equal(cnn_before[k], after[k]) for k in cnn_before)                # the CNN did not
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    model.train()
    assert model.training and not model.image_encoder.training                         # BatchNorm stays in eval


def test_feature_cache_is_keyed_by_the_pixels_and_the_encoder(cnn_model, listings, tmp_path, monkeypatch):
    model, proc = cnn_model
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    model._feature_cache = None                                   # made again, with the folder
    rows = listings.head(3).to_dict("records")
    px = _pixels(proc, rows)
    first = model.image_inputs(px)
    cache, _ = model.image_feature_cache()
    assert (cache.hits, cache.misses) == (0, 3) and len(list(tmp_path.rglob("*.npy"))) == 3
    model._feature_cache = None                                   # a new process: read from the folder
    again = model.image_inputs(px)
    cache, _ = model.image_feature_cache()
    assert (cache.hits, cache.misses) == (3, 0) and torch.equal(first, again)

    changed = px.clone()                                          # another photo in place of the first
    changed[0] = _pixels(proc, listings.iloc[[10]].to_dict("records"))[0]
    third = model.image_inputs(changed)
    assert cache.misses == 1 and not torch.allclose(third[0], first[0]) and torch.equal(third[1:], first[1:])

    version = cache.version                                       # another encoder version: nothing shared
    other = ImageFeatureCache(version.replace(version.split("-")[1], "0" * 16), tmp_path)
    assert other.get(cache.key(px[1])) is None and other.get(other.key(px[1])) is None

    for path in tmp_path.rglob("*.npy"):                          # a damaged file is computed again
        path.write_bytes(b"not an array")
    model._feature_cache = None
    assert torch.equal(model.image_inputs(px), first)
    model._feature_cache = None


def test_greyscale_tiny_and_undecodable_photos_as_on_the_patch_path(cnn_model, listings):
    model, proc = cnn_model
    full = cat.read_catalog(str(CATALOG), max_listings=5000)
    modes = [Image.open(io.BytesIO(b)).mode for b in full["image_bytes"]]
    assert modes.count("L") >= 3                                  # the catalog's greyscale photos
    grey = full[[m == "L" for m in modes]].head(3)
    tiny = listings.head(2).copy()
    small = io.BytesIO()
    Image.open(io.BytesIO(tiny["image_bytes"].iloc[0])).resize((6, 8)).save(small, format="JPEG")
    tiny.iloc[0, tiny.columns.get_loc("image_bytes")] = small.getvalue()
    rows = pd.concat([grey, tiny], ignore_index=True)
    out = embed_catalog_modes(model, proc, rows, progress=False)
    for kind, vectors in out.items():
        assert vectors.shape == (len(rows), model.config.hidden_size)
        assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5), kind

    broken = dict(listings.iloc[0])
    broken["image_bytes"] = b"\xff\xd8 not a jpeg"
    patch_proc = ItemProcessor(proc.tokenizer, ItemConfig())
    errors = []
    for p in (proc, patch_proc):
        with pytest.raises((OSError, ValueError)) as err:
            p.image_array(broken)
        errors.append(type(err.value))
    assert errors[0] is errors[1]                                 # the same error as the raw-patch path


def test_cnn_tokens_with_the_cells_pixels(listings):
    """``efficientnet_lite0+pixels``: each token is its cell's CNN feature and the cell's pixels at a quarter
    of the resolution (the same 40 x 32 photo the raw-patch default sees); MIM normalises each part alone."""
    torch.manual_seed(2)
    model = ItemModel.from_bert(BERT, num_hidden_layers=2, itm_weight=0.0, gmlm_weight=0.0,
                                **{**CNN, "image_tokens": "efficientnet_lite0+pixels"})
    proc = ItemProcessor(AutoTokenizer.from_pretrained(BERT), model.config)
    assert model.config.image_token_dim == 1280 + 192 and model.mim_head.out_features == 1472
    px = _pixels(proc, listings.head(3).to_dict("records"))
    inputs = model.image_inputs(px)
    assert inputs.shape == (3, 20, 1472)
    small = F.avg_pool2d(px, 4)                                   # (3, 3, 40, 32): cell (0, 0) is its top-left 8 x 8
    assert torch.allclose(inputs[0, 0, 1280:], small[0, :, :8, :8].permute(1, 2, 0).reshape(-1), atol=1e-6)
    assert torch.allclose(inputs[0, 1, 1280:], small[0, :, :8, 8:16].permute(1, 2, 0).reshape(-1), atol=1e-6)
    targets = model.mim_targets(inputs.reshape(-1, 1472))
    for part in (targets[:, :1280], targets[:, 1280:]):           # each part: mean 0, variance 1 per token
        assert part.mean(-1).abs().max() < 1e-4 and (part.var(-1, unbiased=False) - 1).abs().max() < 1e-2
    model.train()
    history = pretrain(model, proc, listings.head(32), TrainConfig(steps=2, batch_size=8, warmup_steps=1,
                                                                   log_every=1), progress=False)
    assert np.isfinite(history[-1]["mim"])
