"""The served vector's read-out weight w, studied on finished runs without embedding the catalog again.

The served vector of a listing with title and photo is ``s = normalize(w t + j)`` (t the title
stream's ``[CLS]``, j the joint pass's ``[CLS]``, both L2-normalised; ``ItemModel.embed``). The
evaluation step keeps the vectors it scored (``evaluate/item_embeddings``: ``item`` = s,
``item_text_only`` = t), so j is recovered exactly: with c = ||w t + j||, c s = w t + j and ||j|| = 1
give c^2 - 2 c w (s.t) + w^2 - 1 = 0, whose larger root is c whenever t.j >= -1/w (checked on every
row: the recovered j must have unit norm). Each variant is then scored with the pipeline's own
:func:`item_model.evaluation.score_embeddings` (same split, gallery, probe with C chosen on the
validation split, title-decides check):

* ``w=<v>``: ``normalize(v t + j)`` for each v of ``--weights`` (the run's own w reproduces its eval.json);
* ``concat``: ``[t, j] / sqrt(2)`` (768-d; a cosine equal to the mean of the two cosines).

    .venv/bin/python benchmarks/readout_weights.py RUN_DIR [RUN_DIR ...] --json out.json [--weights 4,5,6,8]

RUN_DIR is a kfp.local pipeline run folder (``runs/<id>/item-training-<timestamp>``). Every variant
is scored on all queries, as eval.json (with the paired bootstrap of each w against each baseline of
the run's ``evaluate/eval_details``), and also on the queries of each split (a query's split is its
listing's). The choice of w, fixed before any run was scored: **the w with the best mean of
same-product Recall@1 and title-decides Recall@1 over the validation split's queries** (ties: the
smaller w); its test-split numbers are then the unbiased ones to quote. Each run also gets
``pipeline_rule``: what the pipeline's own selection (``train_config.readout_weights``, at the end of
pretrain, :func:`item_model.evaluation.choose_readout_weight`) chooses from the same vectors, its
gallery the validation listings and their train-split title partners (``--selection-only``: that alone).

``--titles-disagree`` also scores each ``w=<v>`` on the titles-disagree check (:mod:`item_model.titles_disagree`):
the group members' t and j re-embedded under their rewritten titles by the run's model.

``--text-pooling cls,mean`` compares read-outs of the title stream's t (``ItemConfig.text_pooling``):
t is re-embedded from the run's model for each pooling the run did not serve (a title-only pass over
the catalog), j stays the one recovered above; variants are then named ``<pooling>/w=<v>`` and
``<pooling>/title`` (t alone), each with the pipeline's rule (``pipeline_rule/<pooling>``), the
bootstrap against each baseline and against the first pooling's same variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHOWN = ("category_accuracy", "category_macro_f1", "recall@1", "mAP", "title_decides_recall@1")


def l2(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def recover_joint(served: np.ndarray, text: np.ndarray, w: float) -> np.ndarray:
    """j from s = normalize(w t + j) and t, (n, D) float32 each (see the module docstring).

    Raises:
        ValueError: w <= 1 (both roots then fit), or a row whose recovered j is not unit-norm
            (t.j < -1/w there: the smaller root was the true one).
    """
    if w <= 1:
        raise ValueError(f"w={w}: the joint vector is recoverable this way only for w > 1")
    s, t = served.astype(np.float64), text.astype(np.float64)
    st = (s * t).sum(1)
    c = w * st + np.sqrt(np.maximum(w * w * st * st - w * w + 1, 0.0))
    j = c[:, None] * s - w * t
    bad = np.flatnonzero(np.abs(np.linalg.norm(j, axis=1) - 1) > 1e-3)
    if len(bad):
        raise ValueError(f"{len(bad)} row(s) (first {bad[:5].tolist()}) do not give a unit-norm joint vector")
    return l2(j)


def title_vectors(run: Path, df: pd.DataFrame, pooling: str) -> np.ndarray:
    """The run's model's title-stream vector t of every row of ``df`` read out by ``pooling``
    (``ItemConfig.text_pooling``), (n, D) float32 L2-normalised: the title fed alone, as
    ``embed_catalog(..., "text")`` serves it."""
    from item_model.inference import embed_catalog
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor

    model_dir = run / "pretrain" / "model"
    model = ItemModel.from_pretrained(str(model_dir)).eval()
    model.config.text_pooling = pooling
    return embed_catalog(model, ItemProcessor.from_pretrained(str(model_dir)), df, "text")


def titles_disagree_vectors(run: Path, df: pd.DataFrame, text: np.ndarray, joint: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, j, groups) of the titles-disagree catalog (:mod:`item_model.titles_disagree`): the rows of
    the rewritten group members embedded again by the run's model (t: the title alone, j: the joint
    pass's ``[CLS]``, read-out weight 0), every other row as given."""
    from item_model.inference import embed_catalog_modes
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor
    from item_model.titles_disagree import titles_disagree_catalog

    model_dir = run / "pretrain" / "model"
    model = ItemModel.from_pretrained(str(model_dir)).eval()
    model.config.readout_text_weight = 0.0
    rewritten, groups = titles_disagree_catalog(df)
    members = np.flatnonzero(groups >= 0)
    kinds = embed_catalog_modes(model, ItemProcessor.from_pretrained(str(model_dir)), rewritten.iloc[members],
                                ("joint", "text"), progress=False)
    t, j = text.copy(), joint.copy()
    t[members], j[members] = kinds["text"], kinds["joint"]
    return t, j, groups


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", required=True)
    p.add_argument("--weights", default="4,5,6,8", help="read-out weights w to score")
    p.add_argument("--no-concat", action="store_true")
    p.add_argument("--selection-only", action="store_true",
                   help="only the pipeline's rule (evaluation.readout_weight_scores), no full scoring")
    p.add_argument("--score-weights", default="",
                   help="score only these w on all queries (default: every w of --weights; the pipeline's "
                        "rule always sees all of --weights)")
    p.add_argument("--text-pooling", default="",
                   help="comma list of title read-outs (ItemConfig.text_pooling: cls, mean) to compare: t is "
                        "re-embedded from the run's model for each one the run did not use")
    p.add_argument("--titles-disagree", action="store_true",
                   help="also score every w on the titles-disagree check (the group members re-embedded "
                        "under their rewritten titles with the run's model)")
    return p.parse_args()


def _mean_over_runs(out: dict) -> None:
    """Add ``mean_over_runs`` (mean ± sd over the runs, i.e. seeds, of every variant) and the runs'
    ``chosen_on_validation`` to ``out``, printing each variant's means."""
    runs = list(out["runs"].values())
    out["mean_over_runs"] = {}
    for name in (n for n in runs[0] if "w=" in n or n == "concat" or n.endswith("title")):
        row = {}
        for key in SHOWN + ("validation/title_decides_recall@1", "test/title_decides_recall@1"):
            v = [r[name][key] for r in runs]
            row[key] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)), "runs": v}
        out["mean_over_runs"][name] = row
        print(f"mean of {len(runs)} {name:8s} " + "  ".join(
            f"{k} {row[k]['mean']:.4f} ± {row[k]['sd']:.4f}" for k in SHOWN), flush=True)
    out["chosen_on_validation"] = [r.get("chosen_on_validation") for r in runs]


def main() -> None:
    from item_model.configuration_item import ItemConfig
    from item_model.evaluation import (readout_selection_rows, readout_weight_scores, score_embeddings,
                                       title_decides_metrics)
    from components.promotion.bootstrap import load_details, paired_bootstrap
    from components.steps.training import load_validated
    from item_model.title_decides import title_decides_groups

    args = _parse_args()
    weights = [float(v) for v in args.weights.split(",")]
    out: dict = {"method": "served vector re-weighted from the evaluation's stored vectors (j recovered from "
                           "s and t), scored with item_model.evaluation.score_embeddings on the run's own split",
                 "runs": {}}
    for run in args.runs:
        run = Path(run)
        df, _ = load_validated(str(run / "validate-catalog" / "validated_catalog"))
        with np.load(run / "evaluate" / "item_embeddings", allow_pickle=False) as z:
            ids, served, text = z["product_id"], z["item"], z["item_text_only"]
        if not np.array_equal(ids, df["product_id"].astype(str).to_numpy()):
            raise ValueError(f"{run}: item_embeddings rows differ from the validated catalog's")
        run_config = ItemConfig.from_pretrained(run / "pretrain" / "model")
        w_run = float(run_config.readout_text_weight)
        joint = recover_joint(served, text, w_run)
        run_pooling = getattr(run_config, "text_pooling", "cls")
        poolings = [v for v in args.text_pooling.split(",") if v] or [run_pooling]
        texts = {pool: text if pool == run_pooling else title_vectors(run, df, pool) for pool in poolings}
        split, groups = df["split"].to_numpy(), title_decides_groups(df)
        # the pipeline's own rule (train_config.readout_weights, run at the end of pretrain): the same
        # vectors, the validation listings and their train-split title partners as the gallery
        rows = readout_selection_rows(df)
        at = pd.Index(df["product_id"].astype(str)).get_indexer(rows["product_id"].astype(str))
        res = {"run_readout_text_weight": w_run, "run_text_pooling": run_pooling}
        for pool, t in texts.items():
            key = "pipeline_rule" if len(texts) == 1 else f"pipeline_rule/{pool}"
            res[key] = rule = readout_weight_scores(joint[at], t[at], rows, weights, reference=df)
            print(f"{run.parent.name} {key} ({len(rows)} listings, {rule['n_queries']} + "
                  f"{rule['title_decides_n_queries']} queries): w={rule['chosen']:g}  "
                  + "  ".join(f"{w} {v:.4f}" for w, v in rule["score"].items()), flush=True)
        out["runs"][str(run)] = res
        if args.selection_only:
            continue
        baselines = {k: v for k, v in load_details(run / "evaluate" / "eval_details").items()
                     if k.startswith("baseline_")}
        prefix = (lambda pool: "") if len(texts) == 1 else (lambda pool: f"{pool}/")
        scored = [float(v) for v in args.score_weights.split(",") if v] or weights
        variants = {f"{prefix(pool)}w={v:g}": (lambda v=v, t=t: l2(v * t + joint))
                    for pool, t in texts.items() for v in scored}
        variants.update({f"{prefix(pool)}title": (lambda t=t: t) for pool, t in texts.items() if len(texts) > 1})
        kept: dict = {}
        if not args.no_concat:
            variants["concat"] = lambda: np.concatenate([text, joint], axis=1) / np.float32(np.sqrt(2))
        if args.titles_disagree:
            from item_model.titles_disagree import titles_disagree_metrics
            td_text, td_joint, td_groups = titles_disagree_vectors(run, df, texts[run_pooling], joint)
        for name, make in variants.items():
            t0 = time.perf_counter()
            emb = make()
            metrics, details = score_embeddings(emb, df, split, groups)
            res[name] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            if args.titles_disagree and name.startswith("w="):
                res[name].update(titles_disagree_metrics(l2(float(name[2:]) * td_text + td_joint), td_groups)[0])
            if "w=" in name or name.endswith("title"):   # paired bootstrap against each baseline, as the gate's
                res[name]["bootstrap"] = {f"{b}/{m}": paired_bootstrap(details, d, m) for b, d in baselines.items()
                                          for m in ("recall@1", "mAP", "category_accuracy", "category_macro_f1")}
                first = f"{poolings[0]}/{name.split('/', 1)[1]}" if "/" in name else name
                if first != name and first in kept:      # this title read-out against the first one
                    res[name]["bootstrap"].update({f"{first}/{m}": paired_bootstrap(details, kept[first], m)
                                                   for m in ("recall@1", "mAP", "category_accuracy",
                                                             "category_macro_f1")})
                kept[name] = details
            td = title_decides_metrics(emb, groups)[1]
            for part in ("validation", "test"):
                for key, d in (("recall@1", details["retrieval"]), ("title_decides_recall@1", td)):
                    keep = split[d["query_index"]] == part
                    res[name][f"{part}/{key}"] = float(d["recall@1"][keep].mean())
                    res[name][f"{part}/{key.replace('recall@1', 'n_queries')}"] = int(keep.sum())
            print(f"{run.parent.name} {name:8s} {time.perf_counter() - t0:5.0f} s  "
                  + "  ".join(f"{k} {res[name][k]:.4f}" for k in SHOWN + ("titles_disagree_recall@1",)
                              if k in res[name]), flush=True)
        score = {n: (res[n]["validation/recall@1"] + res[n]["validation/title_decides_recall@1"]) / 2
                 for n in res if n.startswith("w=")} if len(texts) == 1 else {}
        if not score:           # several title read-outs: the rule per read-out is pipeline_rule/<pooling>
            out["runs"][str(run)] = res
            Path(args.json).write_text(json.dumps(out, indent=1))
            continue
        res["chosen_on_validation"] = max(score, key=lambda n: (score[n], -float(n[2:])))
        print(f"{run.parent.name} chosen on validation: {res['chosen_on_validation']} "
              + "  ".join(f"{n} {v:.4f}" for n, v in score.items()), flush=True)
        out["runs"][str(run)] = res
        Path(args.json).write_text(json.dumps(out, indent=1))
    Path(args.json).write_text(json.dumps(out, indent=1))
    if len(out["runs"]) > 1 and not args.selection_only:   # mean ± sd over the runs (seeds) of every variant
        _mean_over_runs(out)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
