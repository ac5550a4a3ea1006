"""The titles-disagree same-product check (item_model.titles_disagree): seller-style title rewrites
of the real same-product groups, the rewritten catalog, its metrics and description. Real catalog
slices (tests/conftest.py), read with the project's own reader; literal titles only for the
rewrite-rule unit tests."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from components import catalog as cat
from item_model.evaluation import concat_baseline, pixel_baseline
from item_model.title_decides import normalise_title
from item_model.titles_disagree import (METRIC_KEYS, abbreviate_brand, describe, rewrite_title,
                                        split_brand, titles_disagree_catalog, titles_disagree_metrics)
from tests.conftest import write_slice


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory) -> pd.DataFrame:
    """2,000 real listings of shard 0 plus every member of all 496 real same-product groups, read
    with :func:`components.catalog.read_catalog`."""
    folder = write_slice(tmp_path_factory.mktemp("titles_disagree"), n_plain=2000, n_groups=496)
    return cat.read_catalog(folder)


@pytest.fixture(scope="module")
def rewritten(real_slice) -> tuple[pd.DataFrame, np.ndarray]:
    return titles_disagree_catalog(real_slice)


def _words(title: str) -> list[str]:
    return title.lower().split()


def _tfidf(titles) -> np.ndarray:
    """L2-normalised TF-IDF of titles (1-2-grams, as the catalog README's reference row), dense float32."""
    x = TfidfVectorizer(ngram_range=(1, 2)).fit_transform([t if isinstance(t, str) else "" for t in titles])
    return x.astype(np.float32).toarray()


# ---- rewrite rules -------------------------------------------------------------------------------

def test_rewrite_rules_on_a_real_title():
    title = "Puma Men Black Sports Shoes"
    outs = [rewrite_title(title, v) for v in range(8)]
    assert outs == [rewrite_title(title, v) for v in range(8)]              # deterministic
    assert len(set(outs)) == 8 and title not in outs and all(o.strip() for o in outs)
    v0, v1, v2 = outs[0], outs[1], outs[2]
    # brand dropped (even variants) or abbreviated to its 3-letter code (odd variants)
    assert "puma" not in _words(v0) and "pum" not in _words(v0)
    assert "PUM" in v1.split() and "puma" not in _words(v1)
    # colour synonyms: black -> jet black (synonym 0) / charcoal (synonym 1)
    assert "Jet Black" in v0 and "Jet Black" in v1
    assert "Charcoal" in v2 and "black" not in _words(v2)
    # seller noise, and words reordered: the product noun first, gender moved to "for Men"
    assert v0.startswith("NEW ") and v1.endswith(" 100% Original") and v2.endswith(" Free Shipping")
    assert v0 == "NEW Shoes Men Jet Black Sports"
    assert "Shoes for Men" in v1
    assert rewrite_title(title, 8) != rewrite_title(title, 0) and "Lot 2" in rewrite_title(title, 8)


def test_brand_and_colour_phrases():
    assert split_brand("Gini and Jony Boys Washed Navy Blue Pants".split())[0] == ["Gini", "and", "Jony"]
    assert split_brand("Lucera Silver Pendant With Chain".split())[0] == ["Lucera"]   # no gender word
    assert split_brand("Doodle Boy's White Kidswear".split())[0] == ["Doodle"]
    assert split_brand("Men Black Shoes".split())[0] == [] and split_brand(["Shoes"])[0] == []
    assert abbreviate_brand(["Puma"]) == "PUM" and abbreviate_brand(["U.S.", "Polo", "Assn."]) == "USP"
    out = rewrite_title("Gini and Jony Boys Washed Navy Blue 3/4 Length Pants", 1)
    assert "GIN" in out.split() and "Midnight Blue" in out and "navy" not in _words(out)
    # the listing's colour attribute is swapped as one phrase even when the table lacks the phrase
    assert "Neon Green" in rewrite_title("Nike Men Lime Green Shirt", 0, colour="Lime Green")
    assert rewrite_title("Shoes", 0) == "NEW Shoes"                      # never empty, never the input
    for bad in (None, "", "   ", float("nan")):
        with pytest.raises(ValueError):
            rewrite_title(bad, 0)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            rewrite_title("Puma Men Black Sports Shoes", bad)


def test_every_real_group_title_rewrites_to_distinct_changed_titles(real_slice):
    members = real_slice[real_slice["group_id"].notna()]
    for title, colour in set(zip(members["title"], members["colour"].fillna(""))):
        outs = [rewrite_title(title, v, colour or None) for v in range(8)]
        assert outs == [rewrite_title(title, v, colour or None) for v in range(8)]
        assert len({normalise_title(o) for o in outs}) == 8
        assert normalise_title(title) not in {normalise_title(o) for o in outs}


# ---- the rewritten catalog -----------------------------------------------------------------------

def test_titles_disagree_catalog_on_the_real_slice(real_slice, rewritten):
    df = real_slice
    out, groups = rewritten
    canonical = df["group_id"].fillna(-1).astype("int64").to_numpy()
    assert groups.dtype == np.int64 and np.array_equal(groups, canonical)
    assert len(np.unique(groups[groups >= 0])) == 496 and int((groups >= 0).sum()) == 1100
    assert list(out.columns) == list(df.columns) and out.index.equals(df.index)
    member = groups >= 0
    # distractors untouched; no other column touched; the input frame not modified
    assert out.loc[~member, "title"].equals(df.loc[~member, "title"])
    for col in df.columns.drop("title"):
        assert out[col].equals(df[col]), col
    assert df.loc[member, "title"].groupby(groups[member]).nunique().eq(1).all()   # originals: one title a group
    # every member changed, members of one group pairwise different
    new = out["title"].map(normalise_title)
    assert (new[member] != df.loc[member, "title"].map(normalise_title)).all()
    assert new[member].groupby(groups[member]).nunique().eq(pd.Series(groups[member]).value_counts().sort_index()).all()
    # variant = 0-based rank inside the group by product_id (numeric ids)
    for g in np.unique(groups[member])[:40]:
        rows = np.flatnonzero(groups == g)
        rows = rows[np.argsort(df["product_id"].to_numpy()[rows].astype(np.int64))]
        for rank, i in enumerate(rows):
            colour = df["colour"].iloc[i]
            assert out["title"].iloc[i] == rewrite_title(df["title"].iloc[i], rank,
                                                         colour if isinstance(colour, str) else None)


def test_catalog_without_groups_and_with_a_missing_title(real_slice):
    plain = real_slice[real_slice["group_id"].isna()].head(50).reset_index(drop=True)
    out, groups = titles_disagree_catalog(plain)
    assert (groups == -1).all() and out["title"].equals(plain["title"])
    assert titles_disagree_metrics(np.eye(len(plain), dtype=np.float32), groups) == ({}, None)
    assert describe(plain, out)["n_groups"] == 0
    broken = real_slice.copy()
    broken.loc[np.flatnonzero(broken["group_id"].notna())[0], "title"] = None
    with pytest.raises(ValueError, match="no title"):
        titles_disagree_catalog(broken)
    with pytest.raises(KeyError):
        titles_disagree_catalog(real_slice.drop(columns=["group_id"]))


def test_describe(real_slice, rewritten):
    out, groups = rewritten
    info = describe(real_slice, out)
    assert info["n_groups"] == 496 and info["n_queries"] == 1100
    assert info["share_changed"] == 1.0 and info["mean_pairwise_jaccard_original"] == 1.0
    assert 0.0 < info["mean_jaccard_original_rewritten"] < 0.8
    assert 0.0 < info["mean_pairwise_jaccard_rewritten"] < 0.8
    assert len(info["examples"]) == 3
    for ex in info["examples"]:
        size = int((groups == ex["group_id"]).sum())
        assert len(ex["rewrites"]) == size == len(set(ex["rewrites"])) and ex["original"] not in ex["rewrites"]


# ---- metrics -------------------------------------------------------------------------------------

def test_perfect_embedding_scores_one(rewritten):
    _, groups = rewritten
    member = groups >= 0
    uniq = np.unique(groups[member])
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(groups), len(uniq) + 16)).astype(np.float32)
    emb[member] = 0.0
    emb[np.flatnonzero(member), np.searchsorted(uniq, groups[member])] = 1.0
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    metrics, details = titles_disagree_metrics(emb, groups)
    assert tuple(metrics) == METRIC_KEYS
    assert metrics["titles_disagree_recall@1"] == 1.0 and metrics["titles_disagree_mAP"] == 1.0
    assert metrics["titles_disagree_n_queries"] == 1100 and len(details["mAP"]) == 1100


def test_rewrites_hurt_a_title_model_not_a_photo_model(real_slice, rewritten):
    """TF-IDF of the titles loses Recall@1 on the rewritten catalog; raw pixels score exactly the same
    (the photos are untouched), and the concatenation lets the photo carry the match."""
    out, groups = rewritten
    original = titles_disagree_metrics(_tfidf(real_slice["title"]), groups)[0]
    disagree = titles_disagree_metrics(_tfidf(out["title"]), groups)[0]
    pixels = pixel_baseline(real_slice, progress=False)
    photo = titles_disagree_metrics(pixels, groups)[0]
    joint = titles_disagree_metrics(concat_baseline(_tfidf(out["title"]), pixels), groups)[0]
    print({"tfidf_original": original, "tfidf_rewritten": disagree, "pixels": photo, "tfidf_rewritten+pixels": joint})
    assert disagree["titles_disagree_recall@1"] < original["titles_disagree_recall@1"] - 0.2
    assert disagree["titles_disagree_mAP"] < original["titles_disagree_mAP"] - 0.2
    assert photo["titles_disagree_recall@1"] > disagree["titles_disagree_recall@1"] + 0.2
    assert joint["titles_disagree_recall@1"] > disagree["titles_disagree_recall@1"]


# ---- in the evaluate step, the gate and its report -----------------------------------------------

def test_evaluate_step_scores_every_model_on_the_rewritten_titles(packaged_model, tmp_path):
    """A real tiny model evaluated by the pipeline's own step: every model gets the titles-disagree
    keys; the photo-only rows score exactly their plain search (photos untouched), the title models
    drop, and the per-query details travel in eval_details."""
    from components.steps import training as steps
    from components.promotion.bootstrap import load_details

    result = steps.evaluate_step(packaged_model["catalog_dir"], packaged_model["model_dir"], str(tmp_path / "eval.json"),
                                 modality_ablation=True, progress=False, details_path=str(tmp_path / "details.npz"))
    models = result["models"]
    for name in ("item", "item_text_only", "item_image_only", "baseline_text_minilm", "baseline_image_pixels",
                 "baseline_concat"):
        assert set(METRIC_KEYS) <= set(models[name]), name
        assert models[name]["titles_disagree_n_queries"] == models[name]["n_queries"]
    for photo_only in ("item_image_only", "baseline_image_pixels"):
        assert models[photo_only]["titles_disagree_recall@1"] == models[photo_only]["recall@1"]
        assert models[photo_only]["titles_disagree_mAP"] == models[photo_only]["mAP"]
    minilm = models["baseline_text_minilm"]
    assert minilm["titles_disagree_recall@1"] < minilm["recall@1"] - 0.1
    details = load_details(tmp_path / "details.npz")
    assert len(details["item"]["titles_disagree"]["mAP"]) == models["item"]["titles_disagree_n_queries"]
    assert details["item"]["titles_disagree"]["recall@1"].mean() == pytest.approx(models["item"]["titles_disagree_recall@1"])


def test_titles_disagree_gate_rows_and_report():
    from components.promotion.gate import blessing_markdown, evaluate_gate
    from components.promotion.report import check_html

    ev = {"models": {"item": {"recall@10": 1.0, "titles_disagree_recall@1": 0.90, "titles_disagree_recall@10": 1.0,
                              "titles_disagree_mAP": 0.92, "titles_disagree_n_queries": 100},
                     "baseline_concat": {"titles_disagree_recall@1": 0.93},
                     "baseline_text_minilm": {"titles_disagree_recall@1": 0.40}}}
    cfg = {"floors": [{"metric": "item.recall@10", "min": 0.5}],
           "titles_disagree": {"max_drop_vs": "baseline_concat", "tolerance": 0.0}}
    b = evaluate_gate(ev, cfg)
    rows = [r for r in b["criteria"] if r["criterion"] == "titles-disagree"]
    assert [r["passed"] for r in rows] == [False, True] and b["blessed"] is False
    assert "below baseline_concat (0.9300)" in rows[0]["message"] and "(the title alone)" in rows[1]["reason"]
    assert evaluate_gate(ev, {**cfg, "titles_disagree": {"max_drop_vs": "baseline_concat", "tolerance": 0.05}})["blessed"]
    no_check = {"models": {"item": {"recall@10": 1.0}}}
    row = evaluate_gate(no_check, cfg)["criteria"][1]
    assert row["passed"] and "not measured" in row["message"]
    assert "## Titles-disagree same-product search" in blessing_markdown(b, eval_result=ev)
    assert "<td>item</td><td>0.9000</td>" in check_html(ev, "titles_disagree")
