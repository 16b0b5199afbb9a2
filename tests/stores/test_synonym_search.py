"""End to end through the search service over the embedded stores: a catalog whose words say
"jumper" (a British catalog) is found by a shopper typing "sweater", with the lexical signal
showing on the hit; with the synonyms off the words find nothing and only the photos rank."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.model import MatchQuality, SearchMode
from domain.services import CatalogService, SearchService
from stores.catalog.sqlite_catalog import SqliteCatalog
from stores.synonyms import Lexicon
from stores.vectors.faiss_index import FaissVectorIndex
from tests.fakes import FakeEncoderProvider, HashingEncoder, InMemoryImageStore, fake_image

PRODUCTS = [
    ("b1", "Knitted Jumper", "A jumper in a soft rib knit.", "Black"),
    ("b2", "Slim Trousers", "Trousers in stretch twill.", "Black"),
    ("b3", "Vest Top", "A vest top in cotton jersey.", "White"),
    ("b4", "Trainers", "Trainers with laces.", "White"),
    ("b5", "Lace Dress", "A dress in lace.", "Red"),
]


async def service(home: Path, synonyms: Lexicon | None) -> SearchService:
    encoders = FakeEncoderProvider(HashingEncoder())
    index = FaissVectorIndex(home / "vectors")
    catalog = SqliteCatalog(home / "catalog.sqlite3", synonyms)
    images = InMemoryImageStore()
    products = CatalogService(encoders, index, catalog, images)
    for pid, name, description, colour in PRODUCTS:
        await products.add(pid, name, fake_image(name), description, {"colour": colour})
    return SearchService(encoders, index, catalog, images)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("sweater", "b1"), ("black sweater", "b1"), ("tank top", "b3"), ("white sneakers", "b4")],
)
async def test_a_shoppers_word_finds_the_catalogs_word(
    tmp_path: Path, typed: str, expected: str
) -> None:
    search = await service(tmp_path, None)  # the built-in lexicon
    page = await search.by_text(typed, top_k=3, mode=SearchMode.TEXT)
    assert page.hits[0].product.id == expected
    assert page.hits[0].signals.lexical is not None
    assert page.match_quality is not MatchQuality.NONE
    hybrid = await search.by_text(typed, top_k=5)
    found = next(h for h in hybrid.hits if h.product.id == expected)
    assert found.signals.lexical is not None


async def test_without_synonyms_the_words_find_nothing(tmp_path: Path) -> None:
    search = await service(tmp_path, Lexicon.empty())
    page = await search.by_text("sweater", top_k=5)
    assert all(h.signals.lexical is None for h in page.hits)
