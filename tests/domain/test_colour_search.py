"""The colour histogram through the write use case and the search: stored at ingest by the
ColourAnalyser, kept while the photo is the same, read with the page's rows, re-ranking a
HYBRID search's top when the query names a colour the words do not answer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from domain.colour import (
    DEFAULT_COLOUR_RERANK,
    GREY_LEVELS,
    HISTOGRAM_BINS,
    ColourRerank,
    histogram_bytes,
)
from domain.images import content_hash
from domain.indexer import IndexItem
from domain.model import ImageQuery, Product, SearchMode, SearchQuery, TextQuery
from domain.services import CatalogService, SearchService
from tests.fakes import (
    FakeColours,
    FakeEncoderProvider,
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)

BLUE = GREY_LEVELS + (8 * 2 + 1) * 2 + 1
RED = GREY_LEVELS + (0 * 2 + 1) * 2 + 1
WHITE = 5


def all_of(bin_: int) -> bytes:
    values = np.zeros(HISTOGRAM_BINS)
    values[bin_] = 1.0
    return histogram_bytes(values)


# The photos "show" words to the hashing encoder, never the colour: only the colour
# histograms know it. The blue shirt's photo is the furthest from "shirt" of the four.
SHIRTS = [
    ("red", "shirt a", RED),
    ("white", "shirt b", WHITE),
    ("plain", "shirt c", None),  # its photo has no readable colour
    ("blue", "shirt long sleeve extra wide", BLUE),
]


class Shop:
    def __init__(self, rerank: ColourRerank | None = None) -> None:
        encoder = HashingEncoder()
        self.encoders = FakeEncoderProvider(encoder)
        self.index = InMemoryVectorIndex()
        self.catalog = InMemoryCatalog()
        self.images = InMemoryImageStore()
        self.colours = FakeColours(
            {fake_image(words): all_of(b) for _, words, b in SHIRTS if b is not None}
        )
        self.search = SearchService(
            self.encoders,
            self.index,
            self.catalog,
            self.images,
            colour_rerank=rerank or DEFAULT_COLOUR_RERANK,
        )
        self.products = CatalogService(
            self.encoders, self.index, self.catalog, self.images, colours=self.colours
        )

    async def fill(self) -> Shop:
        for pid, words, _ in SHIRTS:
            await self.products.add(pid, "Shirt", fake_image(words))
        return self

    async def ids(self, text: str, mode: SearchMode = SearchMode.HYBRID) -> list[str]:
        page = await self.search.search(SearchQuery(text=TextQuery(text), mode=mode, top_k=4))
        return [h.product.id for h in page.hits]


@pytest.fixture
async def shop() -> Shop:
    return await Shop().fill()


async def test_the_histogram_is_stored_with_the_product_at_ingest(shop: Shop) -> None:
    stored = await shop.catalog.get_many(["blue", "plain"])
    assert stored["blue"].colour == all_of(BLUE)
    assert stored["plain"].colour is None  # the analyser could not read it


async def test_a_colour_the_words_do_not_answer_is_ranked_by_the_photos_colour(
    shop: Shop,
) -> None:
    # no word says the colour and every name is "Shirt": the fusion puts the blue shirt
    # last (its photo is the least shirt-like), the colour re-rank first
    assert (await shop.ids("shirt"))[-1] == "blue"
    assert (await shop.ids("blue shirt"))[0] == "blue"
    assert (await shop.ids("red shirt"))[0] == "red"


async def test_the_colour_share_is_a_signal_of_each_hit(shop: Shop) -> None:
    page = await shop.search.by_text("blue shirt", top_k=4)
    colour = {h.product.id: h.signals.colour for h in page.hits}
    assert colour == {"blue": pytest.approx(1.0), "red": 0.0, "white": 0.0, "plain": None}
    plain = await shop.search.by_text("shirt", top_k=4)
    assert all(h.signals.colour is None for h in plain.hits)  # no colour named


async def test_the_gate_closed_leaves_the_fused_order() -> None:
    closed = await Shop(ColourRerank(gate=0.0)).fill()
    assert (await closed.ids("blue shirt"))[-1] == "blue"


async def test_visual_and_text_modes_are_not_re_ranked(shop: Shop) -> None:
    assert (await shop.ids("blue shirt", SearchMode.VISUAL))[-1] == "blue"
    for mode in (SearchMode.VISUAL, SearchMode.TEXT):
        query = SearchQuery(text=TextQuery("blue shirt"), mode=mode, top_k=4)
        page = await shop.search.search(query)
        assert all(h.signals.colour is None for h in page.hits), mode


async def test_an_image_search_steered_in_a_colour(shop: Shop) -> None:
    photo = fake_image("shirt")
    plain = await shop.search.search(SearchQuery(image=ImageQuery(data=photo), top_k=4))
    assert plain.hits[-1].product.id == "blue"
    steered = await shop.search.search(
        SearchQuery(image=ImageQuery(data=photo), text=TextQuery("in blue"), top_k=4)
    )
    assert steered.hits[0].product.id == "blue"


async def described(rerank: ColourRerank | None = None) -> Shop:
    """The shirts, the red one described as striped, the others as smooth."""
    shop = await Shop(rerank).fill()
    for pid, words, _ in SHIRTS:
        weave = "striped" if pid == "red" else "smooth"
        await shop.products.add(pid, "Shirt", fake_image(words), description=f"{weave} weave")
    return shop


async def test_a_plain_garment_asked_moves_the_patterned_ones_down() -> None:
    unweighted = await described(ColourRerank(patterned_weight=0.0))
    fused = await unweighted.ids("solid shirt")
    assert fused.index("red") < 3  # the fusion alone does not put it last
    shop = await described()
    assert (await shop.ids("solid shirt"))[-1] == "red"
    # a query not asking for a plain garment keeps the fused order
    assert await shop.ids("shirt") == await unweighted.ids("shirt")
    closed = await described(ColourRerank(gate=0.0))  # the words answer: no re-rank
    assert await closed.ids("solid shirt") == fused


async def test_the_histograms_come_with_the_page_rows_in_one_call(shop: Shop) -> None:
    shop.catalog.get_many_calls = 0
    await shop.search.by_text("blue shirt", top_k=2)
    assert shop.catalog.get_many_calls == 1


async def test_pages_follow_the_re_ranked_order(shop: Shop) -> None:
    first = await shop.search.by_text("blue shirt", top_k=2)
    second = await shop.search.by_text("blue shirt", top_k=2, cursor=first.next_cursor)
    ids = [h.product.id for h in first.hits + second.hits]
    assert ids[0] == "blue"
    assert sorted(ids) == sorted(pid for pid, _, _ in SHIRTS)


async def test_a_rerun_keeps_the_histogram_without_reading_the_photo_again(shop: Shop) -> None:
    read = shop.colours.images_read
    await shop.products.add("blue", "Shirt", fake_image("shirt long sleeve extra wide"))
    assert shop.colours.images_read == read
    assert (await shop.catalog.get_many(["blue"]))["blue"].colour == all_of(BLUE)


async def test_a_new_photo_gets_a_new_histogram(shop: Shop) -> None:
    shop.colours.colours[fake_image("shirt new")] = all_of(RED)
    await shop.products.add("blue", "Shirt", fake_image("shirt new"))
    assert (await shop.catalog.get_many(["blue"]))["blue"].colour == all_of(RED)


async def test_a_product_stored_without_histogram_gets_one_when_written_again(
    shop: Shop,
) -> None:
    """Products written before histograms existed: search skips them in the re-rank
    (counted at the mean share), and the next write of the product (an ingest rerun, an
    update) adds the histogram without encoding the photo again."""
    stored = (await shop.catalog.get_many(["red"]))["red"]
    await shop.catalog.upsert_many([replace(stored, colour=None)])
    page = await shop.search.by_text("red shirt", top_k=4)
    assert {h.product.id: h.signals.colour for h in page.hits}["red"] is None
    indexer = shop.products._indexer
    plan = await indexer.plan(
        [item_of(stored, fake_image("shirt a"))], [shop.encoders.get()], reindex=False
    )
    assert [p.item.id for p in plan.retag] == ["red"]  # an update: no encoding
    assert plan.encode == []
    await indexer.write(await indexer.encode(plan))
    assert (await shop.catalog.get_many(["red"]))["red"].colour == all_of(RED)


def item_of(product: Product, image: bytes) -> IndexItem:
    return IndexItem(
        id=product.id,
        name=product.name,
        image=image,
        content_type="image/jpeg",
        digest=content_hash(image),
        description=product.description,
        tags=product.tags,
    )


# Every name is "Shirt" and no word says "stripe": only the photos do. The striped shirt's
# photo carries the most other words, so the query's own vector ranks it last.
STRIPED = "shirt long sleeve extra wide collar buttoned cotton stripe"


async def surfaces(rerank: ColourRerank | None = None) -> Shop:
    shop = Shop(rerank)
    for pid, words in (("a", "shirt a"), ("b", "shirt b"), ("c", "shirt c"), ("s", STRIPED)):
        await shop.products.add(pid, "Shirt", fake_image(words))
    return shop


async def test_a_surface_the_words_do_not_answer_asks_the_photos_vectors() -> None:
    off = await surfaces(ColourRerank(pattern_prompt_weight=0.0))
    assert (await off.ids("stripe shirt"))[-1] == "s"  # the fused order
    shop = await surfaces()
    assert (await shop.ids("stripe shirt")).index("s") == 2  # up by at most 0.1 x 30 places
    strong = await surfaces(ColourRerank(pattern_prompt_weight=1.0))
    assert (await strong.ids("stripe shirt"))[0] == "s"
    assert (await strong.ids("shirt"))[-1] == "s"  # no surface named
    assert (await strong.ids("stripe shirt", SearchMode.VISUAL))[-1] == "s"
    closed = await surfaces(ColourRerank(gate=0.0, pattern_prompt_weight=1.0))
    assert (await closed.ids("stripe shirt"))[-1] == "s"  # the words answer: no re-rank


async def test_a_surface_phrase_is_encoded_once_per_encoder() -> None:
    shop = await surfaces()
    encoder = shop.encoders.get()
    assert isinstance(encoder, HashingEncoder)
    before = encoder.calls
    await shop.ids("stripe shirt")
    first = encoder.calls - before  # the query, then the phrase "stripe"
    before = encoder.calls
    await shop.ids("shirt with stripe")
    assert (first, encoder.calls - before) == (2, 1)  # the query only
