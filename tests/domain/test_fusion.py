"""Fusion of the relevance signals (domain/fusion.py) on hand-made rankings, and the search
service's use of it: modes, exact names first, match quality."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from domain.errors import BadInput
from domain.fusion import (
    FUSION_DEPTH,
    FusedHit,
    FusionConfig,
    QualityThresholds,
    Ranked,
    coverage,
    exact_matches,
    fuse,
    normalised_name,
    relative_bm25,
    semantic_confidence,
    spread,
    text_confidence,
    weights,
    words_score,
)
from domain.model import (
    ImageQuery,
    LexicalHit,
    MatchQuality,
    Product,
    ProductFilter,
    SearchMode,
    SearchPage,
    SearchQuery,
    TextQuery,
    product_text_space,
)
from domain.services import CatalogService, SearchService
from tests.fakes import (
    FakeEncoderProvider,
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)


def hit(pid: str, score: float, matched: float = 1.0, name: str = "") -> LexicalHit:
    return LexicalHit(product_id=pid, score=score, matched=matched, name=name or pid)


def ids(ranked: Sequence[FusedHit]) -> list[str]:
    return [h.product_id for h in ranked]


# -- pure fusion ----------------------------------------------------------------------------

COVERAGE_ONLY = FusionConfig(full_match_depth=0)
"""Text confidence from the query's coverage alone (the default also asks whether the words
describe the products: full matches among the top lexical hits or a close product-text
vector, tested below)."""


def test_spread_maps_mean_plus_minus_three_deviations_onto_0_1() -> None:
    # mean 0.3, standard deviation 0.1: 0.0 .. 0.6 maps onto 0 .. 1
    spread_ = spread([("a", 0.4), ("c", 0.2)])
    assert spread_ == pytest.approx({"a": 0.4 / 0.6, "c": 0.2 / 0.6})
    assert spread([("a", 0.3), ("b", 0.3)]) == {"a": 1.0, "b": 1.0}
    assert spread([]) == {}


def test_spread_lets_the_last_of_a_list_count_more_than_missing_it() -> None:
    # min-max gives the last of the list 0, as if the product were missing from it
    even = [(f"t{i}", 0.40 - i * 0.01) for i in range(10)]
    spread_ = spread(even)
    assert 0.0 < spread_["t9"] < spread_["t0"] < 1.0
    assert list(spread_) == [pid for pid, _ in even]
    # a list with a standout puts it near the top of the range, the rest well below
    standout = spread([("top", 0.95), *even])
    assert standout["top"] > 0.8 > 0.5 > standout["t0"]


def test_words_score_ranks_every_word_above_half_of_them() -> None:
    # BM25 can prefer a product repeating one word; having every word of the query wins
    hits = [hit("repeats", 10.0, matched=0.5), hit("both", 8.0, matched=1.0)]
    scores = words_score(hits, matched_exponent=2.0)
    assert scores == pytest.approx({"repeats": 0.25, "both": 0.8})
    assert words_score(hits, matched_exponent=0.0) == relative_bm25(hits)


def test_bm25_is_relative_to_the_best_of_its_list() -> None:
    assert relative_bm25([hit("a", 8.0), hit("b", 2.0)]) == {"a": 1.0, "b": 0.25}


def test_lexical_weight_follows_query_coverage() -> None:
    config = COVERAGE_ONLY
    full = Ranked(visual=[("a", 0.3)], lexical=[hit("a", 1.0, matched=1.0)])
    half = Ranked(visual=[("a", 0.3)], lexical=[hit("a", 1.0, matched=0.5)])
    floor = config.lexical_floor
    assert weights(full, config).lexical == pytest.approx(1.0)
    assert weights(half, config).lexical == pytest.approx(floor + 0.25 * (1 - floor))
    assert weights(Ranked(visual=[("a", 0.3)]), config).lexical == 0.0
    assert coverage([hit("a", 1, 0.5), hit("b", 1, 1.0)]) == 1.0


def test_words_lead_when_the_whole_query_matches() -> None:
    # The images rank sunglasses first; every word of the query is in b's words.
    ranked = Ranked(
        visual=[("sunglasses", 0.31), ("wallet", 0.30), ("b", 0.22), ("c", 0.21)],
        lexical=[hit("b", 9.0), hit("c", 4.0, matched=0.5)],
    )
    fused = fuse(ranked, COVERAGE_ONLY)
    assert ids(fused.hits)[0] == "b"
    assert fused.hits[0].signals.visual == pytest.approx(0.22)
    assert fused.hits[0].signals.lexical == 1.0
    assert fused.hits[0].signals.semantic is None


def test_images_lead_when_the_words_cover_little_of_the_query() -> None:
    # Only one of two words matched anywhere: the lexical weight is a quarter.
    ranked = Ranked(
        visual=[("a", 0.40), ("b", 0.35), ("c", 0.20)],
        lexical=[hit("c", 9.0, matched=0.5)],
    )
    assert ids(fuse(ranked, COVERAGE_ONLY).hits)[:2] == ["a", "b"]
    assert ids(fuse(ranked).hits)[:2] == ["a", "b"]


def test_semantic_signal_adds_its_ranking() -> None:
    ranked = Ranked(
        visual=[("a", 0.30), ("b", 0.29), ("c", 0.10)],
        semantic=[("b", 0.80), ("a", 0.50), ("c", 0.40)],
    )
    fused = fuse(ranked, COVERAGE_ONLY)
    assert ids(fused.hits)[0] == "b"
    assert all(0.0 <= h.score <= 1.0 for h in fused.hits)


def test_one_signal_keeps_its_raw_score() -> None:
    fused = fuse(Ranked(visual=[("a", 0.93), ("b", 0.41)], image_query=True))
    assert [(h.product_id, h.score) for h in fused.hits] == [("a", 0.93), ("b", 0.41)]


def test_exact_matches_come_first_in_their_order() -> None:
    ranked = Ranked(
        visual=[("x", 0.5), ("v2", 0.3), ("v1", 0.2)],
        lexical=[hit("x", 9.0), hit("v1", 5.0), hit("v2", 5.0)],
        exact=["v1", "v2"],
    )
    fused = fuse(ranked)
    assert ids(fused.hits)[:3] == ["v1", "v2", "x"]
    assert [h.exact for h in fused.hits[:3]] == [True, True, False]
    assert fused.quality is MatchQuality.STRONG


def test_hits_beyond_the_limit_are_made_on_demand_as_the_full_ranking_has_them() -> None:
    ranked = Ranked(
        visual=[(f"v{i}", 0.9 - i / 50) for i in range(20)],
        lexical=[hit("v7", 9.0), hit("w1", 5.0, matched=0.5)],
        semantic=[("w2", 0.8), ("v3", 0.7)],
        exact=["v5"],
    )
    everything = fuse(ranked).hits
    limited = fuse(ranked, limit=4)
    assert limited.hits == everything[:4]
    assert limited.hits + limited.hits_at(slice(4, 15)) == everything[:15]
    assert limited.hits_at([12, 5, 3]) == [everything[12], everything[5], everything[3]]
    assert limited.hits[0].exact
    assert not any(h.exact for h in limited.hits_at(slice(1, None)))


def test_exact_name_and_id_matching() -> None:
    names = {"p1": "Basics Men Black Trousers", "p2": "basics  men black TROUSERS", "p3": "X"}
    assert exact_matches("  BASICS men   black trousers ", names) == ["p1", "p2"]
    assert exact_matches("p3", names) == ["p3"]
    assert exact_matches("black trousers", names) == []
    assert normalised_name(" A  b\tC ") == "a b c"


def test_id_match_brings_products_sharing_its_name_next() -> None:
    names = {"p9": "Lace Dress", "p8": "lace dress", "p7": "Other"}
    assert exact_matches("p9", names) == ["p9", "p8"]


THRESHOLDS = QualityThresholds(
    text_visual_strong=0.4,
    text_visual_weak=0.3,
    semantic_strong=0.8,
    semantic_weak=0.6,
    image_strong=0.9,
    image_weak=0.6,
)
CONFIG = FusionConfig(quality=THRESHOLDS)


@pytest.mark.parametrize(
    ("ranked", "quality"),
    [
        (Ranked(visual=[("a", 0.2)], lexical=[hit("a", 1.0, matched=1.0)]), MatchQuality.STRONG),
        (Ranked(visual=[("a", 0.2)], lexical=[hit("a", 1.0, matched=0.5)]), MatchQuality.WEAK),
        (Ranked(visual=[("a", 0.2)]), MatchQuality.NONE),
        (Ranked(visual=[("a", 0.35)]), MatchQuality.WEAK),
        (Ranked(visual=[("a", 0.45)]), MatchQuality.STRONG),
        (Ranked(visual=[("a", 0.2)], semantic=[("a", 0.85)]), MatchQuality.STRONG),
        (Ranked(visual=[("a", 0.2)], semantic=[("a", 0.65)]), MatchQuality.WEAK),
        (Ranked(visual=[("a", 0.45)], image_query=True), MatchQuality.NONE),
        (Ranked(visual=[("a", 0.95)], image_query=True), MatchQuality.STRONG),
        (Ranked(), MatchQuality.NONE),
    ],
)
def test_match_quality_thresholds(ranked: Ranked, quality: MatchQuality) -> None:
    assert fuse(ranked, CONFIG).quality is quality


# -- the search service with a hand-made lexical index ---------------------------------------


class ScriptedLexicalIndex:
    """Answers each query text with the hits given for it (and records the calls)."""

    def __init__(self, answers: dict[str, list[LexicalHit]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ProductFilter | None]] = []

    async def search_text(
        self, text: str, top_k: int, filter: ProductFilter | None = None
    ) -> list[LexicalHit]:
        self.calls.append((text, filter))
        return self.answers.get(text, [])[:top_k]


PRODUCTS = [
    ("1", "Basics Men Black Trousers", "sunglasses in black"),
    ("2", "Basics Men Black Trousers", "trousers"),
    ("3", "Wallet", "a black wallet"),
    ("4", "Lace Dress", "lace dress"),
]


async def service_with(
    answers: dict[str, list[LexicalHit]],
) -> tuple[SearchService, ScriptedLexicalIndex]:
    encoder = HashingEncoder()
    encoders = FakeEncoderProvider(encoder)
    index, catalog, images = InMemoryVectorIndex(), InMemoryCatalog(), InMemoryImageStore()
    products = CatalogService(encoders, index, catalog, images)
    for pid, name, looks_like in PRODUCTS:
        await products.add(pid, name, fake_image(looks_like), encoder_ids=["fake"])
    lexical = ScriptedLexicalIndex(answers)
    return SearchService(encoders, index, catalog, images, lexical=lexical), lexical


async def test_exact_name_first_then_its_colour_variant() -> None:
    name = "Basics Men Black Trousers"
    search, _ = await service_with(
        {
            name.lower(): [
                hit("3", 9.0, 0.5, "Wallet"),
                hit("2", 8.0, 1.0, name),
                hit("1", 8.0, 1.0, name),
            ]
        }
    )
    page = await search.by_text(name.lower(), top_k=3)
    assert [h.product.id for h in page.hits][:2] == ["2", "1"]
    assert [h.exact for h in page.hits] == [True, True, False]
    assert page.match_quality is MatchQuality.STRONG


async def test_visual_mode_asks_no_words_and_text_mode_no_images() -> None:
    search, lexical = await service_with({"lace dress": [hit("4", 5.0, 1.0, "Lace Dress")]})
    visual = await search.by_text("lace dress", top_k=4, mode=SearchMode.VISUAL)
    assert lexical.calls == []
    assert all(h.signals.lexical is None and not h.exact for h in visual.hits)
    assert len(visual.hits) == 4
    text = await search.by_text("lace dress", top_k=4, mode=SearchMode.TEXT)
    assert text.hits[0].product.id == "4"
    assert text.hits[0].exact
    assert all(h.signals.visual is None for h in text.hits)
    assert text.mode is SearchMode.TEXT


async def test_random_letters_are_no_match() -> None:
    search, _ = await service_with({})
    search.fusion = FusionConfig(quality=THRESHOLDS)
    page = await search.by_text("qxzvjkw", top_k=4)
    # the hashing encoder's cosines for unrelated words are far below the weak threshold
    assert page.match_quality is MatchQuality.NONE
    assert len(page.hits) == 4  # still ranked: the shopper may browse


async def test_filter_reaches_the_lexical_index() -> None:
    search, lexical = await service_with({})
    flt = ProductFilter({"colour": "Black"})
    await search.search(SearchQuery(text=TextQuery("black"), filter=flt))
    assert lexical.calls == [("black", flt)]


async def test_text_mode_needs_a_text() -> None:
    search, _ = await service_with({})
    with pytest.raises(BadInput):
        await search.search(
            SearchQuery(image=ImageQuery(data=fake_image("x")), mode=SearchMode.TEXT)
        )


async def test_product_words_get_vectors_in_their_own_space() -> None:
    search, _ = await service_with({})
    index = search._index
    # CatalogService.add wrote each product's words through the Indexer
    assert await index.count(product_text_space("fake")) == len(PRODUCTS)
    assert await index.count("fake") == len(PRODUCTS)  # image vectors unaffected
    page = await search.by_text("lace dress", top_k=2)
    assert page.hits[0].product.id == "4"
    # "Lace Dress" read by the text tower is exactly the query's vector
    assert page.hits[0].signals.semantic == pytest.approx(1.0, abs=1e-5)
    # the photo of "wallet" is not the words "lace dress": the spaces are apart
    words = await index.fetch(product_text_space("fake"), ["3"])
    image = await index.fetch("fake", ["3"])
    assert float(words["3"] @ image["3"]) < 0.99


async def test_pages_past_the_fusion_depth_never_repeat_or_skip_a_product() -> None:
    """Paging a search with words beyond the signals' top FUSION_DEPTH: every page is cut
    from one ranking, so no product comes twice and none is skipped, whatever the page
    size."""
    encoder = HashingEncoder()
    encoders = FakeEncoderProvider(encoder)
    index, catalog, images = InMemoryVectorIndex(), InMemoryCatalog(), InMemoryImageStore()
    products = CatalogService(encoders, index, catalog, images)
    count = FUSION_DEPTH + 60
    for i in range(count):
        await products.add(f"p{i:03}", f"dress {i}", fake_image(f"look {i}"), encoder_ids=["fake"])
    words = [hit(f"p{i:03}", 1.0 + (i * 37 % 101), 0.5 + 0.5 * (i % 2)) for i in range(count)]
    lexical = ScriptedLexicalIndex({"dress": sorted(words, key=lambda h: -h.score)})
    search = SearchService(encoders, index, catalog, images, lexical=lexical)

    async def every_page(top_k: int, mode: SearchMode) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = await search.by_text("dress", top_k=top_k, cursor=cursor, mode=mode)
            assert [h.rank for h in page.hits] == list(
                range(len(seen) + 1, len(seen) + 1 + len(page.hits))
            )
            seen += [h.product.id for h in page.hits]
            cursor = page.next_cursor
            if cursor is None:
                return seen

    for mode in (SearchMode.HYBRID, SearchMode.TEXT):
        small, large = await every_page(7, mode), await every_page(100, mode)
        assert len(small) == len(set(small)) >= FUSION_DEPTH, mode
        assert small == large, mode


async def test_facet_counts_follow_the_ranking() -> None:
    search = SearchService(
        FakeEncoderProvider(HashingEncoder()),
        InMemoryVectorIndex(),
        InMemoryCatalog(),
        InMemoryImageStore(),
    )
    catalog = search._catalog
    await catalog.upsert_many(
        [
            Product(id="a", name="a", tags={"colour": "Black", "type": "Dress"}),
            Product(id="b", name="b", tags={"colour": "Black"}),
            Product(id="c", name="c", tags={"colour": "Red"}),
        ]
    )
    page = SearchPage(hits=(), encoder_id="fake", took_ms=0.0, ranked_ids=("a", "b"))
    assert await search.facet_counts(page) == {"colour": {"Black": 2}, "type": {"Dress": 1}}
    assert await search.facet_counts(page, ["type"]) == {"type": {"Dress": 1}}


def test_default_leans_on_words_only_when_many_products_match_fully() -> None:
    # the images see the query (cosines above visual_evidence_at) but rank it wrongly
    visual = [("sunglasses", 0.51), ("wallet", 0.50), ("t0", 0.45), ("t9", 0.45), ("x", 0.4)]
    described = Ranked(visual=visual, lexical=[hit(f"t{i}", 9.0 - i) for i in range(10)])
    brushed = Ranked(
        visual=visual, lexical=[hit("x", 9.0), *(hit(f"t{i}", 1.0, 0.5) for i in range(9))]
    )
    assert ids(fuse(described).hits)[0] == "t0"
    assert ids(fuse(brushed).hits)[0] == "sunglasses"


def test_full_match_share_scales_the_text_signals() -> None:
    config = FusionConfig(full_match_depth=4)
    descriptive = [hit(f"d{i}", 5.0 - i, matched=1.0) for i in range(4)]
    terse = [hit("t0", 5.0, matched=1.0), *(hit(f"t{i}", 1.0, matched=0.5) for i in (1, 2, 3))]
    assert text_confidence(Ranked(lexical=descriptive), config) == 1.0
    assert text_confidence(Ranked(lexical=terse), config) == pytest.approx(0.25)
    ranked = Ranked(visual=[("t0", 0.5)], semantic=[("t0", 0.4)], lexical=terse)
    w = weights(ranked, config)
    expected_lexical = config.lexical_floor + 0.25 * (1 - config.lexical_floor)
    expected_semantic = config.semantic_floor + 0.25 * (
        config.semantic_weight - config.semantic_floor
    )
    assert (w.lexical, w.semantic, w.visual) == pytest.approx(
        (expected_lexical, expected_semantic, 1 - 0.25 * (1 - config.visual_floor))
    )


def test_a_close_product_text_vector_is_evidence_the_words_describe_the_products() -> None:
    # few full matches (two products say "blue heels"), but the products' words are close
    # to the query: the words still lead, as on a catalog whose names say colour and type
    config = FusionConfig(full_match_depth=10, semantic_confident_from=0.5)
    lexical = [hit("h0", 9.0), hit("h1", 9.0), *(hit(f"p{i}", 3.0, 0.5) for i in range(8))]
    far = Ranked(lexical=lexical, semantic=[("h0", 0.45)])
    close = Ranked(lexical=lexical, semantic=[("h0", config.semantic_confident_at + 0.05)])
    assert text_confidence(far, config) == pytest.approx(0.2)
    assert text_confidence(close, config) == 1.0
    halfway = (config.semantic_confident_from + config.semantic_confident_at) / 2
    assert semantic_confidence([("a", halfway)], config) == pytest.approx(0.5)
    assert semantic_confidence([], config) == 0.0
    # coverage still caps it: half of the query's words is a quarter of the confidence
    partial = Ranked(lexical=[hit("p", 3.0, 0.5)], semantic=[("p", 0.9)])
    assert text_confidence(partial, config) == pytest.approx(0.25)


def test_the_weights_move_between_the_floors_with_the_confidence() -> None:
    config = FusionConfig()
    answered = Ranked(visual=[("a", 0.5)], semantic=[("a", 0.9)], lexical=[hit("a", 1.0)])
    brushed = Ranked(visual=[("a", 0.5)], semantic=[("a", 0.3)], lexical=[hit("a", 1.0, 0.5)])
    words_lead, images_lead = weights(answered, config), weights(brushed, config)
    assert (words_lead.visual, words_lead.lexical, words_lead.semantic) == pytest.approx(
        (config.visual_floor, config.lexical_weight, config.semantic_weight)
    )
    assert images_lead.visual > 0.9
    assert images_lead.lexical < 0.5
    assert images_lead.semantic < config.semantic_weight


def test_images_that_hardly_see_a_text_query_keep_only_their_floor() -> None:
    config = FusionConfig()
    low, high = config.visual_evidence_from, config.visual_evidence_at
    lexical = [hit("a", 1.0, 0.5)]  # half the words: the images would lead

    def visual_weight(best: float, image_query: bool = False) -> float:
        ranked = Ranked(visual=[("a", best)], lexical=lexical, image_query=image_query)
        return weights(ranked, config).visual

    seen = visual_weight(high)
    assert visual_weight(high + 0.2) == pytest.approx(seen)
    assert visual_weight((low + high) / 2) == pytest.approx(seen / 2)
    assert visual_weight(low) == pytest.approx(seen * config.visual_floor)
    assert visual_weight(low - 0.2) == pytest.approx(seen * config.visual_floor)
    # an image query's cosines are image-to-image: its visual weight is not scaled
    assert visual_weight(low, image_query=True) == pytest.approx(seen)
    with pytest.raises(ValueError, match="visual_evidence_from"):
        FusionConfig(visual_evidence_from=0.4, visual_evidence_at=0.4)


def test_words_lead_where_the_images_do_not_see_the_query() -> None:
    # tiny photos: the best text-to-image cosine is low; "x" alone has every word of the
    # query, so the words answer it only a little (one full match in the top 10)
    visual = [("sunglasses", 0.25), ("wallet", 0.24), ("x", 0.2)]
    lexical = [hit("x", 9.0), *(hit(f"t{i}", 1.0, 0.5) for i in range(9))]
    assert ids(fuse(Ranked(visual=visual, lexical=lexical)).hits)[0] == "x"
    seen = [(pid, cosine + 0.3) for pid, cosine in visual]
    assert ids(fuse(Ranked(visual=seen, lexical=lexical)).hits)[0] == "sunglasses"


def test_words_nudge_the_images_on_a_catalog_of_terse_names() -> None:
    # No product has both words; "striped" in a description lifts a product the images rank
    # close to the top over one they rank just above it, not over the clear visual best.
    visual = [
        ("best", 0.60),
        ("plain", 0.45),
        ("striped", 0.44),
        *((f"v{i}", 0.30 - 0.01 * i) for i in range(10)),
    ]
    lexical = [hit("striped", 4.0, matched=0.5), hit("v9", 4.0, matched=0.5)]
    fused = fuse(Ranked(visual=visual, lexical=lexical, semantic=[("striped", 0.4)]))
    assert ids(fused.hits)[:3] == ["best", "striped", "plain"]
    assert ids(fused.hits).index("v9") > 3
