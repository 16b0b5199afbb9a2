"""The flat spaces' prefilters on a real catalog (the mixed catalog: hm-demo and Kaggle
products ingested by the CLI with the default encoder, so real image and product-words
vectors): every prefilter gives the search service the full float32 scan's pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.model import SearchMode, SearchPage, SearchQuery, TextQuery
from fashion_search.settings import Settings
from fashion_search.wiring import build
from stores.catalog.sqlite_catalog import SqliteCatalog
from stores.vectors import faiss_index
from stores.vectors.faiss_index import FaissVectorIndex, Prefilter

pytestmark = pytest.mark.slow

TEXTS = (
    "black trousers", "red dress", "white sneakers", "navy blue t-shirt", "floral blouse",
    "leather handbag", "striped sweater", "grey hoodie", "denim jeans", "summer skirt",
)  # fmt: skip
DEPTHS = (5, 11, 60)


Hit = tuple[str, float, object]


def _page(page: SearchPage) -> list[Hit]:
    return [(hit.product.id, hit.score, hit.signals) for hit in page.hits]


@pytest.mark.parametrize("prefilter", ["int8", "float16"])
async def test_a_prefilter_gives_the_full_scans_pages_on_a_real_catalog(
    mixed_catalog_home: Path, monkeypatch: pytest.MonkeyPatch, prefilter: Prefilter
) -> None:
    # the catalog's 700 products are below the size the prefilters start at: lower it
    monkeypatch.setattr(faiss_index, "PREFILTER_MIN_ROWS", 64)
    container = build(
        Settings(home=mixed_catalog_home, faiss_prefilter=prefilter), load_entry_points=False
    )
    index = container.index
    assert isinstance(index, FaissVectorIndex)
    # the words' list from the BM25 snapshot in both runs (FTS5 answers until it is built,
    # in the background, and its scores may differ from the snapshot's in the last bit)
    assert isinstance(container.catalog, SqliteCatalog)
    container.catalog.build_bm25_snapshot_sync()
    modes: tuple[Prefilter, Prefilter] = (prefilter, "off")
    pages: dict[Prefilter, dict[tuple[str, SearchMode, int], list[Hit]]] = {m: {} for m in modes}
    try:
        for mode in modes:
            index.prefilter = mode
            for text in TEXTS:
                for search_mode in (SearchMode.HYBRID, SearchMode.VISUAL):
                    for depth in DEPTHS:
                        query = SearchQuery(text=TextQuery(text), top_k=depth, mode=search_mode)
                        page = await container.search.search(query)
                        pages[mode][text, search_mode, depth] = _page(page)
        spaces = index._refresh()
        copies = [s.eight if prefilter == "int8" else s.half for s in spaces.values()]
    finally:
        await container.aclose()
    assert len(spaces) == 2  # the images and the products' words
    assert all(copy is not None for copy in copies)  # the prefilter answered in both
    for key, hits in pages[prefilter].items():
        assert hits == pages["off"][key], key
        assert hits  # a real answer
