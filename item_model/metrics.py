"""Evaluation metrics: same-product search (Recall@k, mAP) and the leaf-category linear probe.

Vectorised over queries (chunked matrix products), so they stay fast at catalog scale (44k x 44k).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def tie_break_order(n: int, tie_seed: int = 0) -> np.ndarray:
    """The fixed random order that breaks equal scores in :func:`retrieval_ranks`: of two gallery items
    with the same score, the one with the smaller value ranks first. (n,) int64, a permutation of 0..n-1."""
    return np.random.default_rng(tie_seed).permutation(n)


def retrieval_ranks(embeddings: np.ndarray, group_ids: np.ndarray, query_index: np.ndarray | None = None,
                    chunk: int = 128, tie_seed: int = 0) -> np.ndarray:
    """1-based ranks of each query's relevant items when it searches the whole gallery.

    Every listing is in the gallery; the query itself is excluded; relevant = same ``group_id``.
    Scores are inner products (cosine for L2-normalised embeddings). The gallery is ranked by
    (score descending, then a fixed random permutation of the listings): equal scores are common
    (listings with identical titles have identical text embeddings) and are broken at random, not
    in the relevant item's favour, which would give a title-only model perfect search on groups of
    identically-titled different products. A relevant item's rank is 1 + the number of gallery
    items (query excluded) before it in that order.

    Args:
        embeddings: (n, D) float32 gallery, row i = listing i.
        group_ids: (n,) int64, -1 for listings in no group.
        query_index: (q,) int64 rows that query; default: every row with a group.
        chunk: queries scored per matrix product.
        tie_seed: seed of the tie-breaking permutation.

    Returns:
        (q, R) float64, R = largest group size: each row the ranks of that query's relevant items,
        ascending, padded with ``inf``.

    Raises:
        ValueError: shapes disagree, or a query has no other member in its group.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    groups = np.asarray(group_ids, dtype=np.int64)
    if emb.ndim != 2 or groups.shape != (emb.shape[0],):
        raise ValueError(f"embeddings (n, D) and group_ids (n,) expected, got {emb.shape} and {groups.shape}")
    if query_index is None:
        query_index = np.flatnonzero(groups >= 0)
    query_index = np.asarray(query_index, dtype=np.int64)
    # members of every group, contiguous: members[start[g] : start[g] + size[g]]
    in_group = np.flatnonzero(groups >= 0)
    members = in_group[np.argsort(groups[in_group], kind="stable")]
    uniq, start, size = np.unique(groups[members], return_index=True, return_counts=True)
    g = np.searchsorted(uniq, groups[query_index])
    width = int(size.max()) if len(size) else 0
    offs = np.arange(width)[None, :]
    valid = offs < size[g][:, None]                                            # (q, width)
    rel = members[np.minimum(start[g][:, None] + offs, len(members) - 1)]      # (q, width)
    valid &= rel != query_index[:, None]                                       # the query itself is excluded
    n_rel = valid.sum(axis=1)
    if (n_rel == 0).any():
        bad = query_index[n_rel == 0][:5].tolist()
        raise ValueError(f"query rows {bad} have no other member of their group in the gallery")
    tiebreak = tie_break_order(len(groups), tie_seed)
    ranks = np.full((len(query_index), width), np.inf)
    for s in range(0, len(query_index), chunk):
        q = query_index[s:s + chunk]
        scores = emb[q] @ emb.T                                                # (c, n)
        scores[np.arange(len(q)), q] = -np.inf
        r = rel[s:s + chunk]
        rel_scores = np.take_along_axis(scores, r, axis=1)[:, :, None]         # (c, width, 1)
        before = (scores[:, None, :] > rel_scores) | (
            (scores[:, None, :] == rel_scores) & (tiebreak[None, None, :] < tiebreak[r][:, :, None]))
        higher = before.sum(axis=2)                                            # (c, width, n) -> (c, width)
        ranks[s:s + chunk] = np.where(valid[s:s + chunk], higher + 1, ranks[s:s + chunk])
    ranks.sort(axis=1)
    return ranks


def retrieval_metrics(embeddings: np.ndarray, group_ids: np.ndarray, ks: Sequence[int] = (1, 10),
                      query_index: np.ndarray | None = None) -> dict[str, float]:
    """Same-product search metrics.

    * Recall@k: share of queries with at least one relevant item in the top k (the retrieval
      Recall@k of Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding", 2016).
    * mAP: mean over queries of average precision AP = (1/R) sum_i i / rank_i over the R relevant
      items sorted by rank (Manning et al., Introduction to IR, 8.4).

    Returns:
        ``{"recall@1": float, "recall@10": float, "mAP": float, "n_queries": int}`` (values in [0, 1]).
    """
    details = retrieval_details(embeddings, group_ids, ks, query_index)
    out: dict[str, float] = {f"recall@{k}": float(details[f"recall@{k}"].mean()) for k in ks}
    out["mAP"] = float(details["mAP"].mean())
    out["n_queries"] = int(len(details["mAP"]))
    return out


def group_search_metrics(emb: np.ndarray, groups: np.ndarray, prefix: str) -> tuple[dict[str, float], dict | None]:
    """Same-product search on relabelled groups (a check such as title-decides or titles-disagree):
    every listing of a group queries all rows, itself excluded.

    Args:
        emb: (n, D) float32 rows aligned with the catalog.
        groups: (n,) int64 group ids, -1 = no group.
        prefix: the check's name, the keys' prefix (``"title_decides"``).

    Returns:
        (``{"<prefix>_recall@1", "<prefix>_recall@10", "<prefix>_mAP", "<prefix>_n_queries"}``, per-query
        details of :func:`retrieval_details`), or ``({}, None)`` when no listing is in a group.

    Raises:
        ValueError: shapes disagree, or a group has a single member (:func:`retrieval_ranks`).
    """
    if not (np.asarray(groups) >= 0).any():
        return {}, None
    d = retrieval_details(emb, groups)
    return ({f"{prefix}_recall@1": float(d["recall@1"].mean()), f"{prefix}_recall@10": float(d["recall@10"].mean()),
             f"{prefix}_mAP": float(d["mAP"].mean()), f"{prefix}_n_queries": int(len(d["mAP"]))}, d)


def retrieval_details(embeddings: np.ndarray, group_ids: np.ndarray, ks: Sequence[int] = (1, 10),
                      query_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-query outcomes behind :func:`retrieval_metrics` (for paired bootstrap tests and reports).

    Returns:
        ``{"query_index": (q,) int64, "recall@k": (q,) float64 0/1 for each k, "mAP": (q,) float64
        average precision, "first_rank": (q,) float64}``; the metric is the mean of its array.
    """
    if query_index is None:
        query_index = np.flatnonzero(np.asarray(group_ids) >= 0)
    ranks = retrieval_ranks(embeddings, group_ids, query_index)
    if len(ranks) == 0:
        raise ValueError("no same-product query: the catalog has no group with two members")
    n_rel = np.isfinite(ranks).sum(axis=1)
    precision_at_hits = np.arange(1, ranks.shape[1] + 1)[None, :] / ranks    # 0 where padded (1/inf)
    out = {"query_index": np.asarray(query_index, dtype=np.int64), "first_rank": ranks[:, 0],
           "mAP": precision_at_hits.sum(axis=1) / n_rel}
    for k in ks:
        out[f"recall@{k}"] = (ranks[:, 0] <= k).astype(np.float64)
    return out


#: the probe's inverse regularisation strengths tried on the validation split (scikit-learn ``C``)
PROBE_CS = (0.1, 1.0, 10.0)
#: ``C`` used when there is no usable validation row to choose with (scikit-learn's default)
PROBE_FALLBACK_C = 1.0


def probe_metrics(x_train: np.ndarray, y_train: Sequence[str], x_test: np.ndarray, y_test: Sequence[str],
                  min_train_per_class: int = 5, max_iter: int = 1000, seed: int = 0,
                  x_val: np.ndarray | None = None, y_val: Sequence[str] | None = None,
                  cs: Sequence[float] = PROBE_CS) -> dict[str, float]:
    """Leaf-category linear probe: multinomial logistic regression (scikit-learn, L-BFGS) on frozen,
    standardised embeddings, its ``C`` chosen on the validation rows (see :func:`probe_details`);
    accuracy and macro-F1 on the test rows whose class has at least ``min_train_per_class``
    training rows (other classes are left out of every set).

    Args:
        x_train: (n_train, D) float32. y_train: n_train labels. x_test: (n_test, D). y_test: labels.
        x_val, y_val: (n_val, D) float32 and n_val labels of the validation split, or None (then
            ``C`` = :data:`PROBE_FALLBACK_C`).
        cs: the ``C`` grid.

    Returns:
        ``{"category_accuracy", "category_macro_f1", "n_classes", "n_test", "probe_C"}``.

    Raises:
        ValueError: fewer than two classes have enough training rows; no test row of a kept class;
            an empty or non-positive ``cs``.
    """
    details = probe_details(x_train, y_train, x_test, y_test, min_train_per_class, max_iter, seed,
                            x_val=x_val, y_val=y_val, cs=cs)
    return {"category_accuracy": accuracy(details["y_true"], details["y_pred"]),
            "category_macro_f1": macro_f1(details["y_true"], details["y_pred"]),
            "n_classes": int(details["n_classes"]), "n_test": int(len(details["y_true"])),
            "probe_C": float(details["C"])}


def probe_details(x_train: np.ndarray, y_train: Sequence[str], x_test: np.ndarray, y_test: Sequence[str],
                  min_train_per_class: int = 5, max_iter: int = 1000, seed: int = 0,
                  x_val: np.ndarray | None = None, y_val: Sequence[str] | None = None,
                  cs: Sequence[float] = PROBE_CS, blas_threads: int | None = 1) -> dict:
    """The probe's per-test-row outcome, with its regularisation chosen on the validation split.

    Model selection (the same for every embedding, so no embedding is compared at a better-tuned
    probe than another): a ``StandardScaler`` is fitted on the kept training rows; then one
    multinomial logistic regression (L-BFGS, ``max_iter``, ``random_state=seed``) per ``C`` in
    ``cs``, in ascending order, each warm-started from the previous solution (a regularisation
    path; every fit still runs to L-BFGS's tolerance); the ``C`` with the best accuracy on the
    validation rows of kept classes wins (ties: the smallest ``C``, the strongest regularisation)
    and that fitted model predicts the test rows. Validation accuracy is taken as unimodal in
    ``C``: the path stops at the first ``C`` that scores below the best so far, so the largest
    ``C`` (the slowest to converge: on the whole catalog's 768-d pixels, C = 10 ran 1,000 L-BFGS
    iterations without converging) is fitted only when it can still win. Test labels are never
    read before prediction.
    Without usable validation rows (``x_val`` None, or no validation row of a kept class) the probe
    is fitted once with ``C`` = :data:`PROBE_FALLBACK_C` and a note is logged.

    scikit-learn's ``ConvergenceWarning`` is silenced inside (it is raised per fit and floods the
    terminal); instead one warning is logged per call naming the ``C`` values whose fit stopped at
    ``max_iter``.

    The fits run with ``blas_threads`` BLAS threads (threadpoolctl): the probe's products are small
    (n x D by D x classes), and on a busy 2-core host multi-threaded OpenBLAS spun instead of
    computing (one fit of 2,400 x 768 pixels: 110 s with 2 threads, 4.5 s with 1).

    Args:
        x_train: (n_train, D) float32; y_train: n_train labels (str).
        x_test: (n_test, D) float32; y_test: n_test labels.
        min_train_per_class: classes with fewer training rows are dropped from train, validation
            and test.
        x_val, y_val: (n_val, D) float32 and n_val labels, or None.
        cs: the ``C`` grid (positive floats).
        blas_threads: BLAS threads during the fits; None leaves the library's setting.

    Returns:
        ``{"test_index": (m,) int64 positions in x_test, "y_true": (m,) object, "y_pred": (m,) object,
        "n_classes": int, "C": float (chosen), "validation_accuracy": {C: float} for each ``C``
        fitted (empty when no validation rows were usable), "converged": bool (every fit reached
        the tolerance)}``.

    Raises:
        ValueError: fewer than two classes have ``min_train_per_class`` training rows; no test row
            belongs to a kept class; ``cs`` is empty or holds a non-positive value.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    cs = sorted(float(c) for c in cs)
    if not cs or cs[0] <= 0:
        raise ValueError(f"probe: the C grid must hold positive values, got {cs}")
    y_train, y_test = np.asarray(y_train, dtype=object), np.asarray(y_test, dtype=object)
    classes, counts = np.unique(y_train, return_counts=True)
    keep = classes[counts >= min_train_per_class]
    if len(keep) < 2:
        raise ValueError(f"probe needs >= 2 classes with >= {min_train_per_class} training rows, got {len(keep)}")
    tr, te = np.isin(y_train, keep), np.isin(y_test, keep)
    if te.sum() == 0:
        raise ValueError("probe: no test row belongs to a class seen in training")
    va = None
    if x_val is not None and y_val is not None and len(y_val):
        y_val = np.asarray(y_val, dtype=object)
        va = np.isin(y_val, keep)
        if not va.any():
            va = None
    if va is None:
        logger.info("probe: no usable validation rows (none given, or none of a kept class): C = %s "
                    "without model selection", PROBE_FALLBACK_C)
        cs = [PROBE_FALLBACK_C]
    scaler = StandardScaler().fit(x_train[tr])
    xs_train = scaler.transform(x_train[tr])
    clf = LogisticRegression(max_iter=max_iter, C=cs[0], random_state=seed, warm_start=True)
    best, val_acc, not_converged = _probe_path(clf, scaler, xs_train, y_train[tr], cs, x_val, y_val, va,
                                               max_iter, blas_threads)
    if not_converged:
        logger.warning("probe: L-BFGS stopped at max_iter=%d without converging for C = %s "
                       "(ConvergenceWarning silenced)", max_iter, not_converged)
    return {"test_index": np.flatnonzero(te), "y_true": y_test[te],
            "y_pred": best.predict(scaler.transform(x_test[te])), "n_classes": len(keep),
            "C": float(best.C), "validation_accuracy": val_acc, "converged": not not_converged}


def _probe_path(clf, scaler, xs_train: np.ndarray, y_fit: np.ndarray, cs: list[float], x_val, y_val, va,
                max_iter: int, blas_threads: int | None) -> tuple[Any, dict, list[float]]:
    """The regularisation path of :func:`probe_details`: ``clf`` fitted (warm-started) for each ``C`` in
    ``cs`` until validation accuracy drops; ``(best fitted model, {C: validation accuracy}, the C whose
    fit stopped at max_iter)``. With ``va`` None the first fit is the model."""
    import copy
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    best, best_acc, val_acc, not_converged = None, -1.0, {}, []
    for c in cs:
        clf.set_params(C=c)
        with warnings.catch_warnings(), threadpool_limits(limits=blas_threads, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xs_train, y_fit)
        if int(np.max(clf.n_iter_)) >= max_iter:
            not_converged.append(c)
        if va is None:
            best = clf
            break
        acc = accuracy(y_val[va], clf.predict(scaler.transform(x_val[va])))
        val_acc[c] = acc
        if acc > best_acc:                       # strict: ties keep the smaller C
            best, best_acc = copy.deepcopy(clf), acc
        elif acc < best_acc:                     # past the peak: larger C are not fitted
            break
    return best, val_acc, not_converged


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of rows with ``y_pred == y_true``."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Macro-averaged F1 over the labels in ``y_true`` or ``y_pred`` (as scikit-learn's
    ``f1_score(average="macro")``: F1_c = 2 TP / (2 TP + FP + FN), 0 where undefined).

    Args:
        weights: optional (B, m) row weights (bootstrap resample counts) -> returns (B,) float64.
    """
    labels, inv = np.unique(np.concatenate([np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)]),
                            return_inverse=True)
    m = len(y_true)
    t, p = inv[:m], inv[m:]
    eye = np.eye(len(labels))
    hit = (t == p)[:, None]
    tp_rows, t_rows, p_rows = eye[t] * hit, eye[t], eye[p]              # (m, C)
    w = np.ones((1, m)) if weights is None else np.asarray(weights, dtype=np.float64)
    tp, n_true, n_pred = w @ tp_rows, w @ t_rows, w @ p_rows            # (B, C)
    denom = n_true + n_pred                                             # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    out = f1.mean(axis=1)
    return float(out[0]) if weights is None else out
