"""Issue 12, items 3-5: the title-decides same-product check, the modality balance of the served
vector, the probe's regularisation chosen on the validation split, and the gate's title_decides
criterion. Real catalog slices (tests/conftest.py), read with the project's own readers."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from components import catalog as cat
from item_model.evaluation import modality_balance, pixel_baseline, score_embeddings, title_decides_metrics
from components.promotion.gate import GateConfigError, balance_reading, blessing_markdown, evaluate_gate, load_gate_config
from item_model.metrics import PROBE_CS, PROBE_FALLBACK_C, probe_details
from item_model.title_decides import describe_groups, normalise_title, title_decides_groups
from pipelines.config import GATE_FILE
from tests.conftest import write_slice


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory) -> pd.DataFrame:
    """3,000 real listings of shard 0 plus the members of 100 real same-product groups, read with
    :func:`components.catalog.read_catalog`, with the project's hash split."""
    folder = write_slice(tmp_path_factory.mktemp("checks"), n_plain=3000, n_groups=100)
    df = cat.read_catalog(folder)
    df["split"] = cat.assign_split(df["product_id"].tolist())
    return df


def _independent_groups(df: pd.DataFrame, lo: int = 2, hi: int = 6) -> dict[str, set[int]]:
    """Normalised title -> row positions, computed here without the module under test."""
    by_title: dict[str, list[int]] = {}
    for i, t in enumerate(df["title"]):
        if isinstance(t, str) and t.strip():
            by_title.setdefault(" ".join(t.lower().split()), []).append(i)
    real = df["group_id"].notna().to_numpy()
    cats = df["category"].to_numpy(dtype=object)
    return {t: set(rows) for t, rows in by_title.items()
            if lo <= len(rows) <= hi and len(set(cats[rows])) == 1 and not real[rows].any()}


def _as_sets(groups: np.ndarray) -> list[set[int]]:
    return [set(np.flatnonzero(groups == g).tolist()) for g in np.unique(groups[groups >= 0])]


def test_normalise_title():
    assert normalise_title("  Lucera  Women\tSilver EARRINGS ") == "lucera women silver earrings"
    assert normalise_title(None) is None and normalise_title(float("nan")) is None and normalise_title("  ") is None


def test_title_decides_groups_on_a_real_slice(real_slice):
    df = real_slice
    groups = title_decides_groups(df)
    assert groups.shape == (len(df),) and groups.dtype == np.int64
    sets = _as_sets(groups)
    assert len(sets) >= 20                                         # the slice holds real such titles
    titles = df["title"].map(normalise_title).to_numpy(dtype=object)
    cats = df["category"].to_numpy(dtype=object)
    real = df["group_id"].notna().to_numpy()
    for rows in sets:
        rows = sorted(rows)
        assert len(set(titles[rows])) == 1 and len(set(cats[rows])) == 1
        assert 2 <= len(rows) <= 6 and not real[rows].any()
        # every listing of the catalog with that title is in the group
        assert set(np.flatnonzero(titles == titles[rows[0]]).tolist()) == set(rows)
    assert sorted(map(sorted, sets)) == sorted(map(sorted, _independent_groups(df).values()))
    info = describe_groups(groups)
    assert info["n_groups"] == len(sets) and info["n_queries"] == int((groups >= 0).sum())
    # real same-product groups (identical title and photo) share titles with nothing that qualifies
    real_titles = set(titles[real])
    assert real_titles and not real_titles & set(titles[groups >= 0])


def test_title_spanning_two_categories_is_excluded(real_slice):
    groups = title_decides_groups(real_slice)
    rows = np.flatnonzero(groups == groups[groups >= 0][0])
    edited = real_slice.copy()
    other = next(c for c in edited["category"].unique() if c != edited.at[rows[0], "category"])
    edited.loc[rows[-1], "category"] = other                       # one listing of the title re-categorised
    after = title_decides_groups(edited)
    assert (after[rows] == -1).all()
    assert len(_as_sets(after)) == len(_as_sets(groups)) - 1      # nothing else changes


def test_size_bounds_are_parameters(real_slice):
    default = _as_sets(title_decides_groups(real_slice))
    small = _as_sets(title_decides_groups(real_slice, max_size=3))
    assert sorted(map(sorted, small)) == sorted(sorted(s) for s in default if len(s) <= 3)
    assert any(len(s) > 3 for s in default)
    wide = _as_sets(title_decides_groups(real_slice, max_size=50))
    assert sorted(map(sorted, wide)) == sorted(map(sorted, _independent_groups(real_slice, 2, 50).values()))
    with pytest.raises(ValueError, match="min_size"):
        title_decides_groups(real_slice, min_size=1)


def test_reference_catalog_decides_qualification(real_slice):
    """On a sample, titles qualify on the catalog it was drawn from: a title with 2 listings in the
    sample but 8 in the reference is dropped."""
    groups = title_decides_groups(real_slice)
    rows = np.flatnonzero(groups == groups[groups >= 0][0])
    reference = pd.concat([real_slice] + [real_slice.iloc[rows[:1]]] * 7, ignore_index=True)
    with_ref = title_decides_groups(real_slice, reference=reference)
    assert (with_ref[rows] == -1).all()
    assert len(_as_sets(with_ref)) == len(_as_sets(groups)) - 1
    assert sorted(map(sorted, _as_sets(title_decides_groups(real_slice, reference=real_slice)))) == \
        sorted(map(sorted, _as_sets(groups)))


def _title_onehot(df: pd.DataFrame) -> np.ndarray:
    """A perfect "title" embedding: one unit vector per normalised title."""
    codes = pd.factorize(df["title"].map(normalise_title).fillna("missing title " + df["product_id"]))[0]
    out = np.zeros((len(df), codes.max() + 1), dtype=np.float32)
    out[np.arange(len(df)), codes] = 1.0
    return out


def test_title_decides_search_rewards_the_title_not_the_photo(real_slice):
    groups = title_decides_groups(real_slice)
    title_metrics, _ = title_decides_metrics(_title_onehot(real_slice), groups)
    assert title_metrics["title_decides_recall@1"] == 1.0 == title_metrics["title_decides_mAP"]
    assert title_metrics["title_decides_n_queries"] == int((groups >= 0).sum())
    photo_metrics, _ = title_decides_metrics(pixel_baseline(real_slice, progress=False), groups)
    assert photo_metrics["title_decides_recall@1"] < 0.9
    assert title_decides_metrics(_title_onehot(real_slice), np.full(len(real_slice), -1)) == ({}, None)


def test_score_embeddings_adds_or_skips_the_title_decides_keys(real_slice):
    df = real_slice.iloc[:1200].reset_index(drop=True)
    df = pd.concat([df, real_slice[real_slice["group_id"].notna()]]).drop_duplicates("product_id")
    df = df.reset_index(drop=True)
    emb = pixel_baseline(df, side=8, progress=False)
    metrics, _ = score_embeddings(emb, df, df["split"].to_numpy())
    assert metrics["title_decides_n_queries"] == int((title_decides_groups(df) >= 0).sum()) > 0
    assert {"title_decides_recall@1", "title_decides_recall@10", "title_decides_mAP", "probe_C"} <= set(metrics)
    # drop every listing of a qualifying title: no title qualifies any more, the keys are absent
    rest = df[title_decides_groups(df) < 0].reset_index(drop=True)
    assert (title_decides_groups(rest) < 0).all()
    metrics, _ = score_embeddings(emb[title_decides_groups(df) < 0], rest, rest["split"].to_numpy())
    assert not any(k.startswith("title_decides") for k in metrics) and "recall@1" in metrics


def test_modality_balance_equal_scrambled_and_tied(real_slice):
    px = pixel_baseline(real_slice, progress=False)
    same = modality_balance(px, px, px)
    assert same["balance_text_overlap@10"] == 1.0 == same["balance_image_overlap@10"]
    assert same["balance_n_queries"] == 2000
    perm = np.random.default_rng(0).permutation(len(px))
    scrambled = modality_balance(px, px[perm], px)
    assert scrambled["balance_text_overlap@10"] < 0.05 and scrambled["balance_image_overlap@10"] == 1.0
    # identical titles -> identical text vectors: ties count as shared neighbours
    part = real_slice.iloc[:1500].reset_index(drop=True)
    text, px = _title_onehot(part), px[:1500]
    joint = np.concatenate([text, 0.05 * px], axis=1)
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    tied = modality_balance(joint, text, px)
    assert tied["balance_text_overlap@10"] == 1.0 > tied["balance_image_overlap@10"]
    # the query sample is fixed by the seed and capped by the catalog size
    assert modality_balance(joint, text, px, n_queries=10**6)["balance_n_queries"] == len(px)
    assert modality_balance(joint, text, px) == tied
    with pytest.raises(ValueError, match="more than k"):
        modality_balance(px[:5], px[:5], px[:5])


def test_balance_reading():
    assert balance_reading(0.1, 0.8).startswith("follows the photo")
    assert balance_reading(0.8, 0.1).startswith("follows the title")
    assert balance_reading(0.5, 0.45).startswith("uses both")
    assert balance_reading(0.05, 0.1).startswith("follows neither")


def _probe_inputs(real_slice):
    x = pixel_baseline(real_slice, side=8, progress=False)
    y = real_slice["category"].to_numpy(dtype=object)
    split = real_slice["split"].to_numpy()
    return {s: (x[split == s], y[split == s]) for s in ("train", "validation", "test")}


def test_probe_chooses_C_on_validation_rows_only(real_slice):
    d = _probe_inputs(real_slice)
    (xtr, ytr), (xva, yva), (xte, yte) = d["train"], d["validation"], d["test"]
    first = probe_details(xtr, ytr, xte, yte, x_val=xva, y_val=yva)
    grid = sorted(PROBE_CS)
    tried = list(first["validation_accuracy"])                       # ascending, stops past the peak
    assert first["C"] in tried and tried == grid[:len(tried)]
    assert first["validation_accuracy"][first["C"]] == max(first["validation_accuracy"].values())
    assert len(tried) == len(grid) or first["validation_accuracy"][tried[-1]] < first["validation_accuracy"][first["C"]]
    # other test labels (shuffled among the test rows): the same choice and validation scores
    shuffled = probe_details(xtr, ytr, xte, np.random.default_rng(1).permutation(yte), x_val=xva, y_val=yva)
    assert shuffled["C"] == first["C"] and shuffled["validation_accuracy"] == first["validation_accuracy"]
    # other validation labels: other validation scores
    other = probe_details(xtr, ytr, xte, yte, x_val=xva, y_val=np.random.default_rng(2).permutation(yva))
    assert other["validation_accuracy"] != first["validation_accuracy"]


def test_probe_falls_back_to_C1_without_usable_validation_rows(real_slice, caplog):
    d = _probe_inputs(real_slice)
    (xtr, ytr), (xva, yva), (xte, yte) = d["train"], d["validation"], d["test"]
    with caplog.at_level(logging.INFO, logger="item_model.metrics"):
        none = probe_details(xtr, ytr, xte, yte)
        unseen = probe_details(xtr, ytr, xte, yte, x_val=xva, y_val=np.array(["no such class"] * len(yva)))
    assert none["C"] == unseen["C"] == PROBE_FALLBACK_C and none["validation_accuracy"] == {}
    assert sum("no usable validation rows" in r.getMessage() for r in caplog.records) == 2


def test_probe_convergence_warnings_are_silenced_and_logged_once(real_slice, caplog):
    from sklearn.exceptions import ConvergenceWarning
    d = _probe_inputs(real_slice)
    (xtr, ytr), (xva, yva), (xte, yte) = d["train"], d["validation"], d["test"]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="item_model.metrics"):
        warnings.simplefilter("always")
        out = probe_details(xtr, ytr, xte, yte, max_iter=3, x_val=xva, y_val=yva)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert out["converged"] is False
    assert sum("without converging" in r.getMessage() for r in caplog.records) == 1


def test_score_embeddings_records_probe_C_chosen_on_validation(real_slice):
    df = real_slice
    emb = pixel_baseline(df, side=8, progress=False)
    split = df["split"].to_numpy()
    metrics, details = score_embeddings(emb, df, split)
    y = df["category"].to_numpy(dtype=object)
    expect = probe_details(emb[split == "train"], y[split == "train"], emb[split == "test"], y[split == "test"],
                           x_val=emb[split == "validation"], y_val=y[split == "validation"])
    assert metrics["probe_C"] == expect["C"]
    assert set(details["probe"]) == {"test_index", "y_true", "y_pred"}     # eval_details.npz unchanged


# ---- the gate's title_decides criterion -----------------------------------------------------------

TD = {"max_drop_vs": "baseline_text_minilm", "tolerance": 0.01, "reason": "title must decide"}


def _eval(item: float | None, text: float | None = 0.95, pixels: float | None = 0.40) -> dict:
    models = {"item": {"recall@1": 0.9}, "baseline_text_minilm": {}, "baseline_image_pixels": {}}
    for name, v in (("item", item), ("baseline_text_minilm", text), ("baseline_image_pixels", pixels)):
        if v is not None:
            models[name]["title_decides_recall@1"] = v
    return {"models": models}


def _gate(eval_result: dict, td: dict = TD) -> dict:
    return evaluate_gate(eval_result, {"criteria": [{"metric": "item.recall@1", "min": 0.0}], "title_decides": td})


def test_title_decides_criterion_passes_within_tolerance_and_above_pixels():
    b = _gate(_eval(0.945))
    rows = [r for r in b["criteria"] if r["criterion"] == "title-decides"]
    assert b["blessed"] and len(rows) == 2 and all(r["passed"] for r in rows)
    assert rows[0]["threshold"] == pytest.approx(0.94) and rows[1]["threshold"] == 0.40


def test_title_decides_criterion_blocks_a_drop_beyond_tolerance():
    b = _gate(_eval(0.93))
    assert not b["blessed"]
    row = next(r for r in b["criteria"] if r["criterion"] == "title-decides" and not r["passed"])
    assert "below baseline_text_minilm" in row["message"] and row["threshold"] == pytest.approx(0.94)


def test_title_decides_criterion_blocks_at_or_below_the_photo_baseline():
    b = _gate(_eval(0.40, text=0.40, pixels=0.40))              # within tolerance of text, not above pixels
    failed = [r for r in b["criteria"] if not r["passed"]]
    assert not b["blessed"] and len(failed) == 1 and "does not exceed baseline_image_pixels" in failed[0]["message"]
    assert _gate(_eval(0.40, text=0.40, pixels=0.40), {**TD, "must_beat": None})["blessed"]


def test_title_decides_criterion_passes_with_a_note_when_absent():
    b = _gate(_eval(None))
    row = next(r for r in b["criteria"] if r["criterion"] == "title-decides")
    assert b["blessed"] and row["value"] is None and "not measured" in row["message"]
    b = _gate(_eval(0.9, text=None))
    assert b["blessed"] and any("baseline_text_minilm.title_decides_recall@1 not measured" in r["message"]
                                for r in b["criteria"])


@pytest.mark.parametrize("td, match", [({"tolerance": 0.01}, "max_drop_vs"),
                                       ({**TD, "tolerance": -1}, "tolerance"),
                                       ({**TD, "margin": 1}, "unknown field"), ("x", "mapping")])
def test_title_decides_config_errors(td, match):
    with pytest.raises(GateConfigError, match=match):
        _gate(_eval(0.9), td)


def test_default_gate_has_the_title_decides_criterion_with_a_reason():
    cfg = load_gate_config(GATE_FILE)
    assert cfg["title_decides"]["max_drop_vs"] == "baseline_text_minilm"
    assert cfg["title_decides"]["tolerance"] == 0.01 and cfg["title_decides"]["reason"]


def test_reports_show_modality_balance_and_title_decides(tmp_path):
    from components.promotion.report import render_gate_report
    from components.steps.training import gate_step
    from pipelines.cli.tables import check_lines

    result = _eval(0.5)
    result["models"]["item"].update({"balance_text_overlap@10": 0.12, "balance_image_overlap@10": 0.71,
                                     "balance_n_queries": 2000, "title_decides_recall@10": 0.8,
                                     "title_decides_mAP": 0.6, "title_decides_n_queries": 120})
    for name in ("baseline_text_minilm", "baseline_image_pixels"):
        result["models"][name].update({"title_decides_recall@10": 0.9, "title_decides_mAP": 0.7,
                                       "title_decides_n_queries": 120})
    (tmp_path / "eval.json").write_text(json.dumps(result))
    blessing = gate_step(str(tmp_path / "eval.json"), {"criteria": [{"metric": "item.recall@1", "min": 0.0}],
                                                       "title_decides": TD},
                         str(tmp_path / "blessing.json"), str(tmp_path / "report.md"))
    md = (tmp_path / "report.md").read_text()
    assert "## Modality balance" in md and "follows the photo" in md and "0.710" in md
    assert "## Title-decides same-product search" in md and "| baseline_image_pixels | 0.4000 |" in md
    assert "NOT BLESSED" in md and "title-decides" in md
    page = render_gate_report(blessing, result, None, None)
    assert "Modality balance" in page and "follows the photo" in page and "Title-decides" in page
    lines = check_lines(result["models"])
    assert len(lines) == 2 and all(len(line) < 100 for line in lines) and "follows the photo" in lines[0]
    plain = blessing_markdown(blessing, eval_result={"models": {"item": {"recall@1": 0.9}}})
    assert "Modality balance" not in plain and "Title-decides" not in plain
    assert "Not measured" in render_gate_report(blessing, {"models": {"item": {}}}, None, None)


def test_reports_say_how_the_served_vector_is_read_out(tmp_path):
    from components.promotion.gate import readout_line
    from components.promotion.report import render_gate_report
    from components.steps.training import gate_step

    sel = {"chosen": 8.0, "score": {"0.0": 0.7871, "8.0": 1.0}, "n_listings": 6357, "n_queries": 189,
           "title_decides_n_queries": 2938}
    result = _eval(0.5)
    for metrics in result["models"].values():     # this report without the title-decides table
        for key in [k for k in metrics if k.startswith("title_decides")]:
            metrics.pop(key)
    result["checks"] = {"readout": {"readout_text_weight": 8.0, "selection": sel}}
    (tmp_path / "eval.json").write_text(json.dumps(result))
    blessing = gate_step(str(tmp_path / "eval.json"), {"criteria": [{"metric": "item.recall@1", "min": 0.0}]},
                         str(tmp_path / "blessing.json"), str(tmp_path / "report.md"))
    line = "normalize(8 t + j)"
    assert line in (tmp_path / "report.md").read_text() and "0: 0.7871" in (tmp_path / "report.md").read_text()
    assert line in render_gate_report(blessing, result, None, None)
    configured = {"checks": {"readout": {"readout_text_weight": 0.0, "selection": None}}}
    assert "joint [CLS] j alone" in readout_line(configured) and "as configured" in readout_line(configured)
    none = {"checks": {"readout": {"readout_text_weight": 4.0, "selection": {**sel, "chosen": None}}}}
    assert "no validation query" in readout_line(none)
    assert "t the title stream's [CLS]" in readout_line(none)
    mean = {"checks": {"readout": {"readout_text_weight": 10.0, "text_pooling": "mean", "selection": sel}}}
    three = {**sel, "checks": ["same_product", "title_decides", "titles_disagree"], "titles_disagree_n_queries": 77}
    cnn = {"checks": {"readout": {"readout_text_weight": 2.0, "selection": three, "inference_precision": "bf16",
                                  "image_tokens": "efficientnet_lite0+pixels",
                                  "precision_check": {"kept": True, "reason": "bf16 vectors within tolerance"}}}}
    line = readout_line(cnn)
    assert "77 titles-disagree queries" in line and "EfficientNet-Lite0 cells with their pixels" in line
    assert "computed in bf16 (bf16 vectors within tolerance)" in line
    fell_back = {"checks": {"readout": {"readout_text_weight": 2.0, "selection": sel, "inference_precision": "fp32",
                                       "precision_check": {"kept": False, "reason": "bf16 vectors drift"}}}}
    assert "computed in fp32: bf16 vectors drift" in readout_line(fell_back)
    assert "titles-disagree" not in readout_line(fell_back) and "computed in" not in readout_line(mean)
    assert "normalize(10 t + j), t the mean of the title stream's token states" in readout_line(mean)
    assert readout_line({"models": {}}) is None


def test_balance_reading_sees_the_weaker_modality_deciding_within():
    from components.promotion.gate import modality_gains
    ev = {"models": {"item": {"recall@1": 0.98, "title_decides_recall@1": 0.99},
                     "item_text_only": {"recall@1": 0.70}, "item_image_only": {"title_decides_recall@1": 0.08}}}
    gains = modality_gains(ev)
    assert gains["photo"] == pytest.approx(0.28) and gains["title"] == pytest.approx(0.91)
    assert balance_reading(0.9, 0.07, gains).startswith("follows the title's neighbourhood, and the photo orders")
    assert balance_reading(0.9, 0.07, {"photo": 0.01}).startswith("follows the title: ")
    assert balance_reading(0.07, 0.9, gains).startswith("follows the photo's neighbourhood, and the title orders")
    assert modality_gains({"models": {}}) == {}


def test_same_product_search_through_the_hnsw_index_matches_exact_search(real_slice):
    """ann_search_metrics on real raw-pixel embeddings of 3,000+ listings with 100 real same-product
    groups, through the index serving uses (HNSW-SQ8, candidates re-ranked from float16 vectors):
    Recall@10 as exact search's; float16 re-scoring may reorder a few near-tied first places."""
    from components.index.backends import ann_search_metrics
    from item_model.metrics import retrieval_metrics

    emb = pixel_baseline(real_slice, progress=False)
    groups = real_slice["group_id"].fillna(-1).astype("int64").to_numpy()
    exact = retrieval_metrics(emb, groups)
    ann = ann_search_metrics(emb, groups)
    assert ann["ann_n_queries"] == exact["n_queries"] > 200
    assert exact["recall@1"] - 0.03 <= ann["ann_recall@1"] <= exact["recall@1"] + 0.005
    assert abs(ann["ann_recall@10"] - exact["recall@10"]) <= 0.005
    assert 0.5 < ann["ann_recall@10"] <= 1.0                               # the photos do find same products
    with pytest.raises(ValueError, match="group_id"):
        ann_search_metrics(emb, np.full(len(emb), -1))


# ----------------------------------------------------------------------------- read-out weight on validation
def _title_and_photo(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A perfect title embedding t and a photo embedding j (raw pixels) of the same rows, padded to one
    width (t = [title one-hot, 0], j = [0, pixels]), so that w t + j weighs the title against the photo."""
    title, photo = _title_onehot(df), pixel_baseline(df, progress=False)
    t = np.concatenate([title, np.zeros((len(df), photo.shape[1]), np.float32)], axis=1)
    j = np.concatenate([np.zeros((len(df), title.shape[1]), np.float32), photo], axis=1)
    return t, j


def test_readout_weight_is_chosen_on_the_validation_rows_by_both_searches(real_slice):
    from item_model.evaluation import paired_groups, readout_selection_rows, readout_weight_scores
    from item_model.metrics import retrieval_details

    val = readout_selection_rows(real_slice)
    assert "test" not in set(val["split"]) and (val["split"] == "validation").sum() == (
        real_slice["split"] == "validation").sum()
    # a train row is there only as the same-product or title partner of a validation row
    v, tr = val[val["split"] == "validation"], val[val["split"] == "train"]
    assert len(tr) and all(g in set(v["group_id"].dropna()) or normalise_title(t) in set(v["title"].map(normalise_title))
                           for g, t in zip(tr["group_id"], tr["title"]))
    t, j = _title_and_photo(val)
    rec = readout_weight_scores(j, t, val, (0, 1, 8), reference=real_slice)
    same = paired_groups(val["group_id"].fillna(-1).astype("int64").to_numpy())
    titled = title_decides_groups(val, reference=real_slice)
    assert rec["n_listings"] == len(val) and rec["n_queries"] == int((same >= 0).sum()) > 0
    assert rec["title_decides_n_queries"] == int((titled >= 0).sum()) > 0
    # every group kept has two members among the validation rows (a lone one could not be a query)
    assert all((same == g).sum() >= 2 for g in np.unique(same[same >= 0]))
    # the photo alone (w = 0) cannot tell identically titled listings apart; a large w can
    assert rec["title_decides_recall@1"]["0.0"] < 0.9 and rec["title_decides_recall@1"]["8.0"] == 1.0
    for w in ("0.0", "1.0", "8.0"):            # each score: the mean of the two Recall@1, each recomputed here
        served = (float(w) * t + j) / np.linalg.norm(float(w) * t + j, axis=1, keepdims=True)
        r1 = retrieval_details(served, same)["recall@1"].mean()
        assert rec["recall@1"][w] == pytest.approx(r1)
        assert rec["score"][w] == pytest.approx((r1 + rec["title_decides_recall@1"][w]) / 2)
    best = max(rec["score"].values())
    assert rec["score"][str(float(rec["chosen"]))] == best
    assert all(s < best for w, s in rec["score"].items() if float(w) > rec["chosen"])   # ties go to the larger w


def test_readout_weight_ties_go_to_the_larger_weight_and_no_query_keeps_none(real_slice):
    from item_model.evaluation import readout_weight_scores

    val = real_slice[real_slice["split"] == "validation"].reset_index(drop=True)
    t, _ = _title_and_photo(val)
    rec = readout_weight_scores(t, t, val, (8, 2, 4), reference=real_slice)   # j = t: every w serves t
    assert len(set(rec["score"].values())) == 1 and rec["chosen"] == 8.0
    lone = val.drop_duplicates("title").reset_index(drop=True)
    lone["group_id"] = pd.array([pd.NA] * len(lone), dtype="Int64")      # no group, unique titles
    t1, j1 = _title_and_photo(lone)
    none = readout_weight_scores(j1, t1, lone, (0, 8))
    assert none["chosen"] is None and none["n_queries"] == 0 == none["title_decides_n_queries"]
    with pytest.raises(ValueError, match="readout_weights"):
        readout_weight_scores(j1, t1, lone, (-1.0, 8))
    with pytest.raises(ValueError, match="readout_weights"):
        readout_weight_scores(j1, t1, lone, ())
    with pytest.raises(ValueError, match="len\\(df\\)"):
        readout_weight_scores(j1[:-1], t1[:-1], lone, (0,))


def test_pretrain_step_saves_the_weight_chosen_on_validation_in_the_model(packaged_model, tmp_path):
    """A real (2-step) pre-training on the validated slice (title read out by mean pooling): the chosen
    w is the model's own ``readout_text_weight`` after ``from_pretrained``, training.json keeps the
    validation scores, and eval.json's read-out record says both."""
    import torch

    from item_model.inference import embed_catalog_modes
    from components.steps import training as steps
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    from tests.conftest import TINY_MODEL

    out = tmp_path / "model"
    summary = steps.pretrain_step(packaged_model["catalog_dir"], str(out), {**TINY_MODEL, "text_pooling": "mean"},
                                  {"steps": 2, "batch_size": 8, "warmup_steps": 1, "readout_weights": [0, 3, 8]},
                                  progress=False)
    rec = summary["readout_selection"]
    df, _ = steps.load_validated(packaged_model["catalog_dir"])
    from item_model.evaluation import readout_selection_rows
    assert rec["n_listings"] == len(readout_selection_rows(df)) >= int((df["split"] == "validation").sum())
    assert rec["configured"] == 0.0
    assert rec["n_queries"] + rec["title_decides_n_queries"] > 0 and rec["chosen"] in (0.0, 3.0, 8.0)
    assert json.loads((out / "training.json").read_text())["readout_selection"]["chosen"] == rec["chosen"]
    model = ItemModel.from_pretrained(out)
    assert model.config.readout_text_weight == rec["chosen"] and model.config.text_pooling == "mean"
    assert steps.readout_record(str(out)) == {"readout_text_weight": rec["chosen"], "text_pooling": "mean",
                                              "selection": json.loads((out / "training.json").read_text())[
                                                  "readout_selection"],
                                              "image_tokens": "patches", "inference_precision": "fp32",
                                              "precision_check": None}
    rows = df[df["split"] == "validation"].head(6).reset_index(drop=True)
    kinds = embed_catalog_modes(model, ItemProcessor.from_pretrained(out), rows, ("joint", "text"), progress=False)
    model.config.readout_text_weight = 0.0
    j = embed_catalog_modes(model, ItemProcessor.from_pretrained(out), rows, ("joint",), progress=False)["joint"]
    w = rec["chosen"]
    expect = torch.nn.functional.normalize(torch.from_numpy(w * kinds["text"] + j), dim=-1).numpy()
    np.testing.assert_allclose(kinds["joint"], expect, atol=1e-5)


def test_headroom_rule_ranks_the_same_title_first_then_the_nearest_photo(real_slice):
    """benchmarks/headroom.py's reference rule, as an embedding, scores 2 [same title] + photo cosine
    for every query against every gallery row; its Recall@1 equals a brute-force loop written here."""
    from benchmarks.headroom import photos, rule_embedding
    from item_model.metrics import retrieval_details

    df = real_slice
    titles = np.array([normalise_title(t) for t in df["title"]], dtype=object)
    groups = df["group_id"].fillna(-1).astype("int64").to_numpy()
    queries = np.flatnonzero(groups >= 0)
    px = photos(df, (8, 8))                                  # the real photos at 8 x 8 px
    assert px.shape == (len(df), 8, 8, 3) and px.dtype == np.uint8
    emb = rule_embedding(titles, queries, px)
    flat = px.reshape(len(df), -1).astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    q = queries[:20]
    want = 2.0 * (titles[q][:, None] == titles[None, :]) + flat[q] @ flat.T
    assert np.allclose(emb[q] @ emb.T, want, atol=1e-5)
    d = retrieval_details(emb, groups)
    hits = []
    for i in queries:
        s = emb @ emb[i]                                     # the scores checked above, as the metric sees them
        s[i] = -np.inf
        best = groups[s >= s.max() - 1e-6] == groups[i]     # float32 near-ties count as ties
        assert titles[np.argmax(s)] == titles[i]             # the same title always ranks first here
        hits.append(1.0 if best.all() else 0.0 if not best.any() else np.nan)
    hits = np.array(hits)
    sure = ~np.isnan(hits)                                   # a (near-)tie across groups: the metric breaks it at random
    assert sure.sum() > 0.9 * len(queries)
    assert np.array_equal(d["recall@1"][sure], hits[sure])


def test_headroom_title_label_parts_follow_the_train_split(real_slice):
    from benchmarks.headroom import title_label_parts

    titles = np.array(["a", "a", "a", "b", "b", "c", None, "d"], dtype=object)
    labels = np.array(["X", "X", "Y", "X", "Y", "Z", "X", "W"], dtype=object)
    split = np.array(["train", "train", "test", "train", "test", "test", "test", "train"], dtype=object)
    parts = title_label_parts(titles, labels, split)
    assert parts[[2, 4, 5, 6]].tolist() == ["conflicting", "conflicting", "unseen_title", "unseen_title"]
    split2 = split.copy()
    split2[2] = "train"                                       # title "a" now has X and Y in train
    parts2 = title_label_parts(titles, labels, split2)
    assert parts2[0] == "ambiguous" and parts2[3] == "consistent"
    real = title_label_parts(np.array([normalise_title(t) for t in real_slice["title"]], dtype=object),
                             real_slice["category"].to_numpy(dtype=object), real_slice["split"].to_numpy(dtype=object))
    test = real_slice["split"].to_numpy() == "test"
    assert set(real[test]) <= {"conflicting", "ambiguous", "consistent", "unseen_title"}
    assert (real[test] == "consistent").any() and (real[test] == "unseen_title").any()


def test_readout_weight_over_the_titles_disagree_check_too(real_slice):
    """With ``titles_disagree`` among the checks, each w is also scored where one product's titles
    disagree (its j and t recomputed on the rewritten rows): a bag-of-words title then misleads where a
    large w let it decide elsewhere, and the score is the mean of the three Recall@1."""
    from sklearn.feature_extraction.text import HashingVectorizer

    from item_model.evaluation import paired_groups, readout_selection_rows, readout_weight_scores
    from item_model.titles_disagree import titles_disagree_catalog

    def words_and_photo(df):                   # t = [bag of words, 0], j = [0, pixels]
        words = HashingVectorizer(n_features=1024, alternate_sign=False).transform(df["title"]).toarray()
        words = (words / np.maximum(np.linalg.norm(words, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        photo = pixel_baseline(df, progress=False)
        return (np.concatenate([words, np.zeros_like(photo)], axis=1),
                np.concatenate([np.zeros_like(words), photo], axis=1))

    val = readout_selection_rows(real_slice)
    t, j = words_and_photo(val)
    rewritten, groups = titles_disagree_catalog(val)
    td_t, td_j = words_and_photo(rewritten)
    checks = ("same_product", "title_decides", "titles_disagree")
    rec = readout_weight_scores(j, t, val, (0, 1, 8), reference=real_slice, checks=checks,
                                titles_disagree=(td_j, td_t, groups))
    assert rec["checks"] == list(checks) and rec["titles_disagree_n_queries"] == int((paired_groups(groups) >= 0).sum()) > 0
    td = rec["titles_disagree_recall@1"]
    assert td["0.0"] > 0.8 and td["8.0"] < td["0.0"]              # the photo carries it; the title misleads
    for w in ("0.0", "1.0", "8.0"):
        assert rec["score"][w] == pytest.approx(np.mean([rec["recall@1"][w], rec["title_decides_recall@1"][w], td[w]]))
    two = readout_weight_scores(j, t, val, (0, 1, 8), reference=real_slice)
    assert two["titles_disagree_recall@1"] == {} and two["checks"] == ["same_product", "title_decides"]
    with pytest.raises(ValueError, match="rewritten rows"):
        readout_weight_scores(j, t, val, (0, 8), checks=checks)
    with pytest.raises(ValueError, match="subset"):
        readout_weight_scores(j, t, val, (0, 8), checks=("same_product", "colour"))
