"""MongoCatalog through PyMongo's async client against nx-27017, a MongoDB wire-protocol
server started on a free port."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection

from domain.errors import StoreMisconfigured, UpstreamUnavailable
from domain.model import Product, ProductFilter
from fashion_search import wiring
from fashion_search.settings import Settings
from stores.catalog.mongodb import MongoCatalog, redact_uri, tag_field, tag_key, to_mongo_filter
from tests.stores.contracts import CatalogContract, LexicalContract
from tests.stores.servers import (
    HEALTHY_TIMEOUT_S,
    MongoServer,
    free_port,
    hang_guard,
    mongo_server,
    unique_name,
)

__all__ = ["mongo_server"]


def make_catalog(
    server: MongoServer, timeout_s: float = HEALTHY_TIMEOUT_S, **kwargs: object
) -> MongoCatalog:
    return MongoCatalog(
        server.uri,
        unique_name("db").replace("-", "_"),
        timeout_s=timeout_s,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def fresh_catalog(mongo_server: MongoServer) -> AsyncIterator[MongoCatalog]:
    catalog = make_catalog(mongo_server)
    yield catalog
    await catalog.drop()
    await catalog.close()


class TestMongoCatalog(CatalogContract, LexicalContract):
    any_word_matches = False  # nx-27017's $text needs every word (MongoDB: any word)

    @pytest.fixture
    async def catalog(self, mongo_server: MongoServer) -> AsyncIterator[MongoCatalog]:
        catalog = make_catalog(mongo_server)
        yield catalog
        await catalog.drop()
        await catalog.close()


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


def test_filter_translation() -> None:
    assert to_mongo_filter(None) == {}
    assert to_mongo_filter(ProductFilter()) == {}
    assert to_mongo_filter(ProductFilter({"colour": "red"})) == {"tags.colour": "red"}
    assert to_mongo_filter(
        ProductFilter({"colour": "red"}, any_of={"type": ("dress", "shirt", "dress")})
    ) == {"$and": [{"tags.colour": "red"}, {"tags.type": {"$in": ["dress", "shirt"]}}]}
    assert to_mongo_filter(ProductFilter({"a.b": "x", "$where": "y"})) == {
        "$and": [{"tags.%24where": "y"}, {"tags.a%2Eb": "x"}]
    }


def test_tag_keys_escape_reversibly() -> None:
    for key in ("colour", "a.b", "$size", "50%", "%2E", "", "ünï côde", "a$b.c%"):
        field = tag_field(key)
        assert "." not in field
        assert not field.startswith("$")
        assert tag_key(field) == key


def test_uri_is_redacted() -> None:
    assert redact_uri("mongodb+srv://user:s3cret@cluster0.x.mongodb.net/db?tls=true") == (
        "mongodb+srv://***@cluster0.x.mongodb.net/db"
    )
    assert redact_uri("mongodb://127.0.0.1:27017/") == "mongodb://127.0.0.1:27017/"


async def test_awkward_tag_keys_work_in_filters_and_facets(fresh_catalog: MongoCatalog) -> None:
    products = [
        Product("p1", "A", tags={"size.eu": "38", "$price": "low", "50%": "yes"}),
        Product("p2", "B", tags={"size.eu": "40", "$price": "low"}),
        Product("p3", "C", tags={"size": "M"}),
    ]
    await fresh_catalog.upsert_many(products)
    assert await fresh_catalog.get("p1") == products[0]
    assert await fresh_catalog.count(ProductFilter({"$price": "low"})) == 2
    page = await fresh_catalog.list(ProductFilter(any_of={"size.eu": ("40", "41")}))
    assert [p.id for p in page.items] == ["p2"]
    # "size.eu" is one key, not the "eu" field of "size".
    assert await fresh_catalog.count(ProductFilter({"size": "M"})) == 1
    assert await fresh_catalog.facets() == {
        "size.eu": {"38": 1, "40": 1},
        "$price": {"low": 2},
        "50%": {"yes": 1},
        "size": {"M": 1},
    }


async def test_tag_keys_get_indexes(mongo_server: MongoServer) -> None:
    catalog = make_catalog(mongo_server, max_tag_indexes=2)
    try:
        await catalog.upsert_many([Product("p1", "A", tags={"colour": "red", "type": "dress"})])
        await catalog.upsert_many([Product("p2", "B", tags={"gender": "women"})])
        client: AsyncMongoClient[dict[str, object]]
        async with AsyncMongoClient(mongo_server.uri) as client:
            products: AsyncCollection[dict[str, object]] = client[catalog.database_name]["products"]
            ledger: AsyncCollection[dict[str, object]] = client[catalog.database_name][
                "ingest_ledger"
            ]
            keys = [list(ix["key"]) async for ix in await products.list_indexes()]
            ledger_keys = [list(ix["key"]) async for ix in await ledger.list_indexes()]
        assert ["tags.colour"] in keys
        assert ["tags.type"] in keys
        assert ["tags.gender"] not in keys  # over the cap: stays unindexed, still filterable
        assert await catalog.count(ProductFilter({"gender": "women"})) == 1
        assert ["encoder"] in ledger_keys
        assert ["product"] in ledger_keys
    finally:
        await catalog.drop()
        await catalog.close()


async def test_get_many_is_one_query(mongo_server: MongoServer) -> None:
    counter = CommandCounter()
    catalog = make_catalog(mongo_server, client_options={"event_listeners": [counter]})
    try:
        await catalog.upsert_many([Product(f"id{i:04d}", f"P{i}") for i in range(500)])
        counter.commands.clear()
        wanted = [f"id{i:04d}" for i in range(499, -1, -1)]
        got = await catalog.get_many(wanted)
        assert list(got) == wanted  # in the order asked (rank order)
        assert counter.commands == ["find"]
    finally:
        await catalog.drop()
        await catalog.close()


async def test_upsert_many_is_bulk(mongo_server: MongoServer) -> None:
    counter = CommandCounter()
    catalog = make_catalog(mongo_server, client_options={"event_listeners": [counter]})
    try:
        await catalog.upsert_many([Product(f"id{i:04d}", f"P{i}") for i in range(1500)])
        assert counter.commands.count("update") == 2  # 1500 replaces in two bulk writes
        assert await catalog.count() == 1500
        await catalog.upsert_many([Product("dup", "first"), Product("dup", "last")])
        found = await catalog.get("dup")
        assert found is not None
        assert found.name == "last"
    finally:
        await catalog.drop()
        await catalog.close()


async def test_stopped_server_fails_within_the_timeout_naming_the_setting() -> None:
    server = MongoServer().start()
    catalog = MongoCatalog(server.uri, "gone", timeout_s=1.0)
    try:
        await catalog.check()
        await catalog.upsert_many([Product("p1", "A")])
        server.stop()
        for call in (catalog.get("p1"), catalog.count(), catalog.check()):
            with (
                hang_guard(),
                pytest.raises(UpstreamUnavailable, match=re.escape(f"MONGODB_URI={server.uri}")),
            ):
                await call
    finally:
        await catalog.close()
        server.cleanup()


async def test_unreachable_at_start_up_hides_the_password() -> None:
    port = free_port()
    catalog = MongoCatalog(f"mongodb://admin:s3cret@127.0.0.1:{port}/", "db", timeout_s=0.5)
    try:
        with hang_guard(), pytest.raises(UpstreamUnavailable, match="MONGODB_URI") as caught:
            await catalog.check()
        assert "s3cret" not in str(caught.value)
    finally:
        await catalog.close()


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("refused", r"127\.0\.0\.1:\d+ refused the connection"),
        ("unresolvable", r"no-such-host\.invalid:27017 does not resolve"),
        ("wrong replica set", r"no server answered as a member of replica set 'not-our-set'"),
    ],
)
async def test_unreachable_keeps_pymongos_reason(
    mongo_server: MongoServer, where: str, reason: str
) -> None:
    """Each kind of unreachable server says why, not only that it did not answer in time."""
    uri = {
        "refused": f"mongodb://127.0.0.1:{free_port()}/",
        "unresolvable": "mongodb://no-such-host.invalid:27017/",
        "wrong replica set": f"{mongo_server.uri}?replicaSet=not-our-set",
    }[where]
    catalog = MongoCatalog(uri, "db", timeout_s=0.5)
    try:
        with pytest.raises(UpstreamUnavailable, match="MONGODB_URI") as caught:
            await catalog.check()
        assert re.search(reason, str(caught.value)), str(caught.value)
        assert "did not answer" not in str(caught.value)
    finally:
        await catalog.close()


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://app:p@ss@db.example.com/",  # an unescaped @ in the password
        "mongodb://db.example.com:27o17/",
        "mongodb://db.example.com/shop$db",  # not a database name
        "mongodb://",
        "mongodb+srv://cluster0.example.com:27017/",  # srv URIs take no port
        "postgres://db.example.com/",
    ],
)
def test_a_malformed_uri_is_one_line_naming_the_setting(uri: str) -> None:
    with pytest.raises(StoreMisconfigured, match=r"^MONGODB_URI ") as caught:
        MongoCatalog(uri, "db")
    assert "\n" not in str(caught.value)
    assert "ss@" not in str(caught.value)


def test_an_srv_uri_is_checked_without_a_dns_lookup() -> None:
    MongoCatalog("mongodb+srv://app:pw@cluster0.no-such-host.invalid/?retryWrites=true", "db")


def test_invalid_settings_are_named() -> None:
    with pytest.raises(StoreMisconfigured, match="MONGODB_URI"):
        MongoCatalog("postgres://x", "db")
    with pytest.raises(StoreMisconfigured, match="MONGODB_URI"):
        wiring.mongo_catalog(Settings(mongodb_uri=None))


async def test_wiring_builds_the_adapter_from_settings(mongo_server: MongoServer) -> None:
    db = unique_name("db").replace("-", "_")
    settings = Settings(
        mongodb_uri=SecretStr(mongo_server.uri), mongodb_db=db, store_timeout_s=HEALTHY_TIMEOUT_S
    )
    catalog = wiring.mongo_catalog(settings)
    try:
        await catalog.check()
        await catalog.upsert_many([Product("p1", "A", tags={"colour": "red"})])
        client: AsyncMongoClient[dict[str, object]]
        async with AsyncMongoClient(mongo_server.uri) as client:
            assert await client[db]["products"].count_documents({}) == 1
    finally:
        await catalog.drop()
        await catalog.close()


def test_one_catalog_serves_successive_event_loops(mongo_server: MongoServer) -> None:
    """The CLI runs several asyncio.run() calls; an AsyncMongoClient serves one loop."""
    catalog = make_catalog(mongo_server)
    asyncio.run(catalog.upsert_many([Product("p1", "A")]))
    assert asyncio.run(catalog.get("p1")) == Product("p1", "A")

    async def finish() -> None:
        await catalog.drop()
        await catalog.close()

    asyncio.run(finish())
