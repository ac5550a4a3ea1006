"""Shadow comparison on live traffic: a challenger answers a sample of the champion's requests off the
request's critical path, and what users would have seen differently is logged per request.

With ``item serve --shadow VERSION`` the service loads the challenger beside the champion. For a
sampled request it first answers with the champion, then hands the query to one background thread
(:class:`Shadow`; a bounded queue, so a burst drops shadow work, never user requests): the
challenger embeds the same query, searches its own catalog index, and the log gets one row with the
overlap of the two top-10 lists (Overlap@10 = |A ∩ B| / 10), the ranks of the champion's first hit
in the challenger's list, and each model's latency. ``item gate show VERSION`` summarises that log in
a "live traffic" section (:func:`summarize_shadow`, :func:`shadow_report_html`), so a reviewer sees
what users would notice before approving.

Log: ``<storage root>/shadow/<challenger registry version>/shadow-<UTC time>-<pid>-<seq>.jsonl``,
one JSON object a line (:data:`SHADOW_FIELDS`); files are written whole (atomically, local or
``gs://``) every ``ITEM_SHADOW_ROWS_PER_FILE`` rows (200) or ``ITEM_SHADOW_FLUSH_SECONDS`` (30 s) and
at shutdown. Photos are never logged; titles are (they are the examples a reviewer reads).
"""

from __future__ import annotations

import html
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from components import storage

logger = logging.getLogger("bentoml.item.shadow")     # printed by BentoML's handlers in the server

SHADOW_DIR = "shadow"
#: the fields of one shadow-log row
SHADOW_FIELDS = ("timestamp", "route", "query_kind", "query_title", "product_id", "champion", "challenger",
                 "champion_ms", "challenger_ms", "overlap@10", "champion_top10", "challenger_top10")
K = 10


def shadow_directory(storage_root: str, version: str) -> str:
    """``<storage root>/shadow/<version>`` (a path or a ``gs://`` URI)."""
    return storage.join(storage_root, SHADOW_DIR, version)


def overlap_at_k(a: list[str], b: list[str], k: int = K) -> float:
    """|top-k of a ∩ top-k of b| / k, in [0, 1] (1 = the same k listings, in any order)."""
    return len(set(a[:k]) & set(b[:k])) / float(k)


class ShadowLog:
    """Buffered JSONL writer of shadow rows (thread-safe); see the module docstring for the layout."""

    def __init__(self, storage_root: str, version: str, rows_per_file: int = 200, flush_seconds: float = 30.0):
        self.directory = shadow_directory(storage_root, version)
        self.rows_per_file, self.flush_seconds = rows_per_file, flush_seconds
        self._rows: list[dict] = []
        self._oldest = 0.0
        self._seq = 0
        self._lock = threading.Lock()
        self.rows_written = 0

    def append(self, row: dict) -> None:
        """Buffer one row; write a file when the buffer is full or old enough."""
        with self._lock:
            if not self._rows:
                self._oldest = time.monotonic()
            self._rows.append(row)
            if len(self._rows) >= self.rows_per_file or time.monotonic() - self._oldest >= self.flush_seconds:
                self._flush_locked()

    def flush(self) -> str | None:
        """Write the buffered rows now. Returns the file written, or None."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> str | None:
        rows, self._rows = self._rows, []
        if not rows:
            return None
        self._seq += 1
        name = f"shadow-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}Z-{os.getpid()}-{self._seq:06d}.jsonl"
        path = storage.join(self.directory, name)
        try:
            storage.write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
        except Exception:  # monitoring must not take the service down
            logger.exception("shadow log: could not write %d rows to %s; dropped", len(rows), path)
            return None
        self.rows_written += len(rows)
        return path


class Shadow:
    """Runs the challenger on sampled queries in one background thread and logs the comparison.

    Args:
        challenger: the challenger's served bundle (``serving.service.ServedModel``).
        search: ``(served bundle, query vector (D,), k, exclude row or None) -> [product_id, ...]``.
        embed: ``(served bundle, [listing]) -> (n, D)`` the challenger's vectors (runs under the
            service's model lock).
        version: the challenger's registry version (names the log folder).
        sample: share of requests shadowed, in [0, 1].
        max_pending: queued comparisons beyond which new ones are dropped (counted in ``dropped``).
    """

    def __init__(self, challenger, search: Callable, embed: Callable, storage_root: str, version: str,
                 sample: float = 0.2, max_pending: int = 64, rows_per_file: int = 200, flush_seconds: float = 30.0,
                 seed: int | None = None):
        self.challenger, self.search, self.embed = challenger, search, embed
        self.version, self.sample, self.max_pending = version, sample, max_pending
        self.log = ShadowLog(storage_root, version, rows_per_file, flush_seconds)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.pending = self.dropped = self.done = 0

    def sampled(self) -> bool:
        """Whether this request is shadowed (a draw with probability ``sample``)."""
        with self._lock:
            return bool(self._rng.random() < self.sample)

    def submit(self, *, route: str, champion, query_kind: str, champion_ms: float,
               champion_ids: list[str] | None = None, champion_vector: np.ndarray | None = None,
               listing=None, product_id: str | None = None) -> bool:
        """Queue one comparison; returns False when dropped (queue full). Never raises.

        Args:
            champion: the champion's served bundle that answered the request.
            champion_ids: the champion's top-10 (``/similar``), or None to search it here, in the
                background, from ``champion_vector`` (``/embed``: the vector served).
            listing / product_id: the query (a validated listing, or a catalog id).
        """
        with self._lock:
            if self.pending >= self.max_pending:
                self.dropped += 1
                return False
            self.pending += 1
        self._pool.submit(self._compare, route, champion, query_kind, champion_ids, champion_vector, champion_ms,
                          listing, product_id)
        return True

    def _compare(self, route, champion, query_kind, champion_ids, champion_vector, champion_ms, listing,
                 product_id) -> None:
        try:
            if champion_ids is None:
                champion_ids = self.search(champion, champion_vector, K, None, listing.kind)
            champion_tag = champion.tag
            t0 = time.perf_counter()
            served = self.challenger
            if product_id is not None:
                row = served.row_of.get(product_id)
                if row is None:
                    return
                ids = self.search(served, np.asarray(served.indexes["joint"][row], dtype=np.float32), K, row)
            else:
                ids = self.search(served, self.embed(served, [listing])[0], K, None, listing.kind)
            challenger_ms = 1e3 * (time.perf_counter() - t0)
            self.log.append({
                "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "route": route,
                "query_kind": query_kind, "query_title": getattr(listing, "title", None) if listing else None,
                "product_id": product_id, "champion": champion_tag, "challenger": served.tag,
                "champion_ms": round(champion_ms, 2), "challenger_ms": round(challenger_ms, 2),
                "overlap@10": overlap_at_k(champion_ids, ids), "champion_top10": list(champion_ids[:K]),
                "challenger_top10": list(ids[:K])})
            self.done += 1
        except Exception:
            logger.exception("shadow comparison failed (the user's request was not affected)")
        finally:
            with self._lock:
                self.pending -= 1

    def close(self) -> None:
        """Finish queued comparisons and write the buffered rows."""
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.log.flush()


def read_shadow_log(storage_root: str, version: str) -> list[dict]:
    """Every row logged for challenger ``version`` under ``storage_root``, oldest file first.

    Raises:
        ValueError: a line is not a JSON object with the fields of :data:`SHADOW_FIELDS` (names the
            file and line).
    """
    directory = shadow_directory(storage_root, version)
    try:
        names = storage.list_files(directory, glob="*.jsonl")
    except storage.StorageNotFound:
        return []
    rows = []
    for name in sorted(names):
        path = storage.join(directory, name)
        for i, line in enumerate(storage.read_text(path).splitlines(), 1):
            try:
                row = json.loads(line)
            except ValueError:
                raise ValueError(f"{path} line {i}: not JSON") from None
            if not isinstance(row, dict) or not set(SHADOW_FIELDS) <= set(row):
                raise ValueError(f"{path} line {i}: missing field(s) {sorted(set(SHADOW_FIELDS) - set(row or {}))}")
            rows.append(row)
    return rows


def summarize_shadow(rows: list[dict]) -> dict:
    """The live-traffic summary of shadow rows: ``n``, the Overlap@10 distribution (mean, p10, p50,
    share of queries below 0.5 and at 1.0, a 11-bin histogram over 0.0, 0.1, ... 1.0), latency p50/p99
    of both models (ms), counts by route and query kind, the champion and challenger tags."""
    if not rows:
        return {"n": 0}
    ov = np.array([r["overlap@10"] for r in rows], dtype=float)
    out = {"n": len(rows), "champion": sorted({r["champion"] for r in rows}),
           "challenger": sorted({r["challenger"] for r in rows}),
           "first": min(r["timestamp"] for r in rows), "last": max(r["timestamp"] for r in rows),
           "overlap_mean": float(ov.mean()), "overlap_p10": float(np.percentile(ov, 10)),
           "overlap_p50": float(np.median(ov)), "share_below_0.5": float((ov < 0.5).mean()),
           "share_identical": float((ov >= 1.0).mean()),
           "overlap_histogram": np.bincount(np.rint(ov * 10).astype(int), minlength=11).tolist(),
           "by_route": {}, "by_kind": {}}
    for key, field in (("by_route", "route"), ("by_kind", "query_kind")):
        for r in rows:
            out[key][r[field]] = out[key].get(r[field], 0) + 1
    for who in ("champion", "challenger"):
        ms = np.array([r[f"{who}_ms"] for r in rows], dtype=float)
        out[f"{who}_ms_p50"], out[f"{who}_ms_p99"] = float(np.median(ms)), float(np.percentile(ms, 99))
    return out


def disagreements(rows: list[dict], n: int = 5) -> list[dict]:
    """The ``n`` rows with the lowest Overlap@10 (ties: the latest first): where users would notice."""
    return sorted(rows, key=lambda r: (r["overlap@10"], r["timestamp"]))[:n]


def shadow_report_html(version: str, summary: dict, rows: list[dict], titles: dict[str, str] | None = None) -> str:
    """A self-contained HTML page: the live-traffic summary, the Overlap@10 histogram (inline PNG) and
    the queries where the two models disagree most, with both top-5 lists (titles from ``titles``)."""
    esc = html.escape
    titles = titles or {}
    if not summary.get("n"):
        body = f"<p>No shadow traffic logged for {esc(version)} yet (serve with <code>item serve --shadow {esc(version)}</code>).</p>"
        return f"<!doctype html><html><head><meta charset='utf-8'><title>Live traffic</title></head><body>{body}</body></html>"
    import base64
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar([i / 10 for i in range(11)], summary["overlap_histogram"], width=0.08, color="#4a7bd0")
    ax.set_xlabel("Overlap@10 of champion and challenger /similar top-10")
    ax.set_ylabel("requests")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode("ascii")

    def names(ids: list[str]) -> str:
        return "<ol>" + "".join(f"<li>{esc(titles.get(i, i))}</li>" for i in ids[:5]) + "</ol>"

    rows_html = "".join(
        f"<tr><td>{esc(r['route'])} ({esc(r['query_kind'])})<br><b>{esc(r.get('query_title') or titles.get(r.get('product_id') or '', r.get('product_id') or ''))}</b></td>"
        f"<td>{r['overlap@10']:.1f}</td><td>{names(r['champion_top10'])}</td><td>{names(r['challenger_top10'])}</td></tr>"
        for r in disagreements(rows))
    s = summary
    facts = (f"<tr><td>requests compared</td><td>{s['n']} ({', '.join(f'{k}: {v}' for k, v in s['by_route'].items())}; "
             f"{s['first']} to {s['last']})</td></tr>"
             f"<tr><td>champion / challenger</td><td>{esc(', '.join(s['champion']))} / {esc(', '.join(s['challenger']))}</td></tr>"
             f"<tr><td>Overlap@10 mean / p10 / median</td><td>{s['overlap_mean']:.2f} / {s['overlap_p10']:.2f} / {s['overlap_p50']:.2f}</td></tr>"
             f"<tr><td>queries with overlap &lt; 0.5 / identical top-10</td><td>{100 * s['share_below_0.5']:.1f} % / {100 * s['share_identical']:.1f} %</td></tr>"
             f"<tr><td>latency p50 / p99 (ms): champion</td><td>{s['champion_ms_p50']:.1f} / {s['champion_ms_p99']:.1f}</td></tr>"
             f"<tr><td>latency p50 / p99 (ms): challenger (shadow)</td><td>{s['challenger_ms_p50']:.1f} / {s['challenger_ms_p99']:.1f}</td></tr>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}ol{margin:0;padding-left:1.2em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Live traffic: {esc(version)}</title>"
            f"<style>{style}</style></head><body><h1>Live traffic: {esc(version)} in shadow</h1>"
            f"<p>The challenger answered a sample of live requests beside the champion, off the users' path. "
            f"Overlap@10 = shared listings in the two /similar top-10 lists / 10.</p><table>{facts}</table>"
            f"<h2>Overlap@10</h2><img alt='Overlap@10 histogram' src='data:image/png;base64,{png}'>"
            f"<h2>Where they disagree most</h2><table><tr><th>query</th><th>Overlap@10</th><th>champion top-5</th>"
            f"<th>challenger top-5</th></tr>{rows_html}</table></body></html>")
