"""The SQLite catalog's lexical index as numpy arrays, for BM25 in well under a millisecond.

FTS5 computes ``bm25()`` for every row that matches any of the query's terms before it can
take the top: a query with a word most products have ("men", "summer", "black" as tag
values) scores thousands of rows at about 3 microseconds each (20-30 ms on the Kaggle
catalog). BM25 itself is cheap to precompute: a term's contribution to a row depends only
on the term and the row. So each term keeps the rows that have it and their contribution,
and a query adds up a few arrays and takes the top with ``argpartition``.

The scores are FTS5's own (``bm25`` with the column weights of ``stores.lexical``):

    score = sum over terms t of idf(t) * f * (k1 + 1) / (f + k1 * (1 - b + b * D / avgdl))

with ``f`` the column-weighted count of t in the row, ``D`` the row's token count (all
columns), ``avgdl`` the mean of D, ``idf(t) = ln((N - n + 0.5) / (n + 0.5))`` (at least
1e-6) over the N rows, n of which have t; k1 = 1.2, b = 0.75 (FTS5's constants). The
index holds the terms of ``stores.lexical`` separated by spaces, so its tokens are the
space-separated words of each column. Ties are broken by rowid, as the FTS5 path does. A
query's synonym variants (``stores.synonyms``) are scored each, and a row keeps its best
weighted score, as the FTS5 path merges one MATCH per variant.

A snapshot is one read transaction's state, tagged with the catalog's lexical generation
(a counter every lexical write bumps in its transaction); the catalog uses it only while the
generation it reads is the same (see ``SqliteCatalog.search_text_sync``).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from domain.model import LexicalHit
from stores.lexical import DESCRIPTION_WEIGHT, NAME_WEIGHT, TAGS_WEIGHT, QueryTerms
from stores.synonyms import Variant

FTS5_K1 = 1.2
FTS5_B = 0.75
FTS5_MIN_IDF = 1e-6
COLUMN_WEIGHTS = (NAME_WEIGHT, DESCRIPTION_WEIGHT, TAGS_WEIGHT)

Rows = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float64]
Strings = npt.NDArray[np.object_]


@dataclass(frozen=True)
class Postings:
    """The rows having one term (positions into the snapshot's rows, ascending) and the
    term's BM25 contribution to each (views into the snapshot's arrays)."""

    rows: Rows
    scores: Scores

    def has(self, rows: Rows) -> npt.NDArray[np.bool_]:
        if not len(self.rows):
            return np.zeros(len(rows), np.bool_)
        at = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        found: npt.NDArray[np.bool_] = self.rows[at] == rows
        return found


NO_POSTINGS = Postings(np.empty(0, np.int64), np.empty(0, np.float64))


@dataclass(frozen=True)
class Bm25Snapshot:
    generation: int
    rowids: Rows
    """FTS5 rowid of each row, ascending."""
    product_ids: Strings
    names: Strings
    """The product's id and name (as stored, for exact-name matching), object arrays so a
    query's top rows are read in C."""
    spans: dict[str, tuple[int, int]]
    """Each term's slice of ``rows`` and ``scores`` (one pair of arrays for all terms
    rather than two per term: a few objects for the garbage collector to walk, not 100k)."""
    rows: Rows
    scores: Scores

    def postings(self, term: str) -> Postings:
        span = self.spans.get(term)
        if span is None:
            return NO_POSTINGS
        return Postings(self.rows[span[0] : span[1]], self.scores[span[0] : span[1]])

    @property
    def size(self) -> int:
        return len(self.rowids)

    @classmethod
    def read(cls, conn: sqlite3.Connection, generation: int) -> Bm25Snapshot:
        """Read the index (call inside one read transaction, with ``generation`` read in it)."""
        rows = conn.execute(
            "SELECT f.rowid, l.product_id, p.name, f.name, f.description, f.tags "
            "FROM products_fts f JOIN lexical_ids l ON l.rowid = f.rowid "
            "JOIN products p ON p.id = l.product_id ORDER BY f.rowid"
        ).fetchall()
        weighted: dict[str, dict[int, float]] = {}
        lengths = np.zeros(len(rows), np.float64)
        for i, (_, _, _, *columns) in enumerate(rows):
            for weight, text in zip(COLUMN_WEIGHTS, columns, strict=True):
                tokens = (text or "").split()
                lengths[i] += len(tokens)
                for token in tokens:
                    per_row = weighted.setdefault(token, {})
                    per_row[i] = per_row.get(i, 0.0) + weight
        total = len(rows)
        average = float(lengths.mean()) if total else 1.0
        norm = FTS5_K1 * (1 - FTS5_B + FTS5_B * lengths / max(average, 1e-12))
        spans: dict[str, tuple[int, int]] = {}
        all_rows: list[Rows] = []
        all_scores: list[Scores] = []
        end = 0
        for term, per_row in weighted.items():
            at = np.fromiter(per_row, np.int64, len(per_row))
            freq = np.fromiter(per_row.values(), np.float64, len(per_row))
            have = len(per_row)
            idf = max(math.log((total - have + 0.5) / (have + 0.5)), FTS5_MIN_IDF)
            all_rows.append(at)
            all_scores.append(idf * freq * (FTS5_K1 + 1) / (freq + norm[at]))
            spans[term] = (end, end + have)
            end += have
        return cls(
            generation=generation,
            rowids=np.array([r[0] for r in rows], np.int64),
            product_ids=np.array([r[1] for r in rows], np.object_),
            names=np.array([r[2] for r in rows], np.object_),
            spans=spans,
            rows=np.concatenate(all_rows) if all_rows else np.empty(0, np.int64),
            scores=np.concatenate(all_scores) if all_scores else np.empty(0, np.float64),
        )

    def positions(self, rowids: Sequence[int]) -> Rows:
        """The snapshot positions of the given rowids (those it holds)."""
        wanted = np.asarray(rowids, np.int64)
        at = np.minimum(np.searchsorted(self.rowids, wanted), max(self.size - 1, 0))
        held: Rows = at[self.rowids[at] == wanted] if self.size else at[:0]
        return held

    def search(
        self, variants: Sequence[Variant], top_k: int, allowed: Rows | None = None
    ) -> list[LexicalHit]:
        """The top_k rows by BM25 over any of a query variant's terms, each variant's scores
        times its weight, a row's best variant kept (``stores.synonyms``; the words typed
        first); only ``allowed`` positions when given (a filter)."""
        scores = self._scores(variants[0])
        typed = set(variants[0].terms.all())
        for variant in variants[1:]:
            # a variant whose own terms no row has scores at most the words typed: skipped
            if any(t in self.spans for t in variant.terms.all() if t not in typed):
                np.maximum(scores, self._scores(variant), out=scores)
        if allowed is not None:
            kept = np.zeros(self.size, np.float64)
            kept[allowed] = scores[allowed]
            scores = kept
        matching = np.flatnonzero(scores > 0)
        if len(matching) > top_k:
            # the k-th best score, then every row reaching it, so ties go by rowid
            kth = np.partition(scores[matching], len(matching) - top_k)[len(matching) - top_k]
            matching = matching[scores[matching] >= kth]
        top = matching[np.lexsort((matching, -scores[matching]))][:top_k]
        has = _Presence(self, top)
        matched = self._matched_share(variants[0].terms, has)
        for variant in variants[1:]:
            if variant.credit:
                share = self._matched_share(variant.terms, has) * variant.credit
                np.maximum(matched, share, out=matched)
        return LexicalHit.from_columns(  # plain floats and strings: no numpy scalars
            self.product_ids[top].tolist(),
            scores[top].tolist(),
            matched.tolist(),
            self.names[top].tolist(),
        )

    def _scores(self, variant: Variant) -> Scores:
        """BM25 of every row for one variant's terms, times its weight."""
        scores = np.zeros(self.size, np.float64)
        for term in (self.postings(t) for t in variant.terms.all()):
            scores[term.rows] += term.scores
        if variant.weight != 1.0:
            scores *= variant.weight
        return scores

    @staticmethod
    def _matched_share(query: QueryTerms, has: _Presence) -> npt.NDArray[np.float64]:
        """``QueryTerms.matched_share`` for each of the rows ``has`` looks at."""
        if not query.words:
            return np.zeros(has.count, np.float64)
        covered = np.zeros((len(query.words), has.count), np.bool_)
        for i, word in enumerate(query.words):
            covered[i] = has(word)
        for stem, first, second in query.joined:
            joined = has(stem)
            covered[first] |= joined
            covered[second] |= joined
        share: npt.NDArray[np.float64] = covered.sum(axis=0) / len(query.words)
        return share


class _Presence:
    """Which of some rows have a term, each term looked up once (a query's variants share
    most of their terms)."""

    def __init__(self, snapshot: Bm25Snapshot, rows: Rows) -> None:
        self._snapshot = snapshot
        self._rows = rows
        self._known: dict[str, npt.NDArray[np.bool_]] = {}
        self.count = len(rows)

    def __call__(self, term: str) -> npt.NDArray[np.bool_]:
        found = self._known.get(term)
        if found is None:
            found = self._known[term] = self._snapshot.postings(term).has(self._rows)
        return found
