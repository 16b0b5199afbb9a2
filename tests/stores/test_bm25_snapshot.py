"""The SQLite catalog's in-memory BM25 snapshot answers exactly as FTS5 does (same products,
order, scores, matched shares and names, with and without filters) on real catalog words,
and is never used once another process has changed the words."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from domain.model import LexicalHit, Product, ProductFilter
from ingest.readers import open_source
from stores.catalog.sqlite_catalog import SqliteCatalog
from tests.conftest import REPO_ROOT

KAGGLE_PRODUCTS = 1500
QUERIES = [
    "black trousers",
    "lace dress",
    "t-shirt",
    "navy blue tshirts",
    "basics men black trousers",
    "summer",
    "men",
    "white sneakers",
    "red kurta",
    "running shoes",
    "Puma Men Grey T-shirt",
    "qwxzjv",
    "jeans blue slim fit",
    # the synonym lexicon's variants (each scored, the best kept per product)
    "gray tee",
    "black sneakers",
    "grey sweater",
    "men pants",
]
FILTERS = [
    None,
    ProductFilter({"gender": "Men"}),
    ProductFilter(any_of={"baseColour": ("Black", "Navy Blue")}),
    ProductFilter({"gender": "Nobody"}),
]


@pytest.fixture(scope="module")
def kaggle_products(kaggle_zip: Path) -> list[Product]:
    with open_source(kaggle_zip) as source:
        items = itertools.islice((i for i in source if i.id), KAGGLE_PRODUCTS)
        return [
            Product(id=i.id, name=i.name, description=i.description, tags=i.tags) for i in items
        ]


def _same(fts5: list[LexicalHit], snapshot: list[LexicalHit]) -> None:
    assert [h.product_id for h in snapshot] == [h.product_id for h in fts5]
    assert [h.name for h in snapshot] == [h.name for h in fts5]
    assert [h.matched for h in snapshot] == [h.matched for h in fts5]
    assert [h.score for h in snapshot] == pytest.approx([h.score for h in fts5], rel=1e-9)


def test_snapshot_ranks_as_fts5(
    tmp_path: Path, kaggle_products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")
    catalog.upsert_many_sync(kaggle_products)
    with monkeypatch.context() as m:  # no snapshot: every search goes to FTS5
        m.setattr(catalog, "_build_bm25_soon", lambda: None)
        fts5 = {
            (q, i, k): catalog.search_text_sync(q, k, f)
            for q in QUERIES
            for i, f in enumerate(FILTERS)
            for k in (1, 10, 200)
        }
    assert not catalog._bm25
    assert catalog.search_text_now("black trousers", 10) is None  # no snapshot: FTS5's job
    assert catalog.build_bm25_snapshot_sync()
    assert sum(bool(hits) for hits in fts5.values()) > len(fts5) / 2
    for (q, i, k), expected in fts5.items():
        snapshot = catalog._bm25
        assert snapshot is not None
        hits = catalog.search_text_sync(q, k, FILTERS[i])
        assert catalog._bm25 is snapshot  # still current: answered from it
        _same(expected, hits)
        assert catalog.search_text_now(q, k, FILTERS[i]) == hits  # the same, on this thread
    assert catalog.search_text_now("...", 10) == []  # no word: nothing, at once
    with catalog._lock:  # the connection busy in another thread: a thread's job
        busy: list[object] = []
        waiter = threading.Thread(target=lambda: busy.append(catalog.search_text_now("men", 5)))
        waiter.start()
        waiter.join(10)
    assert busy == [None]
    catalog.close_sync()


def test_another_process_writing_retires_the_snapshot(
    tmp_path: Path, kaggle_products: list[Product]
) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = SqliteCatalog(path)
    catalog.upsert_many_sync(kaggle_products[:200])
    assert catalog.build_bm25_snapshot_sync()
    gone = catalog.search_text_sync("black", 1)[0].product_id
    writer = textwrap.dedent(
        f"""
        from domain.model import Product
        from stores.catalog.sqlite_catalog import SqliteCatalog
        catalog = SqliteCatalog({str(path)!r})
        catalog.upsert_many_sync([Product(id="zz1", name="Zebra Print Parka")])
        catalog.delete_sync({gone!r})
        catalog.close_sync()
        """
    )
    subprocess.run(
        [sys.executable, "-c", writer],
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert catalog.search_text_now("zebra parka", 5) is None  # the snapshot is stale
    assert [h.product_id for h in catalog.search_text_sync("zebra parka", 5)] == ["zz1"]
    assert gone not in [h.product_id for h in catalog.search_text_sync("black", 200)]
    # a new snapshot has the new words, and the same answers
    assert catalog.build_bm25_snapshot_sync()
    assert [h.product_id for h in catalog.search_text_sync("zebra parka", 5)] == ["zz1"]
    assert gone not in [h.product_id for h in catalog.search_text_sync("black", 200)]
    catalog.close_sync()


def test_in_memory_catalog_builds_its_snapshot_too(kaggle_products: list[Product]) -> None:
    catalog = SqliteCatalog(":memory:")
    catalog.upsert_many_sync(kaggle_products[:100])
    before = catalog.search_text_sync("men", 10)
    catalog.close_sync()  # waits for a snapshot being built
    catalog = SqliteCatalog(":memory:")
    catalog.upsert_many_sync(kaggle_products[:100])
    assert catalog.build_bm25_snapshot_sync()
    _same(before, catalog.search_text_sync("men", 10))
    catalog.close_sync()
