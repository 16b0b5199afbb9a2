"""Fusing the relevance signals of a search into one ranking, and saying how good it is.

Three signals come in as ranked lists, each the top ``FUSION_DEPTH`` of one port:

* **visual**: the query vector against the products' image vectors (cosine);
* **semantic**: the query's text vector against the vectors of the products' words
  (cosine, the encoder's text tower; see ``product_text_space``);
* **lexical**: BM25 over names, descriptions and tag values, with the share of the query's
  words each product has.

Each list is normalised over itself (distribution-based score fusion: a cosine list is
spread over its mean plus or minus three standard deviations; BM25, whose scale depends on
the adapter, as a share of the best score, times the square of the share of the query's
words the product has, so a product with every word outranks one with half of them), and the
fused score is the weighted mean of the normalised signals, a product missing from a list
counting 0 there.

The weights adapt to the query, not to a hand-tuned catalog setting. The *text confidence*
(0..1) says how far the catalog's words answer the query: the square of its ``coverage``
(the largest share of the query's words one product has) times the larger of two pieces of
evidence that the catalog's words describe what is asked: the share of the top lexical hits
that have every word, and how close the best product-text vector comes to the query
(``semantic_confident_from`` .. ``semantic_confident_at``). With confidence 1 ("black
trousers" on a catalog whose names say colour and type) the words lead and the images only
break ties (``visual_floor``); with confidence 0 (terse names that never say the colour) the
images lead and the words nudge (``lexical_floor``, ``semantic_floor``): a description that
says "striped" still helps "striped sweater". The images lead only as far as they see the
query: when the best text-to-image cosine is low (60x80 photos against "blue perfume and body
mist"), the visual weight shrinks towards its floor (``visual_evidence_*``). Products whose name or id is the query come
first whatever the signals say (``exact``). A search with a single signal (a photo without
words) keeps that signal's raw score, so image searches score as they always have. The
defaults were chosen on training galleries of both catalog styles (``bench.fusion_tuning``,
docs/relevance.md), never on the held-out splits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from domain.model import LexicalHit, MatchQuality, Signals

Scores = npt.NDArray[np.float64]
Rows = npt.NDArray[np.int64]

FUSION_DEPTH = 200
"""How many results each signal contributes to the fusion."""
FACET_DEPTH = 200
"""How deep into the fused ranking a search page's facet counts look."""
SPREAD_DEVIATIONS = 3.0
"""A cosine list is normalised over its mean plus or minus this many standard deviations."""


@dataclass(frozen=True)
class QualityThresholds:
    """When a search says its best match is STRONG, WEAK or NONE.

    STRONG: the query names a product (exact), or one product has every word of the query,
    or the best cosine reaches ``*_strong``. NONE: no product has any word of the query and
    no cosine reaches ``*_weak``. WEAK otherwise. Cosines are those of the default encoder
    (fashion-lite; calibrated with ``fashion-search eval --mode shop`` on random-letter
    strings against attribute queries); image-to-image cosines of near-duplicates are far
    higher than text-to-image ones, hence their own pair."""

    text_visual_strong: float = 0.45
    text_visual_weak: float = 0.33
    semantic_strong: float = 0.75
    semantic_weak: float = 0.55
    image_strong: float = 0.85
    image_weak: float = 0.6


@dataclass(frozen=True)
class FusionConfig:
    """How the signals are weighed (see the module docstring). At text confidence ``c`` the
    weights are: visual ``visual_weight * (1 - c * (1 - visual_floor))``, lexical
    ``lexical_weight * (lexical_floor + c * (1 - lexical_floor))``, semantic
    ``semantic_floor + c * (semantic_weight - semantic_floor)``."""

    visual_weight: float = 1.0
    lexical_weight: float = 1.0
    semantic_weight: float = 0.25
    """The semantic weight when the words answer the query fully."""
    visual_floor: float = 0.1
    """The share of its weight the visual signal keeps when the words answer the query."""
    lexical_floor: float = 0.15
    semantic_floor: float = 0.1
    """The text signals' weights when the words hardly answer the query."""
    coverage_exponent: float = 2.0
    matched_exponent: float = 2.0
    """A lexical hit's normalised score is its relative BM25 times its share of the query's
    words to this power."""
    full_match_depth: int = 10
    """When > 0, the share of the top ``full_match_depth`` lexical hits that have every word
    of the query is evidence that the catalog's words describe its products (many full
    matches) rather than brush the query (a few descriptions mention "black"); 0: the words
    are trusted as far as they cover the query."""
    semantic_confident_from: float = 0.5
    semantic_confident_at: float = 0.7
    """The best product-text cosine is the other evidence: none below ``*_from``, full at
    ``*_at`` (cosines of the default encoder, fashion-lite)."""
    visual_evidence_from: float = 0.3
    visual_evidence_at: float = 0.4
    """How far the images see a text query: the visual weight keeps ``visual_floor`` of
    itself when the best text-to-image cosine is at or below ``*_from``, all of it from
    ``*_at`` (tiny photos hardly see attribute queries; cosines of fashion-lite)."""
    quality: QualityThresholds = field(default_factory=QualityThresholds)

    def __post_init__(self) -> None:
        if not self.semantic_confident_from < self.semantic_confident_at:
            raise ValueError("semantic_confident_from must be below semantic_confident_at")
        if not self.visual_evidence_from < self.visual_evidence_at:
            raise ValueError("visual_evidence_from must be below visual_evidence_at")


DEFAULT_FUSION = FusionConfig()


@dataclass(frozen=True)
class Ranked:
    """The signals' lists for one search, best first. ``exact``: products whose name or id
    is the query, in the order they go first. ``text_share`` scales the weights of the
    text signals (lexical, semantic) for an image steered by a text modifier;
    ``image_query`` tells the quality which cosine thresholds apply to ``visual``."""

    visual: Sequence[tuple[str, float]] = ()
    semantic: Sequence[tuple[str, float]] = ()
    lexical: Sequence[LexicalHit] = ()
    exact: Sequence[str] = ()
    text_share: float = 1.0
    image_query: bool = False


@dataclass(frozen=True)
class FusedHit:
    product_id: str
    score: float
    signals: Signals
    exact: bool = False


@dataclass(frozen=True)
class Weights:
    visual: float
    lexical: float
    semantic: float


@dataclass(frozen=True)
class Fused:
    hits: list[FusedHit]
    quality: MatchQuality
    weights: Weights
    total: int = 0
    """Candidates ranked (``hits`` may hold only the first of them)."""
    order: tuple[str, ...] = ()
    """Every candidate's id in the fused order (what facet counts read: a search makes hits
    for its page only)."""
    confidence: float = 0.0
    """The text confidence the weights were set by (``text_confidence``)."""
    hits_at: Callable[[Sequence[int] | slice], list[FusedHit]] = lambda positions: []
    """Hits for these positions of ``order`` (beyond ``hits``, when a search needs some of
    them after all: the colour re-rank)."""


def coverage(lexical: Sequence[LexicalHit]) -> float:
    """How much of the query the catalog's words cover: the largest share of its words one
    product has."""
    return max((h.matched for h in lexical), default=0.0)


@dataclass(frozen=True)
class _Lists:
    """A search's lists as arrays, read once per fusion (a search fuses three lists of
    FUSION_DEPTH: per-item Python work there is most of the fusion's cost)."""

    visual_ids: Sequence[str]
    visual: Scores
    semantic_ids: Sequence[str]
    semantic: Scores
    lexical_ids: Sequence[str]
    lexical: Scores
    matched: Scores

    @classmethod
    def of(cls, ranked: Ranked) -> _Lists:
        visual_ids, visual = _split(ranked.visual)
        semantic_ids, semantic = _split(ranked.semantic)
        lexical_ids: Sequence[str] = ()
        lexical, matched = np.empty(0, np.float64), np.empty(0, np.float64)
        if ranked.lexical:
            lexical_ids, bm25, shares, _ = zip(*ranked.lexical, strict=True)
            lexical, matched = np.asarray(bm25, np.float64), np.asarray(shares, np.float64)
        return cls(
            visual_ids=visual_ids,
            visual=visual,
            semantic_ids=semantic_ids,
            semantic=semantic,
            lexical_ids=lexical_ids,
            lexical=lexical,
            matched=matched,
        )

    @property
    def coverage(self) -> float:
        return float(self.matched.max()) if len(self.matched) else 0.0


def _split(scored: Sequence[tuple[str, float]]) -> tuple[Sequence[str], Scores]:
    if not scored:
        return (), np.empty(0, np.float64)
    ids, scores = zip(*scored, strict=True)
    return ids, np.asarray(scores, np.float64)


def _best(scores: Scores) -> float | None:
    return float(scores.max()) if len(scores) else None


def text_confidence(ranked: Ranked, config: FusionConfig) -> float:
    """How far the catalog's words answer this query, 0..1 (see the module docstring)."""
    return _text_confidence(_Lists.of(ranked), config)


def _text_confidence(lists: _Lists, config: FusionConfig) -> float:
    described = 1.0
    if config.full_match_depth > 0:
        top = lists.matched[: config.full_match_depth]
        full = float(np.count_nonzero(top >= 1.0)) / config.full_match_depth
        described = max(full, _semantic_confidence(_best(lists.semantic), config))
    confidence: float = lists.coverage**config.coverage_exponent * described
    return confidence


def semantic_confidence(semantic: Sequence[tuple[str, float]], config: FusionConfig) -> float:
    """How close the best product-text vector comes to the query, 0..1."""
    return _semantic_confidence(max((s for _, s in semantic), default=None), config)


def _semantic_confidence(best: float | None, config: FusionConfig) -> float:
    if best is None:
        return 0.0
    low, high = config.semantic_confident_from, config.semantic_confident_at
    return min(1.0, max(0.0, (best - low) / (high - low)))


def weights(ranked: Ranked, config: FusionConfig = DEFAULT_FUSION) -> Weights:
    """The query-adaptive weights (a signal without results weighs nothing)."""
    lists = _Lists.of(ranked)
    return _weights(ranked, _text_confidence(lists, config), config, _best(lists.visual))


def _weights(
    ranked: Ranked, c: float, config: FusionConfig, best_visual: float | None = None
) -> Weights:
    visual = config.visual_weight * (1.0 - c * (1.0 - config.visual_floor))
    visual *= _visual_evidence(ranked, best_visual, config)
    lexical = config.lexical_weight * (config.lexical_floor + c * (1.0 - config.lexical_floor))
    semantic = config.semantic_floor + c * (config.semantic_weight - config.semantic_floor)
    return Weights(
        visual=visual if ranked.visual else 0.0,
        lexical=lexical * ranked.text_share if ranked.lexical else 0.0,
        semantic=semantic * ranked.text_share if ranked.semantic else 0.0,
    )


def _visual_evidence(ranked: Ranked, best: float | None, config: FusionConfig) -> float:
    """The share of its weight the visual signal keeps for a text query, by how close the
    best product image comes to it (``visual_evidence_*``); 1 for an image query."""
    if ranked.image_query or best is None:
        return 1.0
    low, high = config.visual_evidence_from, config.visual_evidence_at
    return min(1.0, max(config.visual_floor, (best - low) / (high - low)))


def spread(scores: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Scores mapped from their mean minus SPREAD_DEVIATIONS standard deviations (0) to the
    mean plus as many (1). Unlike min-max, the last of a list still scores above a product
    missing from it (0), and a list's best reaches 1 only when it stands out from the rest."""
    ids, values = _split(scores)
    return dict(zip(ids, _spread(values).tolist(), strict=True))


def _spread(values: Scores) -> Scores:
    if not len(values):
        return values
    mean = float(values.sum()) / len(values)
    centred = values - mean
    deviation = math.sqrt(float(centred @ centred) / len(values))
    if deviation == 0:
        return np.ones(len(values), np.float64)
    low = mean - SPREAD_DEVIATIONS * deviation
    spread_: Scores = (values - low) / (2 * SPREAD_DEVIATIONS * deviation)
    return spread_


def words_score(hits: Sequence[LexicalHit], matched_exponent: float) -> dict[str, float]:
    """The lexical signal, 0..1: relative BM25 times the share of the query's words the
    product has, to ``matched_exponent``."""
    lists = _Lists.of(Ranked(lexical=hits))
    scores = _words_score(lists.lexical, lists.matched, matched_exponent)
    return dict(zip(lists.lexical_ids, scores.tolist(), strict=True))


def _words_score(bm25: Scores, matched: Scores, matched_exponent: float) -> Scores:
    scores: Scores = _relative_bm25(bm25) * matched**matched_exponent
    return scores


def relative_bm25(hits: Sequence[LexicalHit]) -> dict[str, float]:
    """BM25 as a share of the best score of the list (the scale differs per adapter)."""
    lists = _Lists.of(Ranked(lexical=hits))
    return dict(zip(lists.lexical_ids, _relative_bm25(lists.lexical).tolist(), strict=True))


def _relative_bm25(bm25: Scores) -> Scores:
    best = float(bm25.max()) if len(bm25) else 0.0
    if best > 0:
        relative: Scores = bm25 / best
        return relative
    return np.ones(len(bm25), np.float64)


def fuse(ranked: Ranked, config: FusionConfig = DEFAULT_FUSION, limit: int | None = None) -> Fused:
    """One ranking from the signals' lists, exact matches first; hits only for the first
    ``limit`` (all when None; ``Fused.total`` counts every candidate)."""
    lists = _Lists.of(ranked)
    confidence = _text_confidence(lists, config)
    w = _weights(ranked, confidence, config, _best(lists.visual))
    exact = list(dict.fromkeys(ranked.exact))
    listed = [*lists.visual_ids, *lists.lexical_ids, *lists.semantic_ids]
    candidates, rows = _candidates(exact, listed)
    size = len(candidates)
    # each signal over the candidates: raw (NaN where missing) and normalised (0 there)
    raw_lexical = _relative_bm25(lists.lexical)
    signals = [
        (w.visual, lists.visual, _spread(lists.visual)),
        (
            w.lexical,
            raw_lexical,
            _words_score(lists.lexical, lists.matched, config.matched_exponent),
        ),
        (w.semantic, lists.semantic, _spread(lists.semantic)),
    ]  # in the order of ``listed``
    raws: list[Scores] = []
    summed = np.zeros(size, np.float64)
    weighted = [weight for weight, *_ in signals if weight > 0]
    end = 0
    for weight, raw, normalised in signals:
        start, end = end, end + len(raw)
        at = rows[start:end]
        raws.append(_scatter(size, at, raw, np.nan))
        if weight > 0 and len(weighted) > 1:
            summed += weight * _scatter(size, at, normalised, 0.0)
        elif weight > 0:  # one signal: its own score (cosine or relative BM25)
            summed = np.nan_to_num(raws[-1], nan=0.0)
    if len(weighted) > 1:
        summed /= sum(weighted)
    # exact matches (the first candidates) in their order, then by score; a stable sort
    # keeps the candidates' order among ties
    named = len(exact)
    ranks = np.concatenate([np.arange(named), named + np.argsort(-summed[named:], kind="stable")])
    order = [candidates[i] for i in ranks.tolist()]

    def hits_at(positions: Sequence[int] | slice) -> list[FusedHit]:
        shown = ranks[positions]
        visual, lexical, semantic = (r[shown].tolist() for r in raws)
        return [
            FusedHit(
                product_id=candidates[i],
                score=score,
                signals=Signals(visual=_known(v), lexical=_known(x), semantic=_known(s)),
                exact=i < named,
            )
            for i, score, v, x, s in zip(
                shown.tolist(), summed[shown].tolist(), visual, lexical, semantic, strict=True
            )
        ]

    hits = hits_at(slice(0, limit))
    quality = _match_quality(ranked, lists, config.quality)
    return Fused(
        hits=hits,
        quality=quality,
        weights=w,
        total=size,
        order=tuple(order),
        confidence=confidence,
        hits_at=hits_at,
    )


def _candidates(exact: Sequence[str], listed: Sequence[str]) -> tuple[list[str], Rows]:
    """Every product once, in the order first seen (``exact`` first, then ``listed``), and
    each entry of ``listed``'s position among them (one dict operation per entry: the
    fastest way measured, ahead of numpy on object arrays)."""
    at: dict[str, int] = {}
    for pid in exact:
        at.setdefault(pid, len(at))
    rows = np.fromiter([at.setdefault(pid, len(at)) for pid in listed], np.int64, len(listed))
    return list(at), rows


def _scatter(size: int, rows: Rows, values: Scores, missing: float) -> Scores:
    """``values`` placed at ``rows`` of an array of ``size`` holding ``missing`` elsewhere."""
    placed = np.full(size, missing, np.float64)
    placed[rows] = values
    return placed


def _known(value: float) -> float | None:
    return None if math.isnan(value) else value


def match_quality(ranked: Ranked, thresholds: QualityThresholds) -> MatchQuality:
    """STRONG, WEAK or NONE (see QualityThresholds)."""
    return _match_quality(ranked, _Lists.of(ranked), thresholds)


def _match_quality(ranked: Ranked, lists: _Lists, thresholds: QualityThresholds) -> MatchQuality:
    best_visual, best_semantic = _best(lists.visual), _best(lists.semantic)
    if ranked.image_query:
        visual_strong, visual_weak = thresholds.image_strong, thresholds.image_weak
    else:
        visual_strong, visual_weak = thresholds.text_visual_strong, thresholds.text_visual_weak

    def reaches(visual_threshold: float, semantic_threshold: float) -> bool:
        return _at_least(best_visual, visual_threshold) or _at_least(
            best_semantic, semantic_threshold
        )

    if ranked.exact or lists.coverage >= 1.0:
        return MatchQuality.STRONG
    if reaches(visual_strong, thresholds.semantic_strong):
        return MatchQuality.STRONG
    if ranked.lexical or reaches(visual_weak, thresholds.semantic_weak):
        return MatchQuality.WEAK
    return MatchQuality.NONE


def _at_least(value: float | None, threshold: float) -> bool:
    return value is not None and value >= threshold


def normalised_name(text: str) -> str:
    """A name or query as exact matching compares it: case folded, spacing collapsed."""
    return " ".join(text.casefold().split())


def exact_matches(query: str, names: Mapping[str, str]) -> list[str]:
    """The ids, among ``names`` (id -> name), that the query names exactly: the product
    whose id it is first, then those whose name it is (colour variants share a name)."""
    wanted = normalised_name(query)
    by_id = [pid for pid in names if pid == query.strip()]
    by_name = [pid for pid, name in names.items() if normalised_name(name) == wanted]
    if by_id:
        variants = {normalised_name(names[by_id[0]])}
        by_name += [pid for pid, name in names.items() if normalised_name(name) in variants]
    return list(dict.fromkeys([*by_id, *by_name]))
