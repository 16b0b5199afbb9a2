"""SqliteCatalog: the Catalog contract, plus persistence, transactions, the schema it relies
on for indexed filters, and concurrent use."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domain.errors import BadInput
from domain.model import Product, ProductFilter
from stores.catalog.sqlite_catalog import SqliteCatalog
from tests.stores.contracts import ENC_A, CatalogContract, LexicalContract


class TestSqliteCatalog(CatalogContract, LexicalContract):
    @pytest.fixture
    async def catalog(self, tmp_path: Path) -> AsyncIterator[SqliteCatalog]:
        catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")
        yield catalog
        await catalog.close()


def product(i: int, **tags: str) -> Product:
    return Product(id=f"p{i:05d}", name=f"Product {i}", tags=tags, image_keys=(f"k{i}.jpg",))


async def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "catalog.sqlite3"
    catalog = SqliteCatalog(path)
    await catalog.upsert_many([product(1, colour="red"), product(2, colour="blue")])
    await catalog.mark_indexed(ENC_A, {"p00001": "h1"})
    await catalog.close()

    reopened = SqliteCatalog(path)
    assert await reopened.get("p00001") == product(1, colour="red")
    assert await reopened.count(ProductFilter({"colour": "blue"})) == 1
    assert await reopened.indexed_hashes(ENC_A) == {"p00001": "h1"}
    await reopened.close()


async def test_wal_mode_and_indexed_filters(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = SqliteCatalog(path)
    await catalog.upsert_many([product(1, colour="red")])
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plan = " ".join(
            str(row[-1])
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT product_id FROM tags WHERE key = ? AND value = ?",
                ("colour", "red"),
            )
        )
        assert "tags_by_key_value" in plan
    finally:
        raw.close()
    await catalog.close()


async def test_bulk_upsert_is_one_transaction(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")
    await catalog.upsert_many([product(1, colour="red")])

    # SQLite fails on the second product (a value it cannot bind) after inserting the
    # first: the whole batch is rolled back.
    class Unbindable:
        id = "p00003"
        name = object()
        description = None
        tags: dict[str, str] = {}  # noqa: RUF012
        image_keys = ()
        colour = None

    with pytest.raises(sqlite3.Error):
        await catalog.upsert_many([product(2, colour="blue"), Unbindable()])  # type: ignore[list-item]
    assert await catalog.get("p00002") is None
    assert await catalog.count() == 1
    # The catalog is still usable after the rollback.
    await catalog.upsert_many([product(2, colour="blue")])
    assert await catalog.count() == 2
    await catalog.close()


async def test_repeated_id_in_one_batch_keeps_the_last(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")
    await catalog.upsert_many([product(1, colour="red"), product(1, colour="blue")])
    assert await catalog.get("p00001") == product(1, colour="blue")
    assert await catalog.facets() == {"colour": {"blue": 1}}
    await catalog.close()


async def test_limit_must_be_positive(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")
    with pytest.raises(BadInput):
        await catalog.list(limit=0)
    await catalog.close()


async def test_large_catalog_pages_and_counts(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")
    colours = ("black", "red", "blue", "white", "green")
    products = [product(i, colour=colours[i % 5], size=str(i % 7)) for i in range(5000)]
    await catalog.upsert_many(products)
    assert await catalog.count() == 5000
    flt = ProductFilter(equals={"colour": "red"}, any_of={"size": ("1", "2")})
    expected = [p.id for p in products if flt.matches(p.tags)]
    assert await catalog.count(flt) == len(expected)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await catalog.list(flt, cursor, 100)
        seen += [p.id for p in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected
    got = await catalog.get_many([p.id for p in products[::3]])
    assert len(got) == len(products[::3])
    await catalog.close()


async def test_concurrent_readers_and_writers(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")

    async def writer(part: int) -> None:
        for start in range(part * 200, (part + 1) * 200, 20):
            await catalog.upsert_many(
                [product(i, colour="red" if i % 2 else "blue") for i in range(start, start + 20)]
            )
            await catalog.mark_indexed(
                ENC_A, {f"p{i:05d}": f"h{i}" for i in range(start, start + 20)}
            )

    async def reader() -> None:
        for _ in range(30):
            page = await catalog.list(ProductFilter({"colour": "red"}), limit=50)
            assert all(p.tags["colour"] == "red" for p in page.items)
            await catalog.count()

    await asyncio.gather(*(writer(p) for p in range(4)), reader(), reader())
    assert await catalog.count() == 800
    assert await catalog.count(ProductFilter({"colour": "red"})) == 400
    assert len(await catalog.indexed_hashes(ENC_A)) == 800
    await catalog.close()


async def test_two_instances_on_one_file(tmp_path: Path) -> None:
    """The API and a CLI ingest open the same file: writes of one are visible to the other."""
    path = tmp_path / "catalog.sqlite3"
    first, second = SqliteCatalog(path), SqliteCatalog(path)
    await first.upsert_many([product(1, colour="red")])
    assert await second.get("p00001") == product(1, colour="red")
    await second.delete("p00001")
    assert await first.get("p00001") is None
    await first.close()
    await second.close()


async def test_a_page_of_ids_is_read_on_the_event_loop_when_the_connection_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")
    await catalog.upsert_many([product(i, colour="Red") for i in range(150)])
    hops: list[str] = []
    to_thread = asyncio.to_thread

    async def counting_to_thread(func: object, /, *args: object) -> object:
        hops.append(getattr(func, "__name__", "?"))
        return await to_thread(func, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "to_thread", counting_to_thread)
    page = [f"p{i:05d}" for i in (7, 3, 99)] + ["missing"]
    assert list(await catalog.get_many(page)) == page[:3]  # in the order asked, no thread
    assert hops == []
    many = [f"p{i:05d}" for i in range(120)]  # more than a page: in a thread
    assert len(await catalog.get_many(many)) == 120
    assert hops == ["_get_rows_sync"]
    await catalog.close()


async def test_a_busy_connection_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """While another thread holds the connection (a bulk write), get_many waits for it in a
    thread: the event loop keeps running."""
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite3")
    await catalog.upsert_many([product(i) for i in range(3)])
    held = asyncio.Event()
    release = threading.Event()
    loop = asyncio.get_running_loop()

    def hold_the_connection() -> None:
        with catalog._read():
            loop.call_soon_threadsafe(held.set)
            assert release.wait(30), "the test never released the connection"

    holder = asyncio.create_task(asyncio.to_thread(hold_the_connection))
    await held.wait()
    reader = asyncio.create_task(catalog.get_many(["p00001"]))
    turns = 0
    while turns < 100 and not reader.done():  # the loop runs while get_many waits
        turns += 1
        await asyncio.sleep(0)
    assert not reader.done()  # it cannot read while the connection is held
    release.set()
    await asyncio.gather(reader, holder)
    assert list(reader.result()) == ["p00001"]
    assert turns == 100
    await catalog.close()


async def test_catalog_of_schema_1_gets_its_words_indexed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = SqliteCatalog(path)
    await catalog.upsert_many([Product(id="a", name="Lace Dress"), Product(id="b", name="Belt")])
    await catalog.close()
    raw = sqlite3.connect(path)  # as a version-1 catalog: no lexical tables
    raw.executescript("DROP TABLE products_fts; DROP TABLE lexical_ids; PRAGMA user_version = 1;")
    raw.close()

    reopened = SqliteCatalog(path)
    hits = await reopened.search_text("dresses", 10)
    assert [h.product_id for h in hits] == ["a"]
    await reopened.close()


async def test_catalog_of_schema_2_gets_a_colour_column_on_open(tmp_path: Path) -> None:
    """Products written before colour histograms existed read back without one (search
    skips them in its colour re-rank) and can be given one."""
    path = tmp_path / "catalog.sqlite3"
    catalog = SqliteCatalog(path)
    await catalog.upsert_many([Product(id="a", name="Lace Dress")])
    await catalog.close()
    raw = sqlite3.connect(path)  # as a version-2 catalog: no colour column
    raw.executescript("ALTER TABLE products DROP COLUMN colour; PRAGMA user_version = 2;")
    raw.close()

    reopened = SqliteCatalog(path)
    old = await reopened.get("a")
    assert old == Product(id="a", name="Lace Dress")
    assert old is not None
    assert old.colour is None
    coloured = Product(id="a", name="Lace Dress", colour=bytes(range(216)))
    await reopened.upsert_many([coloured])
    assert await reopened.get("a") == coloured
    await reopened.close()
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == 3
