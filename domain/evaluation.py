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
class Baseline:
    """A metric's expected value for a random ranking, and the number of queries it averages
    (queries without any relevant gallery item are not counted)."""

    chance: float
    n_queries: int


@dataclass(frozen=True)
class RetrievalResult:
    """Averages over the queries that have at least one relevant gallery item."""

    recall: dict[int, float]
    precision: dict[int, float]
    mrr: float
    n_queries: int
    n_skipped: int = 0  # queries without any relevant gallery item

    def as_dict(self, prefix: str = "", precision: bool = True) -> dict[str, float]:
        out = {f"{prefix}R@{k}": v for k, v in self.recall.items()}
        if precision:
            out.update({f"{prefix}P@{k}": v for k, v in self.precision.items()})
        out[f"{prefix}MRR"] = self.mrr
        return out

    def baselines(self, prefix: str = "") -> dict[str, Baseline]:
        """Recall@k and MRR of a chance-level result, with the number of queries."""
        return {
            name: Baseline(value, self.n_queries)
            for name, value in self.as_dict(prefix, precision=False).items()
        }


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
    vectors: FloatArray,
    labels: Sequence[Hashable],
    k: int = 10,
    query_rows: Sequence[int] | None = None,
) -> RetrievalResult:
    """Image-to-image: each item (or each of ``query_rows``) queries the rest of the gallery
    (itself excluded); hits share its label (e.g. the product type)."""
    rows = list(range(len(labels))) if query_rows is None else list(query_rows)
    gallery = np.asarray(vectors, dtype=np.float32)
    return retrieval_metrics(
        gallery[rows], gallery, [labels[i] for i in rows], labels, ks=(1, k), exclude_index=rows
    )


def augmented_recall_at_1(augmented_vectors: FloatArray, gallery_vectors: FloatArray) -> float:
    """Share of augmented copies (row i an augmented view of gallery item i) whose nearest
    gallery item is their original."""
    positions = list(range(len(gallery_vectors)))
    result = retrieval_metrics(augmented_vectors, gallery_vectors, positions, positions, ks=(1,))
    return result.recall[1]


# ---------------------------------------------------------------- the evaluation suite

ATTRIBUTE_PAIRS: dict[str, tuple[str, str]] = {
    "colour-type": ("colour", "product_type"),
    "pattern-type": ("pattern", "product_type"),
    "section-type": ("section", "product_type"),
}
"""The generated "<attribute> <type>" queries, by metric name."""

IMAGE_TYPE_METRIC = "image-image type P@10"
PHOTO_TYPE_METRIC = "photo-style image-image type P@10"
"""Same-type precision@10 of shopper-photo versions of the gallery's photos (the queries are
transformed, the gallery is clean)."""
AUGMENTED_METRIC = "augmented R@1"


def is_known(value: str, skip_values: frozenset[str] = SKIP_ATTRIBUTE_VALUES) -> bool:
    """False for empty values and placeholders such as "Unknown"."""
    return value.strip().lower() not in skip_values


@dataclass(frozen=True)
class LabelledGallery:
    """What an evaluation knows of each gallery item, in gallery order: its id, its query text
    ("" when it has none) and its attributes (product_type, colour, pattern, section, ...)."""

    ids: Sequence[str]
    texts: Sequence[str]
    attributes: Sequence[Mapping[str, str]]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.texts) == len(self.attributes):
            raise ValueError("one id, text and attribute mapping per gallery item")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def text_rows(self) -> list[int]:
        """Items that have a query text (each queries the whole gallery with it)."""
        return [i for i, text in enumerate(self.texts) if text.strip()]

    @property
    def types(self) -> list[str]:
        return [a.get("product_type", "") for a in self.attributes]

    @property
    def type_rows(self) -> list[int]:
        """Items of a known product type: the image-to-image queries."""
        return [i for i, t in enumerate(self.types) if is_known(t)]

    def attribute_queries(self, min_count: int = 10) -> dict[str, list[AttributeQuery]]:
        """The generated queries of each pair in ATTRIBUTE_PAIRS (pairs whose values are held
        by fewer than ``min_count`` items are left out; a pair may end up with none)."""
        return {
            name: attribute_queries(self.attributes, keys, min_count=min_count)
            for name, keys in ATTRIBUTE_PAIRS.items()
        }


def text_to_image_metrics(
    text_vectors: FloatArray,
    gallery_vectors: FloatArray,
    gallery: LabelledGallery,
    prefix: str = "desc",
) -> dict[str, float]:
    """Recall@1/5/10 and MRR of the items' own texts (``text_vectors``: one row per
    ``gallery.text_rows`` item) against the gallery images. ``<prefix> R@k``: any item with the
    identical text is a hit (colour variants share a description); ``<prefix> exact-id R@k``:
    only the item itself. MRR is over the full ranking (every query has a hit somewhere)."""
    rows = gallery.text_rows
    by_text = retrieval_metrics(
        text_vectors, gallery_vectors, [gallery.texts[i] for i in rows], gallery.texts
    )
    by_id = retrieval_metrics(
        text_vectors, gallery_vectors, [gallery.ids[i] for i in rows], gallery.ids
    )
    return by_text.as_dict(f"{prefix} ", precision=False) | by_id.as_dict(
        f"{prefix} exact-id ", precision=False
    )


def text_to_image_chance(gallery: LabelledGallery, prefix: str = "desc") -> dict[str, Baseline]:
    rows = gallery.text_rows
    by_text = chance_levels([gallery.texts[i] for i in rows], gallery.texts)
    by_id = chance_levels([gallery.ids[i] for i in rows], gallery.ids)
    return by_text.baselines(f"{prefix} ") | by_id.baselines(f"{prefix} exact-id ")


def image_to_image_metrics(
    gallery_vectors: FloatArray, augmented_vectors: FloatArray, gallery: LabelledGallery
) -> dict[str, float]:
    """Same-type precision@10 of each item of a known type against the rest of the gallery,
    and Recall@1 of the original for an augmented copy of each item (row i of
    ``augmented_vectors`` is a copy of item i)."""
    same_type = same_label_precision(
        gallery_vectors, gallery.types, k=10, query_rows=gallery.type_rows
    )
    return {
        IMAGE_TYPE_METRIC: same_type.precision[10],
        AUGMENTED_METRIC: augmented_recall_at_1(augmented_vectors, gallery_vectors),
    }


def image_to_image_chance(gallery: LabelledGallery) -> dict[str, Baseline]:
    rows = gallery.type_rows
    types = gallery.types
    same_type = chance_levels([types[i] for i in rows], types, ks=(10,), exclude_index=rows)
    return {
        IMAGE_TYPE_METRIC: Baseline(same_type.precision[10], same_type.n_queries),
        AUGMENTED_METRIC: Baseline(1.0 / max(len(gallery), 1), len(gallery)),
    }


def photo_style_type_precision(
    photo_vectors: FloatArray, gallery_vectors: FloatArray, gallery: LabelledGallery, k: int = 10
) -> float:
    """Same-type precision@k of a shopper-style photo of each item of a known type (row j of
    ``photo_vectors`` shows item ``gallery.type_rows[j]``) against the clean gallery, the item
    itself excluded as in the clean image-to-image metric."""
    rows = gallery.type_rows
    if len(photo_vectors) != len(rows):
        raise ValueError("one photo vector per item of a known type")
    types = gallery.types
    result = retrieval_metrics(
        photo_vectors, gallery_vectors, [types[i] for i in rows], types, ks=(k,), exclude_index=rows
    )
    return result.precision[k]


def attribute_chance(
    queries: Sequence[AttributeQuery], gallery: LabelledGallery, k: int = 10
) -> Baseline:
    return Baseline(chance_attribute_precision(queries, gallery.attributes, k), len(queries))
