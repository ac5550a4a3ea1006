"""ITEm model: masking, each objective's loss, switching objectives off, embeddings, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from components import catalog as cat
from item_model.configuration_item import OBJECTIVES, ItemConfig
from item_model.inference import embed_listings
from item_model.modeling_item import ItemModel, normalize_patches, patchify
from item_model.processing_item import (ItemProcessor, ListingDataset, PretrainingCollator, default_bert_path,
                                        itm_pairs, mask_patches, mask_tokens)
from tests.conftest import CATALOG

BERT = default_bert_path()


@pytest.fixture(scope="module")
def listings():
    return next(cat.iter_catalog(CATALOG, batch_rows=64)).dropna(subset=["title"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = ItemModel.from_bert(BERT, num_hidden_layers=2)
    return model, ItemProcessor(AutoTokenizer.from_pretrained(BERT), model.config)


@pytest.fixture(scope="module")
def batch(tiny, listings):
    _, proc = tiny
    ds = ListingDataset(listings, proc)
    return PretrainingCollator(proc, seed=3)([ds[i] for i in range(16)])


def test_mask_tokens_bert_80_10_10_and_specials_untouched():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (400, 30))
    special = torch.zeros_like(ids)
    special[:, 0] = special[:, -1] = 1
    masked, labels = mask_tokens(ids, special, 0.15, mask_token_id=103, vocab_size=30522, generator=g)
    sel = labels != -100
    assert not sel[:, 0].any() and not sel[:, -1].any()
    assert 0.13 < sel.float().mean() * 30 / 28 < 0.17
    assert (labels[sel] == ids[sel]).all()
    share_mask = (masked[sel] == 103).float().mean()
    share_kept = (masked[sel] == ids[sel]).float().mean()
    assert 0.76 < share_mask < 0.84 and 0.07 < share_kept < 0.13
    assert (masked[~sel] == ids[~sel]).all()
    rows = torch.zeros(400, dtype=torch.bool)
    rows[:10] = True
    _, labels = mask_tokens(ids, special, 0.15, 103, 30522, g, row_mask=rows)
    assert (labels[10:] == -100).all()


def test_mask_patches_exact_count_and_row_mask():
    g = torch.Generator().manual_seed(0)
    m = mask_patches(8, 20, 0.5, g)
    assert m.shape == (8, 20) and (m.sum(1) == 10).all()
    assert not (m[0] == m[1]).all()
    rows = torch.tensor([True, False] * 4)
    assert (mask_patches(8, 20, 0.5, g, rows)[~rows].sum() == 0)


def test_itm_pairs_swap_only_to_other_rows():
    g = torch.Generator().manual_seed(0)
    idx, labels = itm_pairs(1000, 0.5, g)
    swapped = labels == 0
    assert 0.45 < swapped.float().mean() < 0.55
    assert (idx[swapped] != torch.arange(1000)[swapped]).all()
    assert (idx[~swapped] == torch.arange(1000)[~swapped]).all()


def test_patchify_round_trip_and_norm():
    x = torch.arange(2 * 3 * 80 * 64, dtype=torch.float32).reshape(2, 3, 80, 64)
    p = patchify(x, 16)
    assert p.shape == (2, 20, 16 * 16 * 3)
    assert p[0, 1, 0].item() == x[0, 0, 0, 16].item()          # second patch starts at column 16
    n = normalize_patches(torch.randn(5, 768) * 3 + 2)
    assert torch.allclose(n.mean(-1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(n.std(-1, unbiased=False), torch.ones(5), atol=1e-3)


def test_collator_shapes_and_masks_only_matched(batch, tiny):
    model, _ = tiny
    b, t = batch["input_ids"].shape
    assert batch["pixel_values"].shape == (b, 3, 80, 64) and batch["pixel_values"].dtype == torch.float32
    assert batch["mim_mask"].shape == (b, model.config.num_patches)
    mismatched = batch["itm_labels"] == 0
    assert mismatched.any() and (~mismatched).any()
    assert (batch["mlm_labels"][mismatched] == -100).all() and not batch["mim_mask"][mismatched].any()


def test_all_six_objectives_give_finite_scalar_losses_and_gradients(tiny, batch):
    model, _ = tiny
    model.train()
    out = model(**batch)
    assert set(out.losses) == set(OBJECTIVES)
    for name, loss in out.losses.items():
        assert loss.ndim == 0 and torch.isfinite(loss), name
    assert out.last_hidden_state.shape[:2] == (batch["input_ids"].shape[0],
                                               batch["input_ids"].shape[1] + model.config.num_patches)
    model.zero_grad()
    out.losses["gmim"].backward()
    assert model.gmim_head[0].weight.grad.abs().sum() > 0
    assert model.mim_head.weight.grad is None or model.mim_head.weight.grad.abs().sum() == 0
    model.eval()


@pytest.mark.parametrize("objective", ["gmlm", "gmim"])
def test_global_objectives_read_only_cls_through_forward(batch, objective):
    """GMLM/GMIM read the final [CLS] state, never the masked token's or patch's own state: through
    the model's own forward pass (only that objective on), the loss's gradient with respect to the
    encoder output is non-zero at [CLS] and exactly zero at every other position."""
    weights = {f"{k}_weight": float(k == objective) for k in OBJECTIVES}
    torch.manual_seed(0)
    model = ItemModel.from_bert(BERT, num_hidden_layers=1, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0, **weights)
    model.train()
    captured = {}
    encode = model.encode

    def capturing_encode(*args, **kwargs):
        hidden, patches, t_len = encode(*args, **kwargs)
        hidden.retain_grad()
        captured.setdefault("hidden", hidden)            # the first call is the joint pass
        return hidden, patches, t_len

    model.encode = capturing_encode
    out = model(**batch)
    assert set(out.losses) == {objective}
    out.loss.backward()
    grad = captured["hidden"].grad
    assert grad[:, 0].abs().sum() > 0
    assert grad[:, 1:].abs().sum() == 0


def test_objective_weight_zero_switches_it_off(batch):
    model = ItemModel.from_bert(BERT, num_hidden_layers=1, gmlm_weight=0.0, itm_weight=0.0)
    out = model(**batch)
    assert set(out.losses) == {"mlm", "mim", "gmim", "infonce"}
    expected = sum(out.losses.values())
    assert torch.allclose(out.loss, expected)


def test_non_unit_objective_weights_scale_each_loss(batch):
    """Weights other than 0 and 1: the model's loss and the training loop's loss (what is
    back-propagated and logged) are the weighted sum of the objectives, each by its own weight."""
    from item_model.distributed import DistributedContext
    from item_model.train import _global_loss
    weights = {"mlm_weight": 0.5, "mim_weight": 2.0, "gmlm_weight": 0.0, "gmim_weight": 0.25, "itm_weight": 1.5,
               "infonce_weight": 3.0}
    torch.manual_seed(0)
    model = ItemModel.from_bert(BERT, num_hidden_layers=1, **weights)
    out = model(**batch)
    assert set(out.losses) == {"mlm", "mim", "gmim", "itm", "infonce"}
    expected = sum(weights[f"{k}_weight"] * v for k, v in out.losses.items())
    assert torch.allclose(out.loss, expected) and not torch.allclose(out.loss, sum(out.losses.values()))
    loss, means = _global_loss(out.losses, model.config.objective_weights(), batch, DistributedContext())
    assert torch.allclose(loss, expected)
    assert means == pytest.approx({k: float(v) for k, v in out.losses.items()})


def test_save_load_round_trip_is_exact(tiny, tmp_path, listings):
    model, proc = tiny
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    again = ItemModel.from_pretrained(tmp_path)
    proc2 = ItemProcessor.from_pretrained(tmp_path)
    assert again.config.num_hidden_layers == 2 and again.config.patch_size == model.config.patch_size
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    images = [proc.image_array(r) for r in listings.iloc[:4].to_dict("records")]
    titles = listings["title"].iloc[:4].tolist()
    e1 = embed_listings(model, proc, titles, images)
    e2 = embed_listings(again, proc2, titles, images)
    np.testing.assert_allclose(e1, e2, atol=1e-6)


def test_embed_mixed_modalities_l2_normalised(tiny, listings):
    model, proc = tiny
    rows = listings.iloc[:6].to_dict("records")
    images = [proc.image_array(r) for r in rows]
    titles = [r["title"] for r in rows]
    titles[1] = None                          # image only
    images[2] = None                          # text only
    emb = embed_listings(model, proc, titles, images)
    assert emb.shape == (6, model.config.hidden_size) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    joint = embed_listings(model, proc, [rows[1]["title"]], [images[1 if images[1] is not None else 0]])
    assert not np.allclose(joint[0], emb[1])  # image-only differs from the joint embedding
    with pytest.raises(ValueError, match="neither 'title' nor 'image'"):
        embed_listings(model, proc, ["", "a"], [None, None])


def test_config_validates_patch_grid():
    with pytest.raises(ValueError, match="multiples of patch_size"):
        ItemConfig(image_height=80, image_width=60, patch_size=16)
    assert ItemConfig(patch_size=8).num_patches == 80


@pytest.mark.parametrize("readout_text_weight,text_pooling", [(0.0, "cls"), (4.0, "cls"), (4.0, "mean")])
def test_embed_kinds_in_one_call_equal_one_mode_at_a_time(tiny, listings, readout_text_weight, text_pooling):
    """The index steps and the evaluation embed all three kinds per batch with each encoder pass run
    once (``embed_catalog_modes``); every kind must equal what ``embed`` / ``embed_catalog`` serve."""
    from item_model.inference import embed_catalog, embed_catalog_modes
    model, proc = tiny
    model.config.readout_text_weight = readout_text_weight
    model.config.text_pooling = text_pooling
    try:
        df = listings.iloc[:20]
        together = embed_catalog_modes(model, proc, df, ("joint", "text", "image"), batch_size=8, progress=False)
        for mode in ("joint", "text", "image"):
            alone = embed_catalog(model, proc, df, mode, batch_size=8, progress=False)
            np.testing.assert_array_equal(together[mode], alone)
        if readout_text_weight:   # the served joint vector leans on the title stream
            assert (together["joint"] * together["text"]).sum(1).min() > 0.9
        else:
            assert not np.allclose(together["joint"], together["text"], atol=1e-3)
        with pytest.raises(ValueError, match="modes"):
            embed_catalog_modes(model, proc, df, ("audio",), progress=False)
    finally:
        model.config.readout_text_weight = 0.0
        model.config.text_pooling = "cls"


def test_mean_pooled_title_vector_leaves_out_cls_and_padding(tiny, listings):
    """text_pooling="mean": the title stream's vector is the mean of its final token states after
    [CLS] ([SEP] in, padding out), so a title padded inside a batch gets the vector it gets alone,
    and it differs from the [CLS] read-out; a bad value names the field."""
    model, proc = tiny
    titles = [t for t in listings["title"].tolist() if len(t.split()) >= 5][:3] + ["Shirt"]
    model.config.text_pooling = "mean"
    try:
        enc = proc.tokenize(titles)
        assert (enc["attention_mask"] == 0).any()              # the short title is padded
        with torch.no_grad():
            batch_vec = model.text_vector(enc["input_ids"], enc["attention_mask"])
            alone = proc.tokenize([titles[-1]])
            hidden = model.encode(alone["input_ids"], alone["attention_mask"])[0][0, 1:].float()
            by_hand = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
            assert torch.allclose(batch_vec[-1], by_hand, atol=1e-5)
            assert torch.allclose(model.embed(enc["input_ids"], enc["attention_mask"]), batch_vec)
            model.config.text_pooling = "cls"
            cls = model.text_vector(enc["input_ids"], enc["attention_mask"])
        assert batch_vec.shape == cls.shape == (4, model.config.hidden_size)
        assert torch.allclose(batch_vec.norm(dim=1), torch.ones(4), atol=1e-5)
        assert (batch_vec * cls).sum(1).max() < 0.999
    finally:
        model.config.text_pooling = "cls"
    with pytest.raises(ValueError, match="text_pooling='max'"):
        ItemConfig(text_pooling="max")
