"""The VectorIndex backends on real embeddings: MiniLM title embeddings (the text baseline) of a real
catalog slice, grown to 5,000 vectors the way benchmarks/index.py grows synthetic catalogs. (The
tiny 2-layer test model's vectors are nearly all alike, which no trained model's are.)"""

from __future__ import annotations

import numpy as np
import pytest

from components.index.layout import load_catalog_index
from components.index.backends import (ExactIndex, FaissHNSWIndex, IndexVersionMismatch, USearchHNSWIndex,
                                               load_index, recall_at_k)


@pytest.fixture(scope="module")
def vectors(packaged_model) -> np.ndarray:
    import sys
    from pathlib import Path

    from item_model.evaluation import text_baseline
    from item_model.processing_item import default_bert_path
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from benchmarks.index import grow
    listings, _, _ = load_catalog_index(packaged_model["index_dir"])
    titles = listings.dropna(subset=["title"]).reset_index(drop=True)
    real = text_baseline(titles, default_bert_path(), progress=False).astype(np.float32)
    grown, sigma = grow(real, 5000)
    assert 0 < sigma < 0.2
    return grown


def test_exact_index_returns_the_true_top_k(vectors):
    index = ExactIndex(vectors, model_version="v1")
    q = vectors[:20]
    rows, scores = index.search(q, 10)
    truth = np.argsort(-(q @ vectors.T), axis=1)[:, :10]
    assert rows.shape == scores.shape == (20, 10)
    assert np.allclose(scores, np.take_along_axis(q @ vectors.T, truth, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()                            # best first
    assert recall_at_k(rows, truth, 10, vectors, q) == 1.0


@pytest.mark.parametrize("backend", ["faiss-hnsw-sq8", "usearch-hnsw"])
def test_hnsw_backends_reach_exact_recall_and_round_trip(vectors, backend, tmp_path):
    q = vectors[np.random.default_rng(0).choice(len(vectors), 100, replace=False)]
    exact_rows, _ = ExactIndex(vectors).search(q, 10)
    if backend == "faiss-hnsw-sq8":
        index = FaissHNSWIndex.build(vectors, m=16, ef_construction=64, ef_search=64, model_version="v1")
    else:
        index = USearchHNSWIndex.build(vectors, connectivity=16, expansion_add=64, expansion_search=64, dtype="f16")
        index.model_version = "v1"
    rows, scores = index.search(q, 10)
    assert rows.shape == (100, 10) and (rows >= 0).all() and len(index) == len(vectors)
    assert recall_at_k(rows, exact_rows, 10, vectors, q) >= 0.97
    assert np.allclose(scores[:, 0], np.sum(q * vectors[rows[:, 0]], axis=1), atol=0.02)   # cosine, quantised
    index.save(tmp_path / "ix")
    back = load_index(tmp_path / "ix", model_version="v1")
    assert back.kind == backend and len(back) == len(vectors)
    assert np.array_equal(back.search(q, 10)[0], rows)
    with pytest.raises(IndexVersionMismatch, match="never mixes two models"):
        load_index(tmp_path / "ix", model_version="v2")


def test_sq8_candidates_reranked_from_mapped_float16_vectors_recover_exact_order(vectors, tmp_path):
    """faiss HNSW-SQ8 returns 5 k candidates, re-scored from float16 vectors mapped from disk: the
    quantisation error leaves the final order (Recall@10 above SQ8's own) and the scores are the cosine
    to float16 precision; saved and loaded, the vectors stay mapped, not read into memory."""
    from components.index.backends import RerankedIndex

    q = vectors[np.random.default_rng(2).choice(len(vectors), 100, replace=False)]
    exact_rows, _ = ExactIndex(vectors).search(q, 10)
    inner = FaissHNSWIndex.build(vectors, m=16, ef_construction=64, ef_search=16, model_version="v1")
    alone = recall_at_k(inner.search(q, 10)[0], exact_rows, 10, vectors, q)
    index = RerankedIndex.build(inner, vectors, tmp_path / "ix", factor=5)
    rows, scores = index.search(q, 10)
    reranked = recall_at_k(rows, exact_rows, 10, vectors, q)
    assert reranked >= max(alone, 0.99)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ vectors.T, rows, axis=1), atol=2e-3)
    assert (np.diff(scores, axis=1) <= 1e-6).all() and index.memory_bytes() == inner.memory_bytes()
    index.save(tmp_path / "ix")
    back = load_index(tmp_path / "ix", model_version="v1")
    assert back.kind == "faiss-hnsw-sq8+rerank" and isinstance(back.vectors, np.memmap)
    assert np.array_equal(back.search(q, 10)[0], rows)


def test_recall_counts_ties_as_hits():
    base = np.eye(4, dtype=np.float32)
    vectors = np.vstack([base[0], base[0], base[0], base[1]])      # three identical listings
    q = base[0][None, :]
    assert recall_at_k(np.array([[2]]), np.array([[0]]), 1, vectors, q) == 1.0      # a tie is as good
    assert recall_at_k(np.array([[3]]), np.array([[0]]), 1, vectors, q) == 0.0
    assert recall_at_k(np.array([[2]]), np.array([[0]]), 1) == 0.0                  # id overlap alone misses it


def test_milvus_lite_backend_reaches_exact_recall_moves_with_its_folder_and_refuses_another_model(vectors, tmp_path):
    """The distributed backend through Milvus Lite (the same pymilvus client a Milvus cluster answers)."""
    import shutil

    from components.index.backends import MilvusIndex

    q = vectors[np.random.default_rng(1).choice(len(vectors), 100, replace=False)]
    exact_rows, exact_scores = ExactIndex(vectors).search(q, 10)
    index = MilvusIndex.build(vectors, str(tmp_path / "ix" / "milvus.db"), "item_v1", model_version="v1",
                              M=16, efConstruction=64, ef=64)
    rows, scores = index.search(q, 10)
    assert rows.shape == (100, 10) and len(index) == len(vectors) and (rows >= 0).all()
    assert recall_at_k(rows, exact_rows, 10, vectors, q) >= 0.97
    assert np.allclose(scores[:, 0], np.sum(q * vectors[rows[:, 0]], axis=1), atol=1e-4)   # float32 cosine
    index.save(tmp_path / "ix")
    index.close()
    shutil.move(str(tmp_path / "ix"), str(tmp_path / "moved"))          # the .db travels with its folder
    back = load_index(tmp_path / "moved", model_version="v1")
    assert back.kind == "milvus" and len(back) == len(vectors)
    assert recall_at_k(back.search(q, 10)[0], exact_rows, 10, vectors, q) >= 0.97
    with pytest.raises(IndexVersionMismatch, match="never mixes two models"):
        load_index(tmp_path / "moved", model_version="v2")
    back.close()
    # a collection holding another model's vectors, under a vector_index.json that claims v1: refused
    import json
    meta = json.loads((tmp_path / "moved" / "vector_index.json").read_text())
    other = MilvusIndex.build(vectors[:50], str(tmp_path / "moved" / "milvus.db"), "item_v1", model_version="v2")
    other.close()
    with pytest.raises(IndexVersionMismatch, match="holds the vectors of 'v2'"):
        MilvusIndex.load(tmp_path / "moved", meta)


def test_ivfpq_streamed_in_chunks_reranked_reaches_exact_recall_and_round_trips(vectors, tmp_path):
    """faiss IVF-PQ (48-byte codes) trained on a sample and fed the catalog in chunks, as a 10^7 catalog
    is built without ever holding it as float32 (benchmarks/index_streaming.py): the same rows as one
    build, far below HNSW-SQ8's memory, coarse alone, and re-ranked from float16 on disk at Recall@10
    >= 0.99; more cells scanned never lowers recall; the bad setting is named."""
    from components.index.backends import FaissIVFPQIndex, RerankedIndex

    q = vectors[np.random.default_rng(3).choice(len(vectors), 100, replace=False)]
    exact_rows, _ = ExactIndex(vectors).search(q, 10)
    assert FaissIVFPQIndex.default_nlist(len(vectors)) == 64 and FaissIVFPQIndex.default_nlist(10 ** 7) == 4096
    whole = FaissIVFPQIndex.build(vectors, m=48, nprobe=8, model_version="v1")
    streamed = FaissIVFPQIndex.trained(vectors[::2], len(vectors), m=48, nprobe=8, model_version="v1")
    for start in range(0, len(vectors), 1000):
        streamed.add(vectors[start:start + 1000])
    assert len(streamed) == len(vectors) and streamed.settings["nlist"] == 64
    assert streamed.memory_bytes() < 0.2 * FaissHNSWIndex.build(vectors, m=32).memory_bytes()
    recalls = []
    for nprobe in (1, 8, 64):
        streamed.set_ef(nprobe)
        recalls.append(recall_at_k(streamed.search(q, 10)[0], exact_rows, 10, vectors, q))
    assert recalls == sorted(recalls) and recalls[0] < 0.95
    whole.set_ef(8)
    assert recall_at_k(whole.search(q, 10)[0], exact_rows, 10, vectors, q) >= recalls[0]
    streamed.set_ef(16)
    index = RerankedIndex.build(streamed, vectors, tmp_path / "ix", factor=10)
    rows, scores = index.search(q, 10)
    assert recall_at_k(rows, exact_rows, 10, vectors, q) >= 0.99
    np.testing.assert_allclose(scores, np.take_along_axis(q @ vectors.T, rows, axis=1), atol=2e-3)
    index.save(tmp_path / "ix")
    back = load_index(tmp_path / "ix", model_version="v1")
    assert back.kind == "faiss-ivfpq+rerank" and back.inner.index.nprobe == 16
    assert np.array_equal(back.search(q, 10)[0], rows)
    with pytest.raises(ValueError, match="field 'm' 7 does not divide"):
        FaissIVFPQIndex.trained(vectors[:500], 500, m=7)
