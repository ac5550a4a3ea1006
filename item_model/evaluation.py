"""Embedding a catalog (ITEm joint / text-only / image-only, and the baselines) and scoring it.

Protocol (``shared/docs/item-model.md``, "How it is judged"):

* same-product search: every listing of a same-product group queries the whole evaluated catalog
  (itself excluded); Recall@1, Recall@10, mAP (:func:`item_model.metrics.retrieval_metrics`);
* leaf category: logistic-regression probe fitted on the train split's frozen embeddings, its ``C``
  chosen on the validation split, scored on the test split (:func:`item_model.metrics.probe_details`);
* title-decides search: the same search on groups of identically titled listings of one leaf
  category whose photos differ (:mod:`item_model.title_decides`): does the title decide when the
  photo misleads;
* titles-disagree search: the real same-product groups with every member's title rewritten by a
  different seller-style rule (:mod:`item_model.titles_disagree`): does the photo carry the match
  when the titles disagree;
* modality balance of the served vector: top-10 neighbour overlap of the joint embedding with
  ITEm's own text-only and image-only embeddings (:func:`modality_balance`);
* beside the baselines on the same split and gallery: MiniLM title embedding (text only), raw
  16 x 16 RGB pixels (image only), and the two concatenated.
"""

from __future__ import annotations

import logging
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .image_utils import decode_image, load_image_bytes
from .inference import MODES, embed_catalog, embed_catalog_modes, top_k
from .io import PROGRESS_INTERVAL
from .metrics import PROBE_CS, accuracy, group_search_metrics, macro_f1, probe_details, retrieval_details
from .modeling_item import ItemModel
from .processing_item import ItemProcessor
from .title_decides import describe_groups, title_decides_groups
from .titles_disagree import score_titles_disagree, titles_disagree_catalog

logger = logging.getLogger(__name__)

def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def text_baseline(df: pd.DataFrame, bert_path: str, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embedding of each title (sentence-transformers: mean pooling,
    L2-normalised), as in the catalog README's reference row. (n, 384) float32."""
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(bert_path, device="cpu")
    titles = [t if isinstance(t, str) else "" for t in df["title"].tolist()]
    return st.encode(titles, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True,
                     normalize_embeddings=True).astype(np.float32)


def pixel_baseline(df: pd.DataFrame, side: int = 16, progress: bool = True) -> np.ndarray:
    """Raw pixels: each photo resized (bilinear) to side x side RGB, flattened, scaled to [0, 1],
    L2-normalised. (n, side*side*3) float32."""
    rows = df[["product_id", "image_bytes", "image_uri"]].to_dict("records")
    out = np.empty((len(df), side * side * 3), dtype=np.float32)
    for i, r in enumerate(tqdm(rows, desc="pixel baseline", disable=not progress, mininterval=PROGRESS_INTERVAL)):
        out[i] = decode_image(load_image_bytes(r), (side, side)).reshape(-1) / 255.0
    return _l2(out)


def concat_baseline(text: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """[text ; pixels] / sqrt(2) of two L2-normalised embeddings (so the result is unit length). (n, Dt+Dp)."""
    return np.concatenate([text, pixels], axis=1) / np.sqrt(2.0).astype(np.float32)


def title_decides_metrics(emb: np.ndarray, groups: np.ndarray) -> tuple[dict[str, float], dict | None]:
    """Title-decides same-product search of one embedding (:mod:`item_model.title_decides`).

    Args:
        emb: (n, D) float32 rows aligned with the catalog.
        groups: (n,) int64 from :func:`item_model.title_decides.title_decides_groups` (-1 = no group).

    Returns:
        (``{"title_decides_recall@1", "title_decides_recall@10", "title_decides_mAP",
        "title_decides_n_queries"}``, per-query details of :func:`item_model.metrics.retrieval_details`),
        or ``({}, None)`` when no listing is in a group.
    """
    return group_search_metrics(emb, groups, "title_decides")


def score_embeddings(emb: np.ndarray, df: pd.DataFrame, split: np.ndarray,
                     title_groups: np.ndarray | None = None,
                     probe_cs: tuple[float, ...] = PROBE_CS) -> tuple[dict[str, float], dict]:
    """Both tasks, and the title-decides search, for one embedding of the evaluated catalog.

    Args:
        emb: (n, D) float32 rows aligned with ``df``.
        df: canonical catalog (``title``, ``category``, ``group_id``).
        split: (n,) ``"train"``/``"validation"``/``"test"``.
        title_groups: (n,) int64 title-decides groups of ``df`` (-1 = none); None: built here with
            :func:`item_model.title_decides.title_decides_groups` (default bounds).
        probe_cs: the probe's ``C`` grid, chosen on the validation rows.

    Returns:
        (metrics: ``recall@1``, ``recall@10``, ``mAP``, ``n_queries`` (search over all n listings),
        ``category_accuracy``, ``category_macro_f1``, ``n_classes``, ``n_test`` (probe train -> test),
        ``probe_C`` (the ``C`` chosen on the validation split), and, when ``df`` has a
        title-decides group, ``title_decides_recall@1``, ``title_decides_recall@10``,
        ``title_decides_mAP``, ``title_decides_n_queries``;
        details: ``{"retrieval": per-query arrays + "top5" (q, 5) catalog rows, "probe": "test_index"
        (catalog rows), "y_true", "y_pred"}`` for bootstrap tests and reports).

    Raises:
        ValueError: no same-product query, or the probe cannot be fitted
            (:func:`item_model.metrics.probe_details`).
    """
    groups = df["group_id"].fillna(-1).astype("int64").to_numpy()
    retrieval = retrieval_details(emb, groups)
    retrieval["top5"] = top_k(emb, retrieval["query_index"], 5)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "validation", "test"))
    y = df["category"].to_numpy(dtype=object)
    probe = probe_details(emb[tr], y[tr], emb[te], y[te], x_val=emb[va], y_val=y[va], cs=probe_cs)
    probe["test_index"] = te[probe["test_index"]]
    n_classes, chosen_c = probe.pop("n_classes"), probe.pop("C")
    for key in ("validation_accuracy", "converged"):
        probe.pop(key)
    out = {f"recall@{k}": float(retrieval[f"recall@{k}"].mean()) for k in (1, 10)}
    out.update({"mAP": float(retrieval["mAP"].mean()), "n_queries": int(len(retrieval["mAP"])),
                "category_accuracy": accuracy(probe["y_true"], probe["y_pred"]),
                "category_macro_f1": macro_f1(probe["y_true"], probe["y_pred"]),
                "n_classes": int(n_classes), "n_test": int(len(probe["y_true"])), "probe_C": float(chosen_c)})
    if title_groups is None:
        title_groups = title_decides_groups(df)
    out.update(title_decides_metrics(emb, title_groups)[0])
    return out, {"retrieval": retrieval, "probe": probe}


def modality_balance(joint: np.ndarray, text: np.ndarray, image: np.ndarray, k: int = 10,
                     n_queries: int = 2000, seed: int = 0, chunk: int = 256) -> dict[str, float]:
    """How much the served (joint) vector follows the title and the photo: mean top-k neighbour
    overlap of the joint embedding with the same model's text-only and image-only embeddings.

    Queries: a fixed sample of ``min(n_queries, n)`` catalog rows drawn without replacement by
    ``numpy.random.default_rng(seed).choice`` (sorted), nothing else; each embedding's neighbours are
    searched over the whole catalog (all n rows, the query itself excluded) with :func:`top_k`. For
    a query q, overlap_text(q) = |top-k_joint(q) ∩ top-k_text(q)| / k, and likewise with image;
    the result is the mean over queries. Ties: identically titled listings have identical
    text-only vectors (and duplicate photos identical image-only ones), so which of the tied rows
    top-k picks is arbitrary; a joint neighbour therefore counts as in the text (image) top-k when
    its text (image) score reaches that embedding's k-th best score (the same float32 products as
    :func:`top_k`, 1e-6 slack). Without ties this is exactly the set overlap.

    Reading: near 1 with one modality and low with the other = the joint vector follows that
    modality; both low = it follows neither single-modality view (:func:`components.promotion.gate.balance_reading`).

    Args:
        joint, text, image: (n, D) float32 rows aligned with the same catalog (L2-normalised; inner
            product = cosine).
        k: neighbours per query (n must exceed k).
        n_queries: largest number of sampled queries.
        seed: seed of the query sample.
        chunk: queries per matrix product (as :func:`top_k`'s default, so the scores match its).

    Returns:
        ``{"balance_text_overlap@k": float in [0, 1], "balance_image_overlap@k": float,
        "balance_n_queries": int}``.

    Raises:
        ValueError: the three arrays differ in rows, or the catalog has no more than k rows.
    """
    n = len(joint)
    if len(text) != n or len(image) != n:
        raise ValueError(f"joint, text and image embeddings differ in rows: {n}, {len(text)}, {len(image)}")
    if n <= k:
        raise ValueError(f"modality balance needs more than k={k} listings, got {n}")
    q = np.sort(np.random.default_rng(seed).choice(n, size=min(n_queries, n), replace=False))
    nb_joint = top_k(joint, q, k, chunk)                                          # (m, k)
    out: dict[str, float] = {}
    for name, ref in (("text", text), ("image", image)):
        ref = np.asarray(ref, dtype=np.float32)
        nb_ref = top_k(ref, q, k, chunk)
        hits = np.empty(nb_joint.shape, dtype=bool)
        for c in range(0, len(q), chunk):                      # the same float32 products as top_k
            scores = ref[q[c:c + chunk]] @ ref.T
            kth = np.take_along_axis(scores, nb_ref[c:c + chunk, -1:], axis=1)          # (c, 1)
            hits[c:c + chunk] = np.take_along_axis(scores, nb_joint[c:c + chunk], axis=1) >= kth - 1e-6
        out[f"balance_{name}_overlap@{k}"] = float(hits.mean())
    out["balance_n_queries"] = int(len(q))
    return out


def evaluate_catalog(model: ItemModel, processor: ItemProcessor, df: pd.DataFrame, split: np.ndarray,
                     bert_path: str, modality_ablation: bool = True, progress: bool = True,
                     champion: tuple[ItemModel, ItemProcessor] | None = None
                     ) -> tuple[dict[str, dict], dict[str, np.ndarray], dict[str, dict]]:
    """Embed the catalog with ITEm (and the champion, if given) and the baselines; score each on both
    tasks and the title-decides search (:func:`score_embeddings`) and the titles-disagree search
    (``titles_disagree_*`` keys, per-query details under ``"titles_disagree"``;
    :func:`item_model.titles_disagree.score_titles_disagree`: only the group members are embedded
    again, under their rewritten titles); with ``modality_ablation``, add the modality balance
    (:func:`modality_balance`) to ``item``'s metrics.

    Returns:
        (``{name: metrics}`` for ``item``, optionally ``item_text_only``, ``item_image_only`` and
        ``champion``, and ``baseline_text_minilm``, ``baseline_image_pixels``, ``baseline_concat``
        (the title-decides keys are absent, with a logged note, when the catalog has no qualifying
        title; ``item`` has ``balance_text_overlap@10``, ``balance_image_overlap@10`` and
        ``balance_n_queries`` when the ablation ran);
        ``{kind: (n, D) float32}`` the challenger's ITEm embeddings, for the catalog index;
        ``{name: details}`` per-item outcomes of every model, see :func:`score_embeddings`).
    """
    results: dict[str, dict] = {}
    details: dict[str, dict] = {}
    item_embeddings: dict[str, np.ndarray] = {}
    title_groups = title_decides_groups(df)
    info = describe_groups(title_groups)
    if info["n_groups"]:
        logger.info("title-decides check: %d groups, %d queries (sizes %s)", info["n_groups"],
                    info["n_queries"], info["size_counts"])
    else:
        logger.info("title-decides check skipped: no normalised title of %d listings qualifies "
                    "(2-6 listings, one leaf category, no real same-product group member)", len(df))

    scored: dict[str, np.ndarray] = {}

    def run(name: str, emb: np.ndarray) -> None:
        results[name], details[name] = score_embeddings(emb, df, split, title_groups)
        logger.info("%-22s %s", name, {k: round(v, 4) for k, v in results[name].items()})
        scored[name] = emb
        if name.startswith("item"):
            item_embeddings[name] = emb

    own = embed_catalog_modes(model, processor, df, MODES if modality_ablation else ("joint",), progress=progress)
    run("item", own["joint"])
    if champion is not None:
        run("champion", embed_catalog(champion[0], champion[1], df, "joint", progress=progress))
    if modality_ablation:
        run("item_text_only", own["text"])
        run("item_image_only", own["image"])
        if len(df) > 10:
            balance = modality_balance(item_embeddings["item"], item_embeddings["item_text_only"],
                                       item_embeddings["item_image_only"])
            results["item"].update(balance)
            logger.info("modality balance of item: %s", {k: round(v, 4) for k, v in balance.items()})
        else:
            logger.info("modality balance skipped: %d listings (needs more than 10)", len(df))
    text = text_baseline(df, bert_path, progress=progress)
    pixels = pixel_baseline(df, progress=progress)
    run("baseline_text_minilm", text)
    run("baseline_image_pixels", pixels)
    run("baseline_concat", concat_baseline(text, pixels))
    td_metrics, td_details, td_info = score_titles_disagree(df, scored, _title_readers(
        model, processor, champion, bert_path, pixels, df, modality_ablation))
    for name, metrics in td_metrics.items():
        results[name].update(metrics)
        details[name]["titles_disagree"] = td_details[name]
    if td_info:
        logger.info("titles-disagree check: %d groups, %d queries; Recall@1 %s", td_info["n_groups"],
                    td_info["n_queries"], {k: round(v["titles_disagree_recall@1"], 4) for k, v in td_metrics.items()})
    return results, item_embeddings, details


def _title_readers(model: ItemModel, processor: ItemProcessor, champion: tuple | None, bert_path: str,
                   pixels: np.ndarray, df: pd.DataFrame, modality_ablation: bool) -> dict:
    """``{name: f(rows) -> vectors}`` of every evaluated model that reads titles, for the titles-disagree
    check (:func:`item_model.titles_disagree.score_titles_disagree`); the photo-only ones are absent."""
    position = pd.Series(np.arange(len(df)), index=df.index)
    cache: dict[tuple, np.ndarray] = {}

    def minilm(rows: pd.DataFrame) -> np.ndarray:          # MiniLM alone and inside the concatenation: once
        key = tuple(rows.index)
        if key not in cache:
            cache[key] = text_baseline(rows, bert_path, progress=False)
        return cache[key]

    readers = {"item": lambda rows: embed_catalog(model, processor, rows, "joint", progress=False),
               "baseline_text_minilm": minilm,
               "baseline_concat": lambda rows: concat_baseline(minilm(rows), pixels[position[rows.index].to_numpy()])}
    if modality_ablation:
        readers["item_text_only"] = lambda rows: embed_catalog(model, processor, rows, "text", progress=False)
    if champion is not None:
        readers["champion"] = lambda rows: embed_catalog(champion[0], champion[1], rows, "joint", progress=False)
    return readers


def paired_groups(group_ids: np.ndarray) -> np.ndarray:
    """Group ids with every group of fewer than two rows set to -1 (so each remaining member is a
    valid query of :func:`item_model.metrics.retrieval_details`). (n,) int64 in, (n,) int64 out."""
    groups = np.asarray(group_ids, dtype=np.int64).copy()
    ids, counts = np.unique(groups[groups >= 0], return_counts=True)
    groups[np.isin(groups, ids[counts < 2])] = -1
    return groups


def readout_selection_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the read-out weight is chosen on (:func:`choose_readout_weight`): every validation
    listing, plus the train listings that share a same-product group or a title-decides group
    (:func:`item_model.title_decides.title_decides_groups` over the whole ``df``) with a validation
    listing, so that a validation listing's partners are in the gallery (the split is by listing:
    without them few groups have two validation members). No test listing is read.

    Args:
        df: the validated catalog with ``split``.

    Returns:
        the chosen rows of ``df`` in their order, index reset.
    """
    split = df["split"].to_numpy()
    val = split == "validation"
    keep = val.copy()
    for groups in (title_decides_groups(df), df["group_id"].fillna(-1).astype("int64").to_numpy()):
        keep |= (split == "train") & (groups >= 0) & np.isin(groups, groups[val & (groups >= 0)])
    return df[keep].reset_index(drop=True)


#: the validation searches a read-out weight can be chosen on (``TrainConfig.readout_checks``)
READOUT_CHECKS = ("same_product", "title_decides", "titles_disagree")
_CHECK_KEYS = {"same_product": "recall@1", "title_decides": "title_decides_recall@1",
               "titles_disagree": "titles_disagree_recall@1"}


def readout_weight_scores(joint: np.ndarray, text: np.ndarray, df: pd.DataFrame, weights: tuple[float, ...],
                          reference: pd.DataFrame | None = None, checks: tuple[str, ...] = READOUT_CHECKS[:2],
                          titles_disagree: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict:
    """Score each read-out weight w of the served vector ``s = normalize(w t + j)`` (:meth:`ItemModel.embed`)
    by same-product search among the rows of ``df`` (in the pipeline: :func:`readout_selection_rows`,
    the validation split and the train listings titled like one of them; no test listing is read),
    and choose one.

    Up to three searches (``checks``), each over the rows of ``df`` as the gallery (the query itself
    excluded): ``same_product``, the real same-product groups of ``df`` (groups with two or more rows
    in it); ``title_decides``, the title-decides groups (:func:`item_model.title_decides.title_decides_groups`
    with ``reference``: titles qualify on the whole catalog, the groups are the rows of ``df``);
    ``titles_disagree``, the same-product groups with each member's title rewritten by another
    seller-style rule (:func:`item_model.titles_disagree.titles_disagree_catalog`; its j and t come in
    ``titles_disagree``). The score of w is the mean of the checks' Recall@1 (those that have a
    query); the chosen w is the best score, ties going to the larger w: this gallery is small, so
    several w often reach 1.0, and a tie means no validation query argues for more weight on the
    joint pass, while over the whole catalog's gallery a larger w kept more title-decides matches at
    no cost to the other metrics (docs/results.md: w = 8-10 against 4-6, three seeds). A catalog
    whose same product carries different titles loses same-product matches as w grows, and so gets
    a smaller w without a tie; the titles-disagree check makes that case out of any catalog.

    Args:
        joint: (n, D) float32, the joint pass's ``[CLS]`` j of each row, L2-normalised.
        text: (n, D) float32, the title stream's vector t (``config.text_pooling``), L2-normalised.
        df: (n rows) canonical catalog rows (``title``, ``category``, ``group_id``).
        weights: the w to try, each >= 0 (0: the joint ``[CLS]`` alone).
        reference: the catalog ``df`` was taken from (for the title-decides groups); None: ``df``.
        checks: a subset of :data:`READOUT_CHECKS`.
        titles_disagree: (j (n, D), t (n, D), groups (n,) int64, -1 outside a group) of the rows of
            ``df`` with the group members' titles rewritten; needed when ``checks`` has ``titles_disagree``.

    Returns:
        ``{"weights", "checks", "recall@1": {w: float}, "title_decides_recall@1": {w: float},
        "titles_disagree_recall@1": {w: float} (each empty when its check is off or has no query),
        "score": {w: float}, "n_queries", "title_decides_n_queries", "titles_disagree_n_queries",
        "n_listings", "chosen": float, or None when ``df`` has no query of any chosen check}``; the
        dict keys are ``str(w)`` (JSON-ready).

    Raises:
        ValueError: no weight, a negative weight, an unknown check, shapes that disagree with
            ``df``, or ``titles_disagree`` missing when that check is asked for.
    """
    weights = tuple(float(w) for w in weights)
    if not weights or min(weights) < 0:
        raise ValueError(f"train_config.readout_weights={list(weights)}: give one or more weights, each >= 0")
    if not checks or set(checks) - set(READOUT_CHECKS):
        raise ValueError(f"readout checks {list(checks)} must be a non-empty subset of {list(READOUT_CHECKS)}")
    if joint.shape != text.shape or len(joint) != len(df):
        raise ValueError(f"joint {joint.shape} and text {text.shape} must both have len(df)={len(df)} rows")
    if "titles_disagree" in checks and titles_disagree is None:
        raise ValueError("the titles_disagree read-out check needs the rewritten rows' j and t")
    same = paired_groups(df["group_id"].fillna(-1).astype("int64").to_numpy()) if "group_id" in df else \
        np.full(len(df), -1, dtype=np.int64)
    titled = title_decides_groups(df, reference=reference) if len(df) else same.copy()
    searches = {"same_product": (joint, text, same), "title_decides": (joint, text, titled)}
    if titles_disagree is not None:                      # a member whose partners are not among the rows: no query
        searches["titles_disagree"] = (*titles_disagree[:2], paired_groups(np.asarray(titles_disagree[2])))
    out: dict = {"weights": list(weights), "checks": list(checks), "recall@1": {}, "title_decides_recall@1": {},
                 "titles_disagree_recall@1": {}, "score": {}, "n_queries": int((same >= 0).sum()),
                 "title_decides_n_queries": int((titled >= 0).sum()),
                 "titles_disagree_n_queries": int((searches["titles_disagree"][2] >= 0).sum()) if titles_disagree else 0,
                 "n_listings": int(len(df)), "chosen": None}
    active = [c for c in checks if (searches[c][2] >= 0).any()]
    if not active:
        return out
    for w in weights:
        parts = []
        for check in active:
            j, t, groups = searches[check]
            recall = float(retrieval_details(_l2(w * t + j), groups, ks=(1,))["recall@1"].mean())
            out[_CHECK_KEYS[check]][str(w)] = recall
            parts.append(recall)
        out["score"][str(w)] = float(np.mean(parts))
    out["chosen"] = max(weights, key=lambda w: (out["score"][str(w)], w))
    return out


def choose_readout_weight(model: ItemModel, processor: ItemProcessor, df: pd.DataFrame,
                          weights: tuple[float, ...], reference: pd.DataFrame | None = None,
                          progress: bool = True, checks: tuple[str, ...] = READOUT_CHECKS[:2]) -> dict:
    """Embed ``df``'s rows (:func:`readout_selection_rows`) in the joint ``[CLS]`` j and the title stream's t
    (:meth:`ItemModel.text_vector`) (with the ``titles_disagree`` check, also its group members under
    their rewritten titles), score each read-out weight on ``checks`` (:func:`readout_weight_scores`)
    and set the chosen one as ``model.config.readout_text_weight``, so that ``embed``, the index and
    serving all use it. A catalog with no validation query keeps the configured weight (logged).

    Returns:
        the :func:`readout_weight_scores` record, plus ``"configured"`` (the weight before) and
        ``"wall_time_s"``.
    """
    import time

    t0 = time.perf_counter()
    configured = float(getattr(model.config, "readout_text_weight", 0.0) or 0.0)
    model.config.readout_text_weight = 0.0               # the joint mode is then j itself
    td = None
    try:
        own = embed_catalog_modes(model, processor, df, ("joint", "text"), progress=progress)
        if "titles_disagree" in checks:
            rewritten, groups = titles_disagree_catalog(df)
            members = np.flatnonzero(groups >= 0)
            td_joint, td_text = own["joint"].copy(), own["text"].copy()
            if len(members):
                new = embed_catalog_modes(model, processor, rewritten.iloc[members], ("joint", "text"), progress=False)
                td_joint[members], td_text[members] = new["joint"], new["text"]
            td = (td_joint, td_text, groups)
    finally:
        model.config.readout_text_weight = configured
    record = readout_weight_scores(own["joint"], own["text"], df, weights, reference=reference, checks=checks,
                                   titles_disagree=td)
    record.update(configured=configured, wall_time_s=time.perf_counter() - t0)
    if record["chosen"] is None:
        logger.info("read-out weight: no validation query of %s among %d listings; keeping the configured w=%g",
                    list(checks), len(df), configured)
    else:
        model.config.readout_text_weight = float(record["chosen"])
        logger.info("read-out weight chosen on %d listings (%d same-product, %d title-decides, %d titles-disagree "
                    "queries; checks %s): w=%g (scores %s)", len(df), record["n_queries"],
                    record["title_decides_n_queries"], record["titles_disagree_n_queries"], list(checks),
                    record["chosen"], {w: round(s, 4) for w, s in record["score"].items()})
    return record
