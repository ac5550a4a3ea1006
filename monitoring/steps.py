"""The monitoring pipeline's steps as plain functions over local paths; the KFP components in
``components/`` (embed_current, drift_report, recommend_retraining) call these."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from item_model.io import write_json_atomic
from components.storage.embeddings import load_embeddings, sample_rows, save_embeddings
from components.storage.results import DriftSummary
from components.steps.training import record_failure

from .calibration import CalibrationStore
from .drift import DriftConfig, DriftInputError, detect_drift
from .inputs import load_reference, load_traffic_window, reference_dim, resolve_model, source_type, traffic_embeddings

logger = logging.getLogger(__name__)


def _location(path: Path | str) -> str:
    """A ``gs://`` URI as it is, a local path made absolute."""
    return path if isinstance(path, str) else str(path.resolve())


@record_failure
def embed_current_step(current: str, model_tag: str, bentoml_home: str | None, out_dir: str,
                       since: str = "", until: str = "", max_rows: int = 1000, seed: int = 0,
                       progress: bool = True) -> dict:
    """Embed the current window with the reference model and write the embeddings artifact
    (:mod:`components.storage.embeddings`).

    * catalog folder: rows with a title and an image, a seeded random sample of at most ``max_rows``,
      embedded by the model in the joint, text-only and image-only modes;
    * traffic log: the rows with ``since <= timestamp < until``, each under its own modality, after
      checking ``model_tag`` and the ``embedding`` dimension against the model.

    Returns:
        the artifact's ``embeddings.json`` content.

    Raises:
        DriftInputError: see :func:`source_type`, :func:`load_traffic_window`,
            :func:`traffic_embeddings`; an empty catalog window. components.catalog.CatalogError: an
            unreadable catalog.
    """
    tag, model_path = resolve_model(model_tag, bentoml_home)
    kind = source_type(current)
    meta: dict = {"model_tag": tag, "source": str(Path(current).resolve()), "source_type": kind,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    t0 = time.perf_counter()
    if kind == "catalog":
        from components.catalog import read_catalog
        from components.storage.embeddings import embed_modalities, usable_listings
        from item_model.modeling_item import ItemModel
        from item_model.processing_item import ItemProcessor

        df, dropped = usable_listings(read_catalog(current))
        if df.empty:
            raise DriftInputError(f"empty window: catalog {current!r} has no listing with a title and an image "
                                  f"(dropped {dropped})")
        n_all = len(df)
        df = df.iloc[sample_rows(len(df), max_rows, seed)].reset_index(drop=True)
        model = ItemModel.from_pretrained(model_path)
        processor = ItemProcessor.from_pretrained(model_path, model.config)
        logger.info("embedding %d of %d listings of %s with %s (joint, text, image)", len(df), n_all, current, tag)
        embeddings = embed_modalities(model, processor, df, progress=progress)
        years = pd.to_numeric(df["year"], errors="coerce").dropna().astype(int)
        meta.update(n_listings=n_all, n_embedded=len(df), dropped=dropped,
                    years=years.value_counts().sort_index().to_dict() if len(years) else {},
                    product_ids=df["product_id"].astype(str).tolist())
    else:
        window = load_traffic_window(current, since or None, until or None)
        embeddings = traffic_embeddings(window, tag, reference_dim(model_path))
        meta.update(since=since or None, until=until or None, n_rows=len(window),
                    first_timestamp=window["timestamp"].min().isoformat(),
                    last_timestamp=window["timestamp"].max().isoformat())
    meta["embed_time_s"] = round(time.perf_counter() - t0, 1)
    save_embeddings(out_dir, embeddings, meta)
    logger.info("current window: %s", {m: len(e) for m, e in embeddings.items()})
    return {**meta, "counts": {m: len(e) for m, e in embeddings.items()}}


@record_failure
def drift_report_step(current_dir: str, model_tag: str, bentoml_home: str | None, storage: str | None,
                      drift_config: dict | None, html_path: str, summary_path: str, progress: bool = True) -> dict:
    """Test the current embeddings against the model's reference, per modality; write the Evidently
    HTML report and the JSON summary.

    Returns:
        the summary (also written to ``summary_path``): :func:`detect_drift`'s plus ``model_tag``,
        ``current``, ``reference``, ``calibration_file``, ``html_report``, ``wall_time_s``.

    Raises:
        DriftInputError: model version mismatch between the current embeddings (``model_tag``) and
            the reference; a wrong ``embedding`` dimension; an empty window; no testable modality.
    """
    from .report import write_html

    t0 = time.perf_counter()
    config = DriftConfig.from_dict(drift_config)
    tag, model_path = resolve_model(model_tag, bentoml_home)
    reference, ref_meta = load_reference(model_path)
    current, cur_meta = load_embeddings(current_dir)
    if cur_meta.get("model_tag") != tag:
        raise DriftInputError(f"model version mismatch: the current embeddings' field 'model_tag' is "
                              f"{cur_meta.get('model_tag')!r} but the reference model is {tag!r}")
    store = CalibrationStore(storage)
    summary, snapshots = detect_drift(reference, current, config, store, tag, progress=progress)
    summary = {"model_tag": tag, **summary,
               "current": {k: v for k, v in cur_meta.items() if k != "product_ids"},
               "reference": {"path": ref_meta["path"], "n": ref_meta["n"], "dim": ref_meta["dim"],
                             "kinds": ref_meta["kinds"], "catalog_fingerprint": ref_meta.get("catalog_fingerprint")},
               "calibration_file": _location(store.path(tag)), "html_report": str(html_path),
               "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_html(snapshots, summary, html_path)
    summary["wall_time_s"] = round(time.perf_counter() - t0, 1)
    summary = DriftSummary.from_dict(summary, summary_path).to_dict()
    write_json_atomic(summary_path, summary)
    return summary


@record_failure
def recommend_step(summary_path: str, retrain: bool, catalog: str, json_path: str, markdown_path: str) -> dict:
    """Write the retraining recommendation (JSON and Markdown) for a drifted window.

    Returns:
        the recommendation dict (see :func:`monitoring.report.recommendation`).
    """
    from item_model.io import write_text_atomic

    from .report import recommendation, recommendation_markdown

    summary = DriftSummary.from_json(summary_path).to_dict()
    rec = recommendation(summary, retrain=retrain, catalog=catalog)
    write_json_atomic(json_path, rec)
    write_text_atomic(markdown_path, recommendation_markdown(rec))
    return rec


__all__ = ["embed_current_step", "drift_report_step", "recommend_step"]
