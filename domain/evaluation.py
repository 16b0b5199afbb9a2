"""Retrieval quality metrics (pure numpy): used by the encoder training command and by
``fashion-search eval``.

Relevance is label equality: a gallery item is a hit for a query when their labels are equal.
That one rule expresses every metric of the evaluation:

- text-to-image with the description as the query: labels are the descriptions, so any item
  whose text is identical to the query counts (colour variants share one); labels that are the
  ids give the exact-id variant;
- attribute precision@10 for "<colour> <type>": labels are (colour, type) tuples;
- image-to-image same-type precision@10: labels are the product types, the query item excluded;
- augmented-query Recall@1: labels are the gallery positions.

Ties in score are broken by gallery position (a stable sort), so results are deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
SKIP_ATTRIBUTE_VALUES = frozenset({"", "unknown", "undefined", "nan", "none"})

FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float64]


@dataclass(frozen=True)
class RetrievalResult:
    """Averages over the queries that have at least one relevant gallery item."""

    recall: dict[int, float]
    precision: dict[int, float]
    mrr: float
    n_queries: int
    n_skipped: int = 0  # queries without any relevant gallery item

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}R@{k}": v for k, v in self.recall.items()}
        out.update({f"{prefix}P@{k}": v for k, v in self.precision.items()})
        out[f"{prefix}MRR"] = self.mrr
        return out


def _codes(
    query_labels: Sequence[Hashable], gallery_labels: Sequence[Hashable]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    table: dict[Hashable, int] = {}
    gallery = np.array([table.setdefault(x, len(table)) for x in gallery_labels], dtype=np.int64)
    query = np.array([table.get(x, -1) for x in query_labels], dtype=np.int64)
    return query, gallery


def _exclusions(exclude_index: Sequence[int] | None, n_queries: int) -> npt.NDArray[np.int64]:
    if exclude_index is None:
        return np.full(n_queries, -1, dtype=np.int64)
    excluded = np.asarray(exclude_index, dtype=np.int64)
    if excluded.shape != (n_queries,):
        raise ValueError("exclude_index needs one entry per query")
    return excluded


def retrieval_metrics(
    query_vectors: FloatArray,
    gallery_vectors: FloatArray,
    query_labels: Sequence[Hashable],
    gallery_labels: Sequence[Hashable],
    ks: Sequence[int] = DEFAULT_KS,
    exclude_index: Sequence[int] | None = None,
    chunk_size: int = 256,
) -> RetrievalResult:
    """Recall@k, precision@k and MRR of ranking the gallery by inner product (cosine for unit
    vectors). ``exclude_index[i]`` is a gallery position removed from query i's ranking (the
    query item itself), or -1."""
    queries = np.asarray(query_vectors, dtype=np.float32)
    gallery = np.asarray(gallery_vectors, dtype=np.float32)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError("query and gallery vectors must be 2-d with the same width")
    if len(query_labels) != len(queries) or len(gallery_labels) != len(gallery):
        raise ValueError("one label per vector")
    if not ks or min(ks) < 1:
        raise ValueError("ks must be positive")
    ks = sorted(set(ks))
    query_codes, gallery_codes = _codes(query_labels, gallery_labels)
    excluded = _exclusions(exclude_index, len(queries))
    max_k = max(ks)
    recall_hits = {k: 0.0 for k in ks}
    precision_sum = {k: 0.0 for k in ks}
    reciprocal_sum = 0.0
    counted = skipped = 0
    positions = np.arange(len(gallery))
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        scores = queries[start:stop] @ gallery.T
        relevant = query_codes[start:stop, None] == gallery_codes[None, :]
        keep = excluded[start:stop, None] != positions[None, :]
        relevant &= keep
        scores = np.where(keep, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")
        ranked = np.take_along_axis(relevant, order, axis=1)
        has_relevant = ranked.any(axis=1)
        skipped += int((~has_relevant).sum())
        ranked = ranked[has_relevant]
        counted += len(ranked)
        if not len(ranked):
            continue
        first = ranked.argmax(axis=1) + 1
        reciprocal_sum += float((1.0 / first).sum())
        top = np.cumsum(ranked[:, :max_k], axis=1)
        for k in ks:
            hits_at_k = top[:, min(k, top.shape[1]) - 1]
            recall_hits[k] += float((hits_at_k > 0).sum())
            precision_sum[k] += float(hits_at_k.sum()) / k
    denominator = max(counted, 1)
    return RetrievalResult(
        recall={k: recall_hits[k] / denominator for k in ks},
        precision={k: precision_sum[k] / denominator for k in ks},
        mrr=reciprocal_sum / denominator,
        n_queries=counted,
        n_skipped=skipped,
    )


# ---------------------------------------------------------------- chance levels


def chance_recall_at_k(n_gallery: int, n_relevant: int, k: int) -> float:
    """Probability that a random ranking puts at least one of ``n_relevant`` in the top k."""
    if n_relevant <= 0:
        return 0.0
    miss = 1.0
    for i in range(min(k, n_gallery)):
        miss *= max(n_gallery - n_relevant - i, 0) / (n_gallery - i)
    return 1.0 - miss


def chance_precision_at_k(n_gallery: int, n_relevant: int, k: int) -> float:
    """Expected share of relevant items in the top k of a random ranking."""
    if n_gallery <= 0:
        return 0.0
    return min(k, n_gallery) * (n_relevant / n_gallery) / k


def chance_mrr(n_gallery: int, n_relevant: int) -> float:
    """Expected reciprocal rank of the first relevant item in a random ranking."""
    if n_relevant <= 0:
        return 0.0
    expected = 0.0
    no_hit_yet = 1.0
    for position in range(1, n_gallery - n_relevant + 2):
        remaining = n_gallery - position + 1
        hit_here = n_relevant / remaining
        expected += no_hit_yet * hit_here / position
        no_hit_yet *= 1.0 - hit_here
    return expected


def chance_levels(
    query_labels: Sequence[Hashable],
    gallery_labels: Sequence[Hashable],
    ks: Sequence[int] = DEFAULT_KS,
    exclude_index: Sequence[int] | None = None,
) -> RetrievalResult:
    """What ``retrieval_metrics`` gives in expectation for a random ranking."""
    query_codes, gallery_codes = _codes(query_labels, gallery_labels)
    excluded = _exclusions(exclude_index, len(query_codes))
    counts = Counter(gallery_codes.tolist())
    recall = {k: 0.0 for k in ks}
    precision = {k: 0.0 for k in ks}
    mrr = 0.0
    counted = skipped = 0
    for code, skip in zip(query_codes.tolist(), excluded.tolist(), strict=True):
        n_gallery = len(gallery_codes) - (1 if skip >= 0 else 0)
        n_relevant = counts.get(code, 0) if code >= 0 else 0
        if skip >= 0 and gallery_codes[skip] == code:
            n_relevant -= 1
        if n_relevant <= 0:
            skipped += 1
            continue
        counted += 1
        for k in ks:
            recall[k] += chance_recall_at_k(n_gallery, n_relevant, k)
            precision[k] += chance_precision_at_k(n_gallery, n_relevant, k)
        mrr += chance_mrr(n_gallery, n_relevant)
    denominator = max(counted, 1)
    return RetrievalResult(
        recall={k: v / denominator for k, v in recall.items()},
        precision={k: v / denominator for k, v in precision.items()},
        mrr=mrr / denominator,
        n_queries=counted,
        n_skipped=skipped,
    )


# ---------------------------------------------------------------- generated queries


@dataclass(frozen=True)
class AttributeQuery:
    """A generated query such as "black trousers": the attribute values it names, in order."""

    text: str
    values: tuple[str, ...]
    n_relevant: int = 0
    keys: tuple[str, ...] = field(default=())


def attribute_labels(
    tags: Sequence[Mapping[str, str]], keys: Sequence[str]
) -> list[tuple[str, ...]]:
    """Each gallery item's values of ``keys`` (the labels attribute queries are matched on)."""
    return [tuple(str(t.get(key, "")) for key in keys) for t in tags]


def attribute_queries(
    tags: Sequence[Mapping[str, str]],
    keys: Sequence[str],
    min_count: int = 10,
    skip_values: frozenset[str] = SKIP_ATTRIBUTE_VALUES,
) -> list[AttributeQuery]:
    """One query per combination of ``keys`` values held by at least ``min_count`` items, e.g.
    keys ("colour", "product_type") -> "black trousers". Values such as "Unknown" are not
    queries a shopper types and are left out. Sorted by text."""
    counts = Counter(attribute_labels(tags, keys))
    queries = [
        AttributeQuery(
            text=" ".join(values).lower(), values=values, n_relevant=count, keys=tuple(keys)
        )
        for values, count in counts.items()
        if count >= min_count and not any(v.strip().lower() in skip_values for v in values)
    ]
    return sorted(queries, key=lambda q: q.text)


def attribute_precision(
    query_vectors: FloatArray,
    gallery_vectors: FloatArray,
    queries: Sequence[AttributeQuery],
    gallery_tags: Sequence[Mapping[str, str]],
    k: int = 10,
) -> float:
    """Mean precision@k over the attribute queries (a hit names all the query's values)."""
    if not queries:
        return 0.0
    keys = queries[0].keys
    result = retrieval_metrics(
        query_vectors,
        gallery_vectors,
        [q.values for q in queries],
        attribute_labels(gallery_tags, keys),
        ks=(k,),
    )
    return result.precision[k]


def chance_attribute_precision(
    queries: Sequence[AttributeQuery], gallery_tags: Sequence[Mapping[str, str]], k: int = 10
) -> float:
    if not queries:
        return 0.0
    keys = queries[0].keys
    chance = chance_levels(
        [q.values for q in queries], attribute_labels(gallery_tags, keys), ks=(k,)
    )
    return chance.precision[k]


def same_label_precision(
    vectors: FloatArray, labels: Sequence[Hashable], k: int = 10
) -> RetrievalResult:
    """Image-to-image: each item queries the rest of the gallery (itself excluded); hits share
    its label (e.g. the product type)."""
    return retrieval_metrics(
        vectors, vectors, labels, labels, ks=(1, k), exclude_index=list(range(len(labels)))
    )


def augmented_recall_at_1(augmented_vectors: FloatArray, gallery_vectors: FloatArray) -> float:
    """Share of augmented copies (row i an augmented view of gallery item i) whose nearest
    gallery item is their original."""
    positions = list(range(len(gallery_vectors)))
    result = retrieval_metrics(augmented_vectors, gallery_vectors, positions, positions, ks=(1,))
    return result.recall[1]
