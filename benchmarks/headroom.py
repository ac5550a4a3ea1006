"""How much is left above finished runs on the catalog's own labels: same-product Recall@1 (reference
rules that know how the groups were built, and every miss described) and category accuracy (test
listings whose identical title carries another leaf label in the train split).

**Same-product search.**
The catalog's same-product groups are built by a rule (its README): listings with an **identical
title and a near-identical photo** (equal 64-bit difference hash and mean 8 x 8 RGB difference below
6). Every other listing is a distractor, including other listings with the same title and a photo
that differs by a few grey levels, or that are identical but whose hash happened to differ. So the
metric has a ceiling below 1 for any vector that measures how alike two listings look. This script
measures it with **reference rules that know how the labels were built** and need no training:

* ``title, then pixels s x s``: the gallery ranked first by whether the normalised title equals the
  query's (:func:`item_model.title_decides.normalise_title`), then by the cosine of the raw photos
  resized to s x s (bilinear, RGB, the project's one decoder), for s in 8, 16, 32 and the catalog's
  own 80 x 60 px. Written as an embedding (a one-hot block of the queries' titles, weight sqrt(2),
  beside the L2-normalised pixels, so the score is 2 [same title] + cosine in [0, 3]) and scored by
  the pipeline's own :func:`item_model.metrics.retrieval_details` (same queries, gallery and
  tie-breaking as eval.json).

For each run (``item run`` output folder) it then reads the evaluate step's per-query results
(``evaluate/eval_details``) of the served vector (``item``) and of the best baseline
(``baseline_concat``, MiniLM ⊕ 16 x 16 pixels, recomputed here with the evaluation's own functions to find
its top hits) and classifies every query each gets wrong at rank 1 (its top hit as the metric ranked
it, equal scores broken as the metric breaks them):
does the top hit share the query's title, is it a member of another same-product group (two groups
of one product), does a labelled match tie with it (the metric's random tie-break decided), and is its photo at 80 x 60 px at least as close to the query's (mean absolute
difference, 0-255 grey levels) as the nearest labelled match's (a miss no photo distance can fix).
The paired bootstrap (:func:`components.promotion.bootstrap.paired_bootstrap`, 1,000 resamples of
the queries) compares each rule and the served vector with ``baseline_concat``.

**Category.** A vector that follows the title gives listings with one normalised title (nearly) one
vector, so the probe gives them one label. Test listings whose title also occurs in the train split
are split into: ``conflicting`` (the train split never gives that title this test listing's leaf
category), ``ambiguous`` (the train split gives that title several leaf categories, this one among
them) and ``consistent``; the rest have a title unseen in training. Each run's probe errors
(``evaluate/eval_details``) of the served vector and of the MiniLM title baseline are counted per part.

Writes ``OUT.json`` (every number, every miss) and ``OUT.html`` (the tables and, for the first run,
each miss of the served vector as query / its top hit / its nearest labelled match, with photos).

    .venv/bin/python benchmarks/headroom.py [LABEL=]RUN_DIR [...] --out OUT [--no-photos]

RUN_DIR is an ``item run`` output folder (``runs/<run id>``, holding ``item-training-*``); all runs must
have evaluated the same catalog rows. The committed copies (``benchmarks/results/headroom_*``) were
written with ``--no-photos`` (no catalog data in git): that page names each listing by id and title;
re-run without it to see the photos.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from item_model.evaluation import concat_baseline, pixel_baseline, text_baseline  # noqa: E402
from item_model.image_utils import decode_image, load_image_bytes  # noqa: E402
from item_model.io import atomic_path  # noqa: E402
from components.promotion.bootstrap import load_details, paired_bootstrap  # noqa: E402
from components.steps.training import load_validated  # noqa: E402
from item_model.metrics import retrieval_details, tie_break_order  # noqa: E402
from item_model.processing_item import default_bert_path  # noqa: E402
from item_model.title_decides import normalise_title  # noqa: E402

#: photo sizes (height, width) of the reference rules; (80, 60) is the catalog's own size
RULE_SIZES = {"8x8": (8, 8), "16x16": (16, 16), "32x32": (32, 32), "80x60": (80, 60)}
PROBE_MODELS = ("item", "baseline_text_minilm")
TITLE_PARTS = ("conflicting", "ambiguous", "consistent", "unseen_title")
METRICS = ("recall@1", "mAP")


def photos(df, size_hw: tuple[int, int]) -> np.ndarray:
    """Every listing's photo decoded and resized to ``size_hw``. (n, H, W, 3) uint8."""
    rows = df[["product_id", "image_bytes", "image_uri"]].to_dict("records")
    return np.stack([decode_image(load_image_bytes(r), size_hw) for r in rows])


def rule_embedding(titles: np.ndarray, query_index: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Embedding whose inner products are ``2 [same normalised title] + cosine(pixels)`` for every
    query row against every gallery row.

    Args:
        titles: (n,) object, normalised titles (None = none; never equal to another).
        query_index: (q,) int64 rows that query: only their titles get a one-hot column (no other
            pair's title term is ever read).
        pixels: (n, H, W, 3) uint8.

    Returns:
        (n, T + H*W*3) float32, T = the number of distinct query titles. Raw pixels are non-negative,
        so the cosine is in [0, 1] and a listing with the query's title always ranks above one without.
    """
    keys = sorted({titles[i] for i in query_index if titles[i] is not None})
    col = {t: c for c, t in enumerate(keys)}
    block = np.zeros((len(titles), len(keys)), dtype=np.float32)
    for i, t in enumerate(titles):
        if t in col:
            block[i, col[t]] = np.sqrt(2.0)
    flat = pixels.reshape(len(pixels), -1).astype(np.float32)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    return np.concatenate([block, flat], axis=1)


def classify_misses(emb: np.ndarray, details: dict, groups: np.ndarray, titles: np.ndarray, full: np.ndarray,
                    tie_seed: int = 0) -> list[dict]:
    """Every query a model gets wrong at rank 1, described.

    The top hit of a miss is the best-scoring listing that is not a labelled match (equal scores broken
    by the fixed random permutation of :func:`item_model.metrics.retrieval_ranks`, ``tie_seed`` its
    seed): the one the metric ranked first. A labelled match that ties with it (within 1e-6, the
    rounding of float32 products) and lost the metric's draw is flagged ``tied_with_match``.

    Args:
        emb: (n, D) float32, the embedding the details were scored from.
        details: that model's ``{"retrieval": {"query_index", "recall@1"}}`` (eval_details).
        groups: (n,) int64 same-product group ids (-1 = none). titles: (n,) normalised titles.
        full: (n, 80, 60, 3) uint8 photos at the catalog's own size.

    Returns:
        one dict per miss: ``query``, ``top1``, ``mate`` (the labelled match whose photo is closest
        to the query's; rows of the catalog), ``top1_same_title`` / ``top1_in_other_group`` (bool: the
        top hit is itself a member of another same-product group), ``tied_with_match`` (a labelled
        match has the top hit's score, within 1e-6), ``top1_mad`` / ``mate_mad`` (mean absolute
        difference of the 80 x 60 RGB photos to the query's, grey levels 0-255), ``photo_cannot_tell``
        (``top1_mad <= mate_mad``).
    """
    r = details["retrieval"]
    tiebreak = tie_break_order(len(groups), tie_seed)
    out = []
    for q, hit in zip(r["query_index"], r["recall@1"]):
        if hit:
            continue
        q = int(q)
        scores = emb @ emb[q]
        scores[q] = -np.inf
        is_mate = groups == groups[q]
        other = np.where(is_mate, -np.inf, scores)
        top = np.flatnonzero(other == other.max())
        t1 = int(top[np.argmin(tiebreak[top])])     # the best non-match, which the metric ranked first
        mates = np.flatnonzero(is_mate)
        mates = mates[mates != q]
        qa = full[q].astype(np.float32)
        mad = [float(np.abs(qa - full[m]).mean()) for m in mates]
        m = int(mates[int(np.argmin(mad))])
        t1_mad = float(np.abs(qa - full[t1]).mean())
        out.append({"query": q, "top1": t1, "mate": m, "top1_same_title": bool(titles[t1] == titles[q]),
                    "top1_in_other_group": bool(groups[t1] >= 0),
                    "tied_with_match": bool(scores[is_mate].max() >= scores[t1] - 1e-6),
                    "top1_mad": t1_mad, "mate_mad": min(mad), "photo_cannot_tell": bool(t1_mad <= min(mad))})
    return out


def summarise_misses(misses: list[dict]) -> dict:
    """Counts of :func:`classify_misses` rows."""
    return {"misses": len(misses), **{k: int(sum(m[k] for m in misses))
                                      for k in ("top1_same_title", "top1_in_other_group", "tied_with_match",
                                                "photo_cannot_tell")}}


def title_label_parts(titles: np.ndarray, labels: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Each listing's part of :data:`TITLE_PARTS` (see the module docstring), from the train split's
    labels of its normalised title. (n,) object; meaningful for validation/test rows (a train row's
    own label counts)."""
    seen: dict[str, set] = {}
    for t, y in zip(titles[split == "train"], labels[split == "train"]):
        if t is not None:
            seen.setdefault(t, set()).add(y)
    out = np.empty(len(titles), dtype=object)
    for i, (t, y) in enumerate(zip(titles, labels)):
        s = seen.get(t) if t is not None else None
        out[i] = "unseen_title" if not s else "conflicting" if y not in s else "ambiguous" if len(s) > 1 else "consistent"
    return out


def probe_errors_by_part(probe: dict, parts: np.ndarray) -> dict:
    """``{part: {"test_listings", "errors"}}`` of one model's probe (``test_index``, ``y_true``, ``y_pred``)."""
    part = parts[np.asarray(probe["test_index"], dtype=np.int64)]
    wrong = np.asarray(probe["y_true"]) != np.asarray(probe["y_pred"])
    return {p: {"test_listings": int((part == p).sum()), "errors": int((wrong & (part == p)).sum())} for p in TITLE_PARTS}


def _png(a: np.ndarray) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a).resize((a.shape[1] * 2, a.shape[0] * 2), Image.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_html(path: Path, result: dict, misses: list[dict], df, full: np.ndarray, with_photos: bool = True) -> None:
    """The table of rules and runs, and the first run's misses as triples (query, top hit, labelled
    match), with their photos embedded unless ``with_photos`` is false (a page to commit: no catalog
    data in the repository)."""
    pids, raw_titles = df["product_id"].astype(str).tolist(), df["title"].tolist()
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{v['recall@1']:.4f}</td><td>{v['mAP']:.4f}</td>"
        f"<td>{v['vs_baseline_concat']['recall@1']['delta']:+.4f} [{v['vs_baseline_concat']['recall@1']['ci_low']:+.4f}, "
        f"{v['vs_baseline_concat']['recall@1']['ci_high']:+.4f}]</td></tr>"
        for name, v in result["scores"].items())
    cells = []
    for m in misses:
        def fig(role, i, extra=""):
            img = f"<img src='{_png(full[i])}'>" if with_photos else ""
            return (f"<figure>{img}<figcaption><b>{role}</b> {html.escape(pids[i])}<br>"
                    f"{html.escape(str(raw_titles[i]))}{extra}</figcaption></figure>")
        cells.append("<div class='miss'>" + fig("query", m["query"])
                     + fig("top hit", m["top1"], f"<br>photo MAD {m['top1_mad']:.2f}"
                           + (" (in another group)" if m["top1_in_other_group"] else "")
                           + (" (tied with the match)" if m["tied_with_match"] else ""))
                     + fig("labelled match", m["mate"], f"<br>photo MAD {m['mate_mad']:.2f}") + "</div>")
    first = result["runs"][0]
    cat_rows = "".join(
        f"<tr><td>{html.escape(run['run'])}: {m}</td>" + "".join(
            f"<td>{c[p]['errors']} / {c[p]['test_listings']}</td>" for p in TITLE_PARTS) + "</tr>"
        for run in result["runs"] for m, c in run["category_errors_by_title_part"].items())
    page = f"""<!doctype html><meta charset="utf-8"><title>Headroom on the catalog's labels</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
.miss{{display:flex;gap:12px;border-bottom:1px solid #ddd;padding:8px 0}}figure{{margin:0;width:200px;font-size:12px}}</style>
<h1>How much is left on the catalog's own labels</h1><h2>Same-product search</h2>
<p>{result['n_queries']} same-product queries over {result['n_gallery']} listings. Reference rules know how the
labels were built (identical title, then the nearest photo); the runs are the served vector of each run and
the best baseline. Interval: paired bootstrap against MiniLM ⊕ pixels (1,000 resamples, 95 %).</p>
<table><tr><th>ranking</th><th>Recall@1</th><th>mAP</th><th>Recall@1 − baseline_concat [95 % CI]</th></tr>{rows}</table>
<h2>Category: probe errors / test listings, by what the train split says of the same title</h2>
<table><tr><th>run: embedding</th>{''.join(f"<th>{p}</th>" for p in TITLE_PARTS)}</tr>{cat_rows}</table>
<h2>Misses of the served vector, {html.escape(first['run'])}</h2>
<p>{html.escape(json.dumps(first['summary']['item']))}. Photo MAD: mean absolute difference to the query's photo
at 80 x 60 px (0-255); where the top hit's is not larger, no photo distance prefers the labelled match.</p>
{''.join(cells)}"""
    path.write_text(page)


def _labelled(arg: str) -> tuple[str, Path]:
    """``"LABEL=DIR"`` -> (LABEL, DIR); ``"DIR"`` -> (DIR's name, DIR)."""
    label, sep, path = arg.partition("=")
    return (label, Path(path)) if sep else (Path(arg).name, Path(arg))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="[LABEL=]RUN_DIR", help="LABEL (no '=') names the run in the outputs "
                    "(default: the folder's name)")
    ap.add_argument("--out", required=True, type=Path, help="writes OUT.json and OUT.html")
    ap.add_argument("--no-photos", action="store_true",
                    help="leave the photos out of OUT.html (for a copy to commit: no catalog data in git)")
    args = ap.parse_args(argv)
    t0 = time.time()
    labels, folders = zip(*(_labelled(r) for r in args.runs))
    pipeline = [next(f.glob("item-training-*")) for f in folders]
    df, _ = load_validated(str(pipeline[0] / "validate-catalog" / "validated_catalog"))
    for p in pipeline[1:]:
        other, _ = load_validated(str(p / "validate-catalog" / "validated_catalog"))
        if other["product_id"].astype(str).tolist() != df["product_id"].astype(str).tolist():
            raise ValueError(f"{p}: evaluated other catalog rows than {pipeline[0]}")
    groups = df["group_id"].fillna(-1).astype("int64").to_numpy()
    titles = np.array([normalise_title(t) for t in df["title"]], dtype=object)
    query_index = np.flatnonzero(groups >= 0)
    pids = df["product_id"].astype(str).to_numpy()
    parts = title_label_parts(titles, df["category"].to_numpy(dtype=object), df["split"].to_numpy(dtype=object))
    print(f"{len(df)} listings, {len(query_index)} queries", flush=True)
    scores, details = {}, {}
    full = None
    for name, size in RULE_SIZES.items():
        px = photos(df, size)
        if size == RULE_SIZES["80x60"]:
            full = px
        d = retrieval_details(rule_embedding(titles, query_index, px), groups)
        details[f"rule: title, then pixels {name}"] = {"retrieval": d}
        print(f"rule title+pixels {name}: Recall@1 {d['recall@1'].mean():.4f} ({time.time() - t0:.0f} s)", flush=True)
    concat_emb = concat_baseline(text_baseline(df, default_bert_path(), progress=False),
                                 pixel_baseline(df, progress=False))             # as the evaluate step computes it
    runs, concat_misses = [], None
    for label, p in zip(labels, pipeline):
        ev = load_details(p / "evaluate" / "eval_details")
        if not np.array_equal(ev["item"]["retrieval"]["query_index"], query_index):
            raise ValueError(f"{p}: its same-product queries differ from the catalog's groups")
        with np.load(p / "evaluate" / "item_embeddings", allow_pickle=False) as z:
            if z["product_id"].astype(str).tolist() != pids.tolist():
                raise ValueError(f"{p}: item_embeddings rows differ from the validated catalog's")
            served = z["item"]
        if concat_misses is None:
            if not np.array_equal(retrieval_details(concat_emb, groups)["recall@1"], ev["baseline_concat"]["retrieval"]["recall@1"]):
                raise ValueError(f"{p}: MiniLM ⊕ pixels recomputed here misses other queries than its eval_details")
            concat_misses = classify_misses(concat_emb, ev["baseline_concat"], groups, titles, full)
            details["baseline_concat"] = ev["baseline_concat"]
        misses = classify_misses(served, ev["item"], groups, titles, full)
        details[f"{label}: item"] = ev["item"]
        summary = {"item": summarise_misses(misses),
                   "missed_by_item_and_baseline_concat": len({x["query"] for x in misses} & {x["query"] for x in concat_misses})}
        category = {m: probe_errors_by_part(ev[m]["probe"], parts) for m in PROBE_MODELS}
        runs.append({"run": label, "folder": str(p), "summary": summary, "misses": misses, "category_errors_by_title_part": category})
        print(f"{label}: category errors by title part {json.dumps(category)}", flush=True)
        print(f"{label}: {json.dumps(summary)}", flush=True)
    for miss in (x for v in [concat_misses] + [run["misses"] for run in runs] for x in v):
        miss.update({f"{k}_id": str(pids[miss[k]]) for k in ("query", "top1", "mate")})
    baseline_summary = summarise_misses(concat_misses)
    print(f"baseline_concat: {json.dumps(baseline_summary)}", flush=True)
    concat = details["baseline_concat"]
    for name, d in details.items():
        scores[name] = {k: float(np.mean(d["retrieval"][k])) for k in METRICS}
        scores[name]["vs_baseline_concat"] = {k: paired_bootstrap(d, concat, k) for k in METRICS}
    result = {"n_gallery": int(len(df)), "n_queries": int(len(query_index)), "scores": scores, "runs": runs,
              "baseline_concat": {"summary": baseline_summary, "misses": concat_misses},
              "wall_s": time.time() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
    with atomic_path(args.out.with_suffix(".html")) as tmp:
        write_html(tmp, result, runs[0]["misses"], df, full, with_photos=not args.no_photos)
    for name, v in scores.items():
        c = v["vs_baseline_concat"]["recall@1"]
        print(f"| {name} | {v['recall@1']:.4f} | {v['mAP']:.4f} | {c['delta']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] |")
    return result


if __name__ == "__main__":
    main()
