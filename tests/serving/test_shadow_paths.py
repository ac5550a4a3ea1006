"""Shadow traffic and the traffic log, through their real classes (serving/shadow.py,
serving/traffic_log.py) on the real catalog index of ``packaged_model``: a sample below 1 shadows a
share of the requests by a seeded draw (reproducible), a full queue drops comparisons (counted, the
caller never blocks), and rows are written once the oldest buffered row is older than the flush
interval.

The challenger bundle given to :class:`Shadow` is a small stand-in holding the real packaged catalog
index (ids and vectors) and the search is a plain cosine top-k over it: the real one lives inside the
BentoML service module, which cannot be imported outside ``bentoml serve`` (it resolves and loads the
served model at import). The embed callable of the queue test blocks on purpose, so that the queue
fills deterministically."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest


def _wait_for(condition, what: str, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(every)


@pytest.fixture(scope="module")
def bundle(packaged_model):
    from components.index.layout import load_catalog_index

    listings, emb, _ = load_catalog_index(packaged_model["index_dir"])
    ids = listings["product_id"].astype(str).to_numpy()
    return SimpleNamespace(tag=packaged_model["tag"], ids=ids, indexes={"joint": emb["joint"]},
                           row_of={p: i for i, p in enumerate(ids)})


def _search(served, query, k, exclude=None, kind=None):
    scores = served.indexes["joint"] @ np.asarray(query, dtype=np.float32)
    if exclude is not None:
        scores[exclude] = -np.inf
    return [str(served.ids[r]) for r in np.argsort(-scores)[:k]]


def test_shadow_sample_below_one_is_a_seeded_share_of_requests(bundle, tmp_path):
    from serving.shadow import Shadow

    draws = []
    for _ in range(2):
        shadow = Shadow(bundle, _search, None, str(tmp_path), "v1", sample=0.5, seed=7)
        draws.append([shadow.sampled() for _ in range(2000)])
        shadow.close()
    assert draws[0] == draws[1]                                   # the same seed, the same requests
    assert 900 <= sum(draws[0]) <= 1100                           # ~half of 2000 (binomial sd ~22)
    never = Shadow(bundle, _search, None, str(tmp_path), "v0", sample=0.0, seed=7)
    always = Shadow(bundle, _search, None, str(tmp_path), "v2", sample=1.0, seed=7)
    assert not any(never.sampled() for _ in range(500)) and all(always.sampled() for _ in range(500))
    never.close()
    always.close()

    # sampled product-id queries are compared and logged: the challenger here is the champion itself
    shadow = Shadow(bundle, _search, None, str(tmp_path), "v3", sample=0.5, seed=7, rows_per_file=1000)
    submitted = 0
    for pid in bundle.ids[:40]:
        if shadow.sampled():
            row = bundle.row_of[pid]
            champion_ids = _search(bundle, bundle.indexes["joint"][row], 10, row)
            assert shadow.submit(route="/similar", champion=bundle, query_kind="catalog", champion_ms=1.0,
                                 champion_ids=champion_ids, product_id=pid)
            submitted += 1
    shadow.close()
    from serving.shadow import read_shadow_log
    rows = read_shadow_log(str(tmp_path), "v3")
    assert 0 < submitted < 40 and len(rows) == submitted == shadow.done
    assert all(r["overlap@10"] == 1.0 and r["challenger"] == bundle.tag for r in rows)


def test_shadow_full_queue_drops_without_blocking_and_counts(bundle, tmp_path):
    from serving.shadow import Shadow, read_shadow_log

    release, started = threading.Event(), threading.Event()

    def slow_embed(served, listings):          # holds the one background thread until released
        started.set()
        assert release.wait(120)
        return np.asarray(served.indexes["joint"][:1], dtype=np.float32)

    shadow = Shadow(bundle, _search, slow_embed, str(tmp_path), "v1", sample=1.0, max_pending=3, rows_per_file=100)
    listing = SimpleNamespace(title="Puma Men Black Sports Shoes", kind="joint")
    vector = bundle.indexes["joint"][0]
    try:
        results = [shadow.submit(route="/embed", champion=bundle, query_kind="joint", champion_ms=1.0,
                                 champion_vector=vector, listing=listing) for _ in range(10)]
        # all ten returned while the first comparison is still held: submitting never waits for the queue
        assert not release.is_set()
        assert results == [True] * 3 + [False] * 7
        assert (shadow.pending, shadow.dropped, shadow.done) == (3, 7, 0)
        assert started.wait(60)
    finally:
        release.set()
    _wait_for(lambda: shadow.pending == 0, "the queued comparisons to finish")
    assert shadow.submit(route="/embed", champion=bundle, query_kind="joint", champion_ms=1.0,
                         champion_vector=vector, listing=listing)           # room again
    shadow.close()
    rows = read_shadow_log(str(tmp_path), "v1")
    assert len(rows) == shadow.done == 4 and shadow.dropped == 7
    assert {r["query_title"] for r in rows} == {"Puma Men Black Sports Shoes"}


def test_shadow_log_and_traffic_log_flush_by_age(tmp_path):
    from components.storage.layout import read_traffic_log, traffic_files
    from serving.shadow import ShadowLog, read_shadow_log
    from serving.traffic_log import TrafficLog, TrafficLogConfig

    row = {"timestamp": "2026-05-01T10:00:00.000+00:00", "route": "/similar", "query_kind": "catalog",
           "query_title": None, "product_id": "1", "champion": "item:a", "challenger": "item:b",
           "champion_ms": 1.0, "challenger_ms": 2.0, "overlap@10": 0.5, "champion_top10": ["2"] * 10,
           "challenger_top10": ["3"] * 10}
    log = ShadowLog(str(tmp_path), "v1", rows_per_file=1000, flush_seconds=0.3)
    t0 = time.monotonic()
    log.append(row)
    if time.monotonic() - t0 < 0.3:                              # (a loaded machine may already be past it)
        assert read_shadow_log(str(tmp_path), "v1") == []        # buffered: neither full nor old
    _wait_for(lambda: time.monotonic() - t0 > 0.35, "the row to age")
    log.append({**row, "product_id": "2"})                       # the next row finds the buffer old: written
    assert [r["product_id"] for r in read_shadow_log(str(tmp_path), "v1")] == ["1", "2"]
    assert log.rows_written == 2 and log.flush() is None

    now = datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)
    traffic = TrafficLog(TrafficLogConfig(str(tmp_path / "t"), sample_rate=1.0, rows_per_file=1000,
                                          flush_seconds=0.3), "item:a", seed=0, clock=lambda: now)
    emb = np.eye(3, 8, dtype=np.float32)
    t0 = time.monotonic()
    assert traffic.record(emb, ["text"] * 3, [True] * 3, [False] * 3, [4] * 3) == 3
    if time.monotonic() - t0 < 0.3:
        assert traffic_files(tmp_path / "t") == []
    _wait_for(lambda: time.monotonic() - t0 > 0.35, "the rows to age")
    traffic.record(emb[:1], ["text"], [True], [False], [4])
    assert len(traffic_files(tmp_path / "t")) == 1 and traffic.rows_written == 4
    # a batch of which nothing is sampled still writes rows that have grown old: a seed whose first
    # one-row draw keeps the row and whose second keeps nothing (the log draws rng.random(n) per batch)
    seed = next(sd for sd in range(100) if (lambda d: d[0] < 0.5 <= d[1])(np.random.default_rng(sd).random(2)))
    sparse = TrafficLog(TrafficLogConfig(str(tmp_path / "s"), sample_rate=0.5, rows_per_file=1000,
                                         flush_seconds=0.3), "item:a", seed=seed, clock=lambda: now)
    t0 = time.monotonic()
    assert sparse.record(emb[:1], ["text"], [True], [False], [4]) == 1
    _wait_for(lambda: time.monotonic() - t0 > 0.35, "the row to age")
    assert sparse.record(emb[1:2], ["text"], [True], [False], [4]) == 0
    assert len(traffic_files(tmp_path / "s")) == 1, "an old row stayed in memory after an unsampled batch"
    df = read_traffic_log(tmp_path / "s")
    assert len(df) == 1 and df["model_tag"].tolist() == ["item:a"]
    np.testing.assert_array_equal(df["embedding"].iloc[0], emb[0])
