"""Issue 12's pieces on real catalog slices: the product-vector InfoNCE (duplicates never negatives,
no NaN, gradient reaches [CLS]), modality dropout, LP-FT and the pre-training protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from components import catalog as cat
from item_model.modeling_item import ItemModel, infonce_loss
from item_model.processing_item import (ItemProcessor, ListingDataset, PretrainingCollator, default_bert_path,
                                        duplicate_photos, duplicate_titles, modality_rows)
from components.steps.training import training_rows
from item_model.title_decides import normalise_title
from item_model.train import (TrainConfig, backbone_lr_scale, cpu_has_native_bf16, pretrain, title_buckets,
                              title_clusters)
from tests.conftest import CATALOG

BERT = default_bert_path()
SMALL = dict(num_hidden_layers=2, image_height=40, image_width=32, patch_size=8,
             itm_weight=0.0, gmlm_weight=0.0, gmim_weight=0.0)


@pytest.fixture(scope="module")
def listings():
    return next(cat.iter_catalog(CATALOG, batch_rows=3000)).dropna(subset=["title"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def duplicate_batch(listings):
    """16 real listings: the first 4 share one real title (different photos), rows 4-7 are one real
    listing repeated (identical title and photo), the rest are other listings."""
    counts = listings["title"].value_counts()
    title = counts.index[0]
    assert counts.iloc[0] >= 4, "the slice must hold a title shared by 4 listings"
    same_title = listings[listings["title"] == title].iloc[:4]
    rest = listings[listings["title"] != title]
    rows = pd.concat([same_title, pd.concat([rest.iloc[[0]]] * 4), rest.iloc[1:9]], ignore_index=True)
    return rows


def make(**over):
    torch.manual_seed(0)
    model = ItemModel.from_bert(BERT, **{**SMALL, **over})
    return model, ItemProcessor(AutoTokenizer.from_pretrained(BERT), model.config)


def collate(proc, rows, seed=0):
    ds = ListingDataset(rows, proc)
    return PretrainingCollator(proc, seed=seed)([ds[i] for i in range(len(ds))])


def test_duplicate_matrices_on_real_rows(duplicate_batch):
    model, proc = make()
    images = [proc.image_array(r) for r in duplicate_batch.to_dict("records")]
    dt = duplicate_titles(duplicate_batch["title"].tolist())
    dp = duplicate_photos(images, 6.0)
    assert dt.shape == dp.shape == (16, 16) and dt.diagonal().all() and dp.diagonal().all()
    assert dt[:4, :4].all() and dt[4:8, 4:8].all() and not dt[0, 4]
    assert dp[4:8, 4:8].all()                                   # one listing repeated: identical photos
    assert not dp[8:, 8:].fill_diagonal_(False).all()
    assert duplicate_titles(["A  Red Shirt", "a red shirt ", None, ""]).tolist()[0][1]
    assert duplicate_titles([None, ""]).all()


def test_infonce_with_duplicates_is_finite_and_never_pushes_duplicates_apart(duplicate_batch):
    model, proc = make(modality_dropout=0.0)
    batch = collate(proc, duplicate_batch)
    model.train()
    out = model(**batch)
    loss = out.losses["infonce"]
    assert torch.isfinite(loss) and loss > 0
    text_logits, image_logits = out.infonce_logits["text"], out.infonce_logits["image"]
    assert text_logits.shape == image_logits.shape == (16, 16)
    # same title -> no text negative among rows 0-7 except itself; same photo -> no image negative among 4-7
    for i in range(8):
        group = range(0, 4) if i < 4 else range(4, 8)
        for j in group:
            assert (j == i) == bool(torch.isfinite(text_logits[i, j])), (i, j)
    for i in range(4, 8):
        for j in range(4, 8):
            assert (j == i) == bool(torch.isfinite(image_logits[i, j])), (i, j)
    assert torch.isfinite(text_logits.diagonal()).all() and torch.isfinite(image_logits.diagonal()).all()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_infonce_all_duplicates_gives_zero_loss_not_nan():
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    loss, logits = infonce_loss(q, q, torch.ones(4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool),
                                torch.tensor(20.0))
    assert float(loss) == 0.0 and torch.isinf(logits).sum() == 12
    loss, _ = infonce_loss(q, q, torch.zeros(4, dtype=torch.bool), torch.eye(4, dtype=torch.bool), torch.tensor(20.0))
    assert loss is None


@pytest.mark.parametrize("objective,reads_cls", [("mlm", False), ("mim", False), ("infonce", True),
                                                 ("gmlm", True), ("gmim", True), ("itm", True)])
def test_which_objectives_train_the_product_vector(listings, objective, reads_cls):
    """The product vector (final [CLS] state) gets gradient from every embedding objective, and from
    none under MLM + MIM alone (the former default's flaw)."""
    weights = {f"{k}_weight": float(k == objective) for k in ("mlm", "mim", "gmlm", "gmim", "itm", "infonce")}
    model, proc = make(**weights, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = collate(proc, listings.iloc[:16])
    model.train()
    captured = {}
    orig = model.encode

    def encode(*a, **k):
        hidden, patches, t = orig(*a, **k)
        if hidden.requires_grad and "h" not in captured:
            hidden.retain_grad()
            captured["h"] = hidden
        return hidden, patches, t
    model.encode = encode
    out = model(**batch)
    assert set(out.losses) == {objective}
    out.loss.backward()
    cls_grad = captured["h"].grad[:, 0].abs().sum()
    assert (cls_grad > 0) == reads_cls


def test_modality_dropout_rows_and_masks(listings):
    g = torch.Generator().manual_seed(0)
    t, i = modality_rows(10000, 0.4, g)
    assert not (t & i).any() and 0.18 < t.float().mean() < 0.22 and 0.18 < i.float().mean() < 0.22
    model, proc = make(modality_dropout=0.5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = collate(proc, listings.iloc[:32], seed=1)
    assert batch["text_only"].any() and batch["image_only"].any()
    assert (batch["mlm_labels"][batch["image_only"]] == -100).all()
    assert not batch["mim_mask"][batch["text_only"]].any()
    model.eval()
    with torch.no_grad():
        hidden, _, _ = model.encode(batch["clean_input_ids"], batch["attention_mask"], batch["pixel_values"],
                                    None, batch["text_only"], batch["image_only"])
        rows = batch["text_only"].nonzero(as_tuple=True)[0]
        alone, _, _ = model.encode(batch["clean_input_ids"][rows], batch["attention_mask"][rows])
    # a text-only row of the joint pass is exactly the title stream fed alone: the photo is not attended
    torch.testing.assert_close(hidden[rows, 0], alone[:, 0], atol=1e-4, rtol=1e-4)
    # an image-only row does not see its title: other title tokens, the same [CLS]
    r = int(batch["image_only"].nonzero()[0])
    ids = batch["clean_input_ids"].clone()
    words = batch["attention_mask"][r].bool().clone()
    words[0] = False
    words[int(batch["attention_mask"][r].sum()) - 1] = False
    ids[r, words] = 2000
    with torch.no_grad():
        again, _, _ = model.encode(ids, batch["attention_mask"], batch["pixel_values"], None,
                                   batch["text_only"], batch["image_only"])
    torch.testing.assert_close(again[r, 0], hidden[r, 0], atol=1e-5, rtol=1e-5)


def test_lp_ft_freezes_the_backbone_then_lowers_its_rate(listings):
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=2, freeze_backbone_steps=3, backbone_lr_ratio=0.25,
                      log_every=1, learning_rate=1e-3)
    assert backbone_lr_scale(0, cfg) == backbone_lr_scale(2, cfg) == 0.0
    assert backbone_lr_scale(3, cfg) == pytest.approx(0.125) and backbone_lr_scale(10, cfg) == 0.25
    model, proc = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = pretrain(model, proc, listings.iloc[:40], cfg, progress=False)
    after = model.state_dict()
    assert history[0]["step"] == 0 and history[0]["mlm"] > 5.0      # random MLM transform at step 0
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    bert = [k for k in after if k.startswith("bert.")]
    assert bert and all(torch.equal(before[k], after[k]) for k in bert)
    assert not torch.equal(before["patch_embedding.weight"], after["patch_embedding.weight"])
    assert not torch.equal(before["mlm_head.predictions.transform.dense.weight"],
                           after["mlm_head.predictions.transform.dense.weight"])


def test_bf16_autocast_auto_follows_the_cpu_flags_and_trains_finite(tmp_path, listings):
    """``bf16_autocast: auto`` (the profiles' setting) turns bf16 on only where the CPU has native bf16;
    a bad value is named; a bf16 run on real listings keeps fp32 weights and finite losses that fall."""
    native = tmp_path / "native"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    emulated = tmp_path / "emulated"
    emulated.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert cpu_has_native_bf16(str(native)) and not cpu_has_native_bf16(str(emulated))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    assert TrainConfig(bf16_autocast="auto").use_bf16_autocast("cuda")
    assert TrainConfig(bf16_autocast="auto").use_bf16_autocast("cpu") == cpu_has_native_bf16()
    assert not TrainConfig().use_bf16_autocast("cpu") and TrainConfig(bf16_autocast=True).use_bf16_autocast("cpu")
    with pytest.raises(ValueError, match="bf16_autocast"):
        TrainConfig(bf16_autocast="yes")
    model, proc = make(infonce_weight=1.0, modality_dropout=0.2)
    cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=1, log_every=1, learning_rate=1e-3, bf16_autocast=True)
    history = pretrain(model, proc, listings.iloc[:48], cfg, progress=False)
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["mlm"] < history[0]["mlm"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_pretraining_protocols(listings):
    df = listings.assign(split=np.where(np.arange(len(listings)) % 5 == 0, "test", "train"),
                         group_id=np.where(np.arange(len(listings)) % 7 == 0, 1.0, np.nan))
    all_train = training_rows(df)
    assert (all_train["split"] == "train").all() and len(all_train) == (df["split"] == "train").sum()
    no_groups = training_rows(df, "train_split_without_groups")
    assert no_groups["group_id"].isna().all() and len(no_groups) < len(all_train)
    with pytest.raises(ValueError, match="pretrain_listings"):
        training_rows(df, "everything")


def test_readout_text_weight_mixes_the_title_stream_into_the_served_vector(listings):
    model, proc = make(readout_text_weight=4.0)
    model.eval()
    rows = listings.iloc[:6]
    enc = proc.tokenize(rows["title"].tolist())
    px = proc.pixel_values([proc.image_array(r) for r in rows.to_dict("records")])
    served = model.embed(enc["input_ids"], enc["attention_mask"], px)
    text = model.embed(enc["input_ids"], enc["attention_mask"])
    with torch.no_grad():
        joint = torch.nn.functional.normalize(model.encode(enc["input_ids"], enc["attention_mask"], px)[0][:, 0], dim=-1)
    expected = torch.nn.functional.normalize(4.0 * text + joint, dim=-1)
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(served.norm(dim=-1), torch.ones(6), atol=1e-5, rtol=1e-5)
    model.config.readout_text_weight = 0.0                      # the former read-out: joint [CLS] alone
    torch.testing.assert_close(model.embed(enc["input_ids"], enc["attention_mask"], px), joint, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="readout_text_weight"):
        make(readout_text_weight=-1.0)


def test_train_config_readout_weights_are_numbers_at_least_zero():
    assert TrainConfig.from_dict({"readout_weights": [0, 4, 8.5]}).readout_weights == (0.0, 4.0, 8.5)
    assert TrainConfig().readout_weights == ()
    for bad in ([-1, 4], ["four"], 3):
        with pytest.raises(ValueError, match="readout_weights"):
            TrainConfig.from_dict({"readout_weights": bad})



def test_train_config_readout_checks_are_known_searches():
    assert TrainConfig().readout_checks == ("same_product", "title_decides")
    all3 = TrainConfig.from_dict({"readout_checks": ["same_product", "title_decides", "titles_disagree"]})
    assert all3.readout_checks == ("same_product", "title_decides", "titles_disagree")
    for bad in ([], ["same_product", "colour"]):
        with pytest.raises(ValueError, match="readout_checks"):
            TrainConfig.from_dict({"readout_checks": bad})

def test_title_clusters_share_a_title_and_are_reproducible(listings):
    """Same-title clusters (``train_config.title_batches``) on real listings: every cluster is one
    shared title, drawn without replacement inside it, the same for the same seed."""
    titles = listings["title"].tolist() + [None, None]              # missing titles never cluster
    buckets = title_buckets(titles)
    assert buckets and all(len(b) >= 2 for b in buckets)
    assert all(len({normalise_title(titles[i]) for i in b}) == 1 for b in buckets)
    assert len(titles) - 1 not in np.concatenate(buckets)
    rows = title_clusters(buckets, 32, 4, np.random.default_rng(0))
    assert len(rows) == 32 and rows == title_clusters(buckets, 32, 4, np.random.default_rng(0))
    owner = {int(i): k for k, b in enumerate(buckets) for i in b}
    start = 0
    while start < len(rows):                                        # contiguous clusters of one title each
        k = owner[rows[start]]
        end = start + min(4, len(buckets[k]), len(rows) - start)
        assert {owner[i] for i in rows[start:end]} == {k} and len(set(rows[start:end])) == end - start
        start = end
    assert title_clusters([], 8, 4, np.random.default_rng(0)) == []
    assert title_clusters(buckets, 0, 4, np.random.default_rng(0)) == []
    for bad in ({"title_batches": 1.5}, {"title_cluster_size": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig.from_dict(bad)


def test_title_batches_train_finite_and_resume_exactly(tmp_path, listings):
    """Half of each batch from same-title clusters (identical titles in one batch): InfoNCE stays
    finite, and a run resumed from its step-2 checkpoint ends as the uninterrupted one (the
    clusters' generator is checkpointed)."""
    rows = listings.iloc[:300]
    assert title_buckets(rows["title"].tolist()), "the slice must hold shared titles"
    cfg = dict(steps=4, batch_size=8, warmup_steps=1, log_every=1, learning_rate=1e-3, title_batches=0.5,
               checkpoint_every=2)
    model, proc = make(infonce_weight=1.0, modality_dropout=0.2)
    ref = pretrain(model, proc, rows, TrainConfig(**cfg), progress=False, checkpoint_dir=tmp_path / "a")
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["infonce"]) for h in ref)
    model, proc = make(infonce_weight=1.0, modality_dropout=0.2)      # a fresh model from the step-2 checkpoint
    resumed = pretrain(model, proc, rows, TrainConfig(**cfg), progress=False, checkpoint_dir=tmp_path / "a",
                       resume=True)
    assert [h["step"] for h in resumed] == [h["step"] for h in ref]
    for a, b in zip(ref, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
