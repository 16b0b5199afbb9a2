"""The search service's faster paths over the embedded stores answer exactly what the plain
paths answer: the image space and the products' words space asked in one call of the FAISS
index (side by side when a search is alone, in one worker thread under concurrent load)
the BM25 snapshot asked on the event loop's thread and facet counts from the tags table,
against one query per space, the lexical query in a worker thread and the page's products
loaded and counted."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from domain.model import Cursor, LexicalHit, Product, ProductFilter, SearchMode, SearchPage
from domain.ports import Catalog, ImmediateLexical, SeveralQueries, TagCounts, VectorIndex, Vectors
from domain.services import CatalogService, SearchService
from stores.catalog.sqlite_catalog import SqliteCatalog
from stores.vectors.faiss_index import FaissVectorIndex
from tests.fakes import FakeEncoderProvider, HashingEncoder, InMemoryImageStore, fake_image

COLOURS = ("black", "white", "navy blue", "red", "beige")
ITEMS = ("trousers", "lace dress", "t-shirt", "sneakers", "wool sweater", "handbag")
QUERIES = ("black trousers", "lace dress", "navy blue t-shirt", "red", "asdfgh", "Black Sneakers")
RED = ProductFilter(equals={"colour": "Red"})


class OneSpaceAtATime:
    """The FAISS index as an index without ``SeveralQueries``: one query per space."""

    def __init__(self, index: FaissVectorIndex) -> None:
        self._index = index

    async def query(self, *args: Any) -> list[tuple[str, float]]:
        return await self._index.query(*args)

    def query_now(self, *args: Any) -> list[tuple[str, float]] | None:
        return self._index.query_now(*args)

    async def encoder_ids(self) -> list[str]:
        return await self._index.encoder_ids()

    async def fetch(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors]:
        return await self._index.fetch(encoder_id, ids)


class ThreadedLexical:
    """The catalog's lexical index without ``ImmediateLexical``: always in a worker thread."""

    def __init__(self, catalog: SqliteCatalog) -> None:
        self._catalog = catalog

    async def search_text(
        self, text: str, top_k: int, filter: ProductFilter | None = None
    ) -> list[LexicalHit]:
        return await self._catalog.search_text(text, top_k, filter)


class LoadingCatalog:
    """The catalog without ``TagCounts``: facets are counted over the loaded products."""

    def __init__(self, catalog: SqliteCatalog) -> None:
        self._catalog = catalog

    async def get_many(self, ids: Sequence[str]) -> dict[str, Product]:
        return await self._catalog.get_many(ids)

    async def get(self, product_id: str) -> Product | None:
        return await self._catalog.get(product_id)


def answer(page: SearchPage) -> tuple[object, ...]:
    hits = [(h.product.id, h.rank, h.score, h.signals, h.exact) for h in page.hits]
    return hits, page.match_quality, page.ranked_ids, page.next_cursor


async def test_one_call_for_both_spaces_answers_like_one_query_per_space(tmp_path: Path) -> None:
    encoders = FakeEncoderProvider(HashingEncoder())
    index, catalog = FaissVectorIndex(tmp_path / "vectors"), SqliteCatalog(":memory:")
    images = InMemoryImageStore()
    products = CatalogService(encoders, index, catalog, images)
    for i, (colour, item) in enumerate(itertools.product(COLOURS, ITEMS)):
        name = f"{colour.title()} {item.title()} {i}"
        tags = {"colour": colour.title(), "type": item}
        await products.add(f"p{i}", name, fake_image(name), f"A {item} in {colour}", tags)
    catalog.build_bm25_snapshot_sync()
    fast = SearchService(encoders, index, catalog, images)
    plain = SearchService(
        encoders,
        cast("VectorIndex", OneSpaceAtATime(index)),
        cast("Catalog", LoadingCatalog(catalog)),
        images,
        lexical=ThreadedLexical(catalog),
    )
    assert isinstance(index, SeveralQueries)
    assert isinstance(catalog, ImmediateLexical)
    assert isinstance(catalog, TagCounts)
    assert not isinstance(plain._index, SeveralQueries)
    assert not isinstance(plain._lexical, ImmediateLexical)
    assert not isinstance(plain._catalog, TagCounts)

    asks = [
        (text, mode, flt, after)
        for text in QUERIES
        for mode in SearchMode
        for flt in (None, RED)
        for after in (None, Cursor(offset=4).encode())
    ]
    for text, mode, flt, after in asks:  # one search at a time: the spaces side by side
        ours = await fast.by_text(text, top_k=4, filter=flt, cursor=after, mode=mode)
        theirs = await plain.by_text(text, top_k=4, filter=flt, cursor=after, mode=mode)
        assert answer(ours) == answer(theirs), (text, mode, flt, after)
        for keys in (None, ["colour"], ["type", "nothing"], []):
            assert await fast.facet_counts(ours, keys) == await plain.facet_counts(theirs, keys)

    # concurrent searches: each asks both spaces in one worker thread
    async def pages(search: SearchService) -> list[tuple[object, ...]]:
        found = await asyncio.gather(
            *(search.by_text(t, top_k=4, filter=f, cursor=a, mode=m) for t, m, f, a in asks)
        )
        return [answer(page) for page in found]

    assert await pages(fast) == await pages(plain)
    # ids named twice count once, unknown ids count nothing
    page = SearchPage(hits=(), encoder_id="fake", took_ms=0.0, ranked_ids=("p1", "p1", "zz", "p2"))
    assert await fast.facet_counts(page) == await plain.facet_counts(page)
    assert await fast.facet_counts(page) == {
        "colour": {"Black": 2},
        "type": {"lace dress": 1, "t-shirt": 1},
    }
    assert await catalog.count_tags([]) == {}
    await index.close()
    await catalog.close()
