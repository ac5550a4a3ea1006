"""The inference precision switch (``ItemConfig.inference_precision``, issue 32): bf16 vectors on real
listings close to fp32, the environment override, and the fall-back to fp32 with a logged reason when
a precision's vectors drift beyond the tolerance (forced here with an impossible tolerance)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from components import catalog as cat
from item_model.configuration_item import ItemConfig
from item_model.hardware import cpu_has_native_bf16
from item_model.inference import check_inference_precision, embed_catalog_modes, precision
from item_model.modeling_item import PRECISION_ENV, ItemModel
from item_model.processing_item import ItemProcessor, default_bert_path
from tests.conftest import CATALOG

BERT = default_bert_path()
needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (fp32 is used there)")


@pytest.fixture(scope="module")
def model_and_rows():
    torch.manual_seed(0)
    model = ItemModel.from_bert(BERT, num_hidden_layers=2, text_pooling="mean", readout_text_weight=8.0,
                                inference_precision="bf16").eval()
    proc = ItemProcessor(AutoTokenizer.from_pretrained(BERT), model.config)
    rows = cat.read_catalog(str(CATALOG), max_listings=400).dropna(subset=["title"]).head(96).reset_index(drop=True)
    return model, proc, rows


def test_inference_precision_is_validated():
    assert ItemConfig().inference_precision == "fp32"
    with pytest.raises(ValueError, match="inference_precision='int4'"):
        ItemConfig(inference_precision="int4")


@needs_bf16
def test_bf16_vectors_are_close_to_fp32_and_not_identical(model_and_rows, monkeypatch):
    model, proc, rows = model_and_rows
    with precision(model, "fp32"):
        ref = embed_catalog_modes(model, proc, rows, progress=False)
    fast = embed_catalog_modes(model, proc, rows, progress=False)          # the config's bf16
    for kind in ref:
        cos = (ref[kind] * fast[kind]).sum(1)
        assert fast[kind].dtype == np.float32 and cos.min() > 0.99, (kind, cos.min())
        assert not np.array_equal(ref[kind], fast[kind])                   # the switch changed the path
    monkeypatch.setenv(PRECISION_ENV, "fp32")                              # the environment wins
    assert np.array_equal(embed_catalog_modes(model, proc, rows, ("joint",), progress=False)["joint"], ref["joint"])
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(ValueError, match=PRECISION_ENV):
        embed_catalog_modes(model, proc, rows.head(2), ("text",), progress=False)


@needs_bf16
def test_precision_check_keeps_bf16_within_tolerance_and_falls_back_beyond_it(model_and_rows, caplog):
    model, proc, rows = model_and_rows
    kept = check_inference_precision(model, proc, rows, min_cosine=0.99)
    assert kept["kept"] and model.config.inference_precision == "bf16" and kept["n_rows"] == len(rows)
    assert all(0.99 <= kept["min_cosine"][k] <= kept["mean_cosine"][k] <= 1.0 + 1e-6 for k in ("joint", "text", "image"))
    with caplog.at_level(logging.WARNING, logger="item_model.inference"):
        forced = check_inference_precision(model, proc, rows, min_cosine=1.0)     # nothing but fp32 meets this
    try:
        assert not forced["kept"] and model.config.inference_precision == "fp32"
        assert "falling back to fp32" in forced["reason"] and "falling back to fp32" in caplog.text
        again = check_inference_precision(model, proc, rows)                   # fp32 is the reference itself
        assert again["kept"] and again["n_rows"] == 0
    finally:
        model.config.inference_precision = "bf16"
