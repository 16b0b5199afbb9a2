"""Hostile query texts through the whole text search (SearchService over the SQLite catalog's
lexical index, from FTS5 and from the BM25 snapshot): index syntax, punctuation, emoji,
other scripts and very long queries never raise; what is not a word adds no lexical signal,
and the words that remain still find their product."""

from __future__ import annotations

import pytest

from domain.errors import BadInput
from domain.model import SearchMode
from domain.services import CatalogService, SearchService
from stores.catalog.sqlite_catalog import SqliteCatalog
from tests.fakes import (
    FakeEncoderProvider,
    HashingEncoder,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)

PRODUCTS = [
    ("t1", "Basics Men Black Trousers", "Black"),
    ("d1", "Lace Midi Dress", "White"),
    ("s1", "Платье чёрное", "Black"),
]
NOT_WORDS = ['"', "NEAR(", "*", "-", "AND OR", "NOT", "^", "()", "😀😀", "'; --", "..."]
WITH_WORDS = ['"trousers', "trousers*", "-trousers", "NEAR(trousers", "{name}: trousers 😀"]
LONG = " ".join(["ab"] * 330) + " trousers"
"""About the API's 1,000-character limit, every word but the last matching nothing."""


@pytest.fixture(params=["fts5", "snapshot"])
async def search(request: pytest.FixtureRequest) -> SearchService:
    encoders = FakeEncoderProvider(HashingEncoder())
    index, catalog, images = InMemoryVectorIndex(), SqliteCatalog(":memory:"), InMemoryImageStore()
    products = CatalogService(encoders, index, catalog, images)
    for pid, name, colour in PRODUCTS:
        await products.add(pid, name, fake_image(name), tags={"colour": colour})
    if request.param == "snapshot":
        assert catalog.build_bm25_snapshot_sync()
    else:
        catalog._build_bm25_soon = lambda: None  # type: ignore[method-assign]
    return SearchService(encoders, index, catalog, images)


async def test_what_is_not_a_word_adds_no_lexical_signal(search: SearchService) -> None:
    for text in NOT_WORDS:
        for mode in SearchMode:
            page = await search.by_text(text, top_k=3, mode=mode)
            assert all(h.signals.lexical is None for h in page.hits), (text, mode)
            assert not any(h.exact for h in page.hits), (text, mode)
    with pytest.raises(BadInput, match="NUL"):  # the caller's error (a 400), said clearly
        await search.by_text("trousers\x00", top_k=3)


async def test_the_words_that_remain_find_their_product(search: SearchService) -> None:
    for text in WITH_WORDS:
        page = await search.by_text(text, top_k=3, mode=SearchMode.TEXT)
        assert page.hits[0].product.id == "t1", text
    long = await search.by_text(LONG, top_k=3, mode=SearchMode.TEXT)
    assert [h.product.id for h in long.hits if h.signals.lexical is not None] == ["t1"]
    other_script = await search.by_text("ЧЁРНОЕ", top_k=3, mode=SearchMode.TEXT)
    assert other_script.hits[0].product.id == "s1"
    named = await search.by_text("  ПЛАТЬЕ   чёрное ", top_k=3)  # its name, case and spaces aside
    assert named.hits[0].product.id == "s1"
    assert named.hits[0].exact
