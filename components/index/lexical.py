"""The lexical (keyword) side of catalog search: BM25 over the listings' titles, and reciprocal rank
fusion of keyword and vector results (``/similar``'s ``mode: keyword | hybrid``).

BM25: Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009
(k1 = 1.5, b = 0.75, Lucene's idf), computed by the ``bm25s`` library (Lù, arXiv:2407.03618; eager
sparse scoring, chosen over tantivy for building in the index step's process in 0.6 s for the
44,441 titles of the shared catalog and answering in under 1 ms, docs/index.md). Titles are lower-cased,
split into word tokens of two or more characters, English stop words removed, no stemming (a
model number or SKU stays one token).

Saved beside the catalog index in ``catalog_index/lexical/`` (bm25s's own files: numpy arrays read
with ``allow_pickle=False`` and JSON), with ``lexical.json`` naming the titles' fingerprint, so a
lexical index always belongs to the listings it sits with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from item_model.io import write_json_atomic

LEXICAL_DIR = "lexical"
META_FILE = "lexical.json"
#: reciprocal rank fusion's rank offset (Cormack, Clarke & Büttcher, SIGIR 2009: k = 60)
RRF_K = 60


def titles_fingerprint(titles) -> str:
    """SHA-256 of the titles in row order (None as the empty string)."""
    return hashlib.sha256("\n".join("" if t is None else str(t) for t in titles).encode()).hexdigest()


def _tokenize(texts: list[str]):
    import bm25s
    return bm25s.tokenize(["" if t is None else str(t) for t in texts], stopwords="en", show_progress=False,
                          return_ids=False)


class LexicalIndex:
    """BM25 over a catalog's titles; row numbers are the catalog index's rows.

    Args:
        retriever: a ``bm25s.BM25`` indexed on the titles. n: rows. fingerprint: :func:`titles_fingerprint`.
    """

    def __init__(self, retriever, n: int, fingerprint: str):
        self.retriever, self.n, self.fingerprint = retriever, int(n), fingerprint

    @classmethod
    def build(cls, titles) -> "LexicalIndex":
        """Index ``titles`` (a sequence of n strings, None for a listing without one)."""
        import bm25s
        titles = list(titles)
        retriever = bm25s.BM25()
        tokens = _tokenize(titles)
        if not any(tokens):                              # bm25s needs a vocabulary: a catalog of no words
            tokens = [["<empty>"]] * len(titles)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, len(titles), titles_fingerprint(titles))

    def save(self, folder: str | Path) -> None:
        """bm25s's files and ``lexical.json`` into ``folder`` (written last: a folder without it is
        incomplete and is rebuilt on load)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(folder), allow_pickle=False)
        write_json_atomic(folder / META_FILE, {"library": "bm25s", "n": self.n, "titles_fingerprint": self.fingerprint})

    @classmethod
    def load(cls, folder: str | Path, titles) -> "LexicalIndex":
        """The index saved in ``folder`` if it was built from exactly ``titles``, else one built now
        (an index written before lexical search existed, or an incomplete folder)."""
        import bm25s
        folder = Path(folder)
        titles = list(titles)
        meta_path = folder / META_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("titles_fingerprint") == titles_fingerprint(titles):
                retriever = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False, verbosity=0)
                return cls(retriever, len(titles), meta["titles_fingerprint"])
        return cls.build(titles)

    def search(self, text: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top-k rows by BM25 score of ``text`` among the rows ``mask`` keeps.

        Args:
            text: the query (a title, a brand, a model number).
            k: results wanted; fewer come back when fewer rows share a word with the query.
            mask: (n,) bool or None.

        Returns:
            (rows (k',) int64, BM25 scores (k',) float32 > 0), best first.
        """
        k = min(int(k), self.n)
        if k <= 0 or not text or not str(text).strip():
            return np.empty(0, np.int64), np.empty(0, np.float32)
        weights = None if mask is None else np.asarray(mask, dtype=np.float32)
        docs, scores = self.retriever.retrieve(_tokenize([text]), k=k, show_progress=False, n_threads=0,
                                               weight_mask=weights)
        rows, scores = np.asarray(docs[0], dtype=np.int64), np.asarray(scores[0], dtype=np.float32)
        keep = scores > 0
        if mask is not None:
            keep &= np.asarray(mask, dtype=bool)[rows]
        return rows[keep], scores[keep]


def reciprocal_rank_fusion(ranked: list[np.ndarray], weights: list[float], k: int,
                           rank_offset: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked lists of rows: score(row) = sum_i weights[i] / (rank_offset + rank_i(row)), ranks
    from 1, a row absent from a list adding nothing (Cormack, Clarke & Büttcher, "Reciprocal rank fusion
    outperforms Condorcet and individual rank learning methods", SIGIR 2009).

    Args:
        ranked: lists of row numbers (int64), best first.
        weights: one weight >= 0 per list.
        k: rows returned.

    Returns:
        (rows (k',) int64, fused scores (k',) float32), best first; ties keep the first list's order.
    """
    score: dict[int, float] = {}
    first: dict[int, tuple[int, int]] = {}
    for li, (rows, w) in enumerate(zip(ranked, weights)):
        for rank, row in enumerate(np.asarray(rows).tolist(), start=1):
            score[row] = score.get(row, 0.0) + float(w) / (rank_offset + rank)
            first.setdefault(row, (li, rank))
    order = sorted(score, key=lambda r: (-score[r], first[r]))[:int(k)]
    return np.asarray(order, dtype=np.int64), np.asarray([score[r] for r in order], dtype=np.float32)
