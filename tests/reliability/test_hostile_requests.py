"""Hostile request values (issue 16): lone surrogates and NULs, cursors that are not ours,
filters and ids past their caps. Each was a 500 with a traceback in the log (or, for the
huge filter, seconds of a blocked event loop); each must be a BAD_USER_INPUT with nothing
logged above a warning, on every catalog adapter where the defect was found (the in-memory
fake, SQLite, MongoDB on nx-27017)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api import ApiConfig, create_app
from domain.model import (
    MAX_CURSOR_CHARS,
    MAX_FILTER_KEYS,
    MAX_FILTER_VALUES,
    MAX_PRODUCT_ID_CHARS,
    Cursor,
)
from domain.ports import Catalog
from stores.catalog.mongodb import MongoCatalog
from stores.catalog.sqlite_catalog import SqliteCatalog
from tests.api.helpers import API_KEY, PRODUCTS, World, png
from tests.reliability.support import error_codes, no_error_logged
from tests.stores.servers import HEALTHY_TIMEOUT_S, MongoServer, mongo_server, unique_name

__all__ = ["mongo_server", "no_error_logged"]

SURROGATE = "\ud800"
NUL = "\x00"
LONG_ID = "x" * 10_000


class StoreWorld(World):
    """The API's fakes with a real catalog adapter in place of the in-memory one."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__()
        self.catalog = catalog  # type: ignore[assignment]
        self.search = type(self.search)(
            self.encoders, self.index, catalog, self.images, self.fetcher
        )
        self.products = type(self.products)(self.encoders, self.index, catalog, self.images)


@pytest.fixture(params=["memory", "sqlite", "mongodb"])
async def world(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[World]:
    if request.param == "memory":
        built = World()
    elif request.param == "sqlite":
        built = StoreWorld(SqliteCatalog(tmp_path / "catalog.db"))
    else:
        server: MongoServer = request.getfixturevalue("mongo_server")
        catalog = MongoCatalog(
            server.uri, unique_name("db").replace("-", "_"), timeout_s=HEALTHY_TIMEOUT_S
        )
        built = StoreWorld(catalog)
    await built.seed()
    yield built
    if isinstance(built.catalog, MongoCatalog):
        await built.catalog.drop()
    close = getattr(built.catalog, "close", None)
    if close is not None:
        await close()


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(world.services(), ApiConfig(api_keys=(API_KEY,), warm_up_encoder=False))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def raw_json(body: object) -> bytes:
    """JSON with every non-ASCII character escaped, so a lone surrogate travels as the
    valid JSON ``"\\ud800"`` (an encoder writing UTF-8 could not send it at all)."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


async def graphql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(
        "/graphql",
        content=raw_json({"query": query, "variables": variables}),
        headers={"content-type": "application/json", **headers},
    )


async def refused(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], **headers: str
) -> str:
    """The message of the one BAD_USER_INPUT error the request must get."""
    response = await graphql(client, query, variables, **headers)
    assert response.status_code in (200, 400), response.text
    result = response.json()
    assert error_codes(result) == ["BAD_USER_INPUT"], result
    assert not (result.get("data") or {}).get("searchByText"), result
    message: str = result["errors"][0]["message"]
    return message


SEARCH_BY_TEXT = """query($text: String!, $filter: ProductFilter, $after: String) {
  searchByText(text: $text, filter: $filter, after: $after) { hits { product { id } } } }"""
SIMILAR = "query($id: ID!) { similarProducts(productId: $id) { hits { product { id } } } }"
PRODUCT = "query($id: ID!) { product(id: $id) { id } }"
PRODUCTS_QUERY = """query($filter: ProductFilter, $after: String) {
  products(filter: $filter, after: $after) { items { id } nextCursor } }"""
FACETS = """query($keys: [String!], $filter: ProductFilter) {
  facets(keys: $keys, filter: $filter) { key } }"""
SEARCH_FACETS = """query($keys: [String!]) {
  searchByText(text: "dress") { facets(keys: $keys) { key } } }"""
SEARCH_BY_IMAGE = """query($image: ImageInput!, $after: String) {
  searchByImage(image: $image, after: $after) { hits { product { id } } } }"""
ADD = """mutation($input: AddProductInput!, $image: Upload!) {
  addProduct(input: $input, image: $image) { id } }"""
DELETE = "mutation($id: ID!) { deleteProduct(id: $id) }"


def tag_filter(*tags: tuple[str, list[str]]) -> dict[str, Any]:
    return {"tags": [{"key": k, "values": v} for k, v in tags]}


# -- text validity ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [SURROGATE, NUL], ids=["surrogate", "nul"])
async def test_bad_characters_are_bad_input_everywhere(
    client: httpx.AsyncClient, world: World, bad: str
) -> None:
    text = f"red {bad} dress"
    calls = world.encoder.calls
    assert "search text" in await refused(client, SEARCH_BY_TEXT, {"text": text})
    assert "product id" in await refused(client, SIMILAR, {"id": f"p1{bad}"})
    assert "product id" in await refused(client, PRODUCT, {"id": f"p1{bad}"})
    for flt in (tag_filter((f"colour{bad}", ["Red"])), tag_filter(("colour", [text]))):
        await refused(client, PRODUCTS_QUERY, {"filter": flt})
        await refused(client, FACETS, {"filter": flt})
        await refused(client, SEARCH_BY_TEXT, {"text": "dress", "filter": flt})
    await refused(client, FACETS, {"keys": [f"colour{bad}"]})
    cursor = Cursor(after_id=f"p1{bad}").encode()
    assert await refused(client, PRODUCTS_QUERY, {"after": cursor}) == "invalid cursor"
    assert world.encoder.calls == calls, "the encoder saw a refused request"
    message = await refused(client, SEARCH_FACETS, {"keys": [f"colour{bad}"]})
    assert "tag key" in message, message

    response = await client.post(
        "/get_image_by_text",
        content=raw_json({"text": text}),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "BAD_USER_INPUT"


async def test_bad_characters_in_mutations(client: httpx.AsyncClient, world: World) -> None:
    for bad in (SURROGATE, NUL):
        for field, value in (("id", f"n{bad}"), ("name", f"dress {bad}")):
            product = {"id": "new", "name": "dress", field: value}
            message = await upload_refused(client, product)
            assert "NUL" in message or "surrogate" in message
        tags = [{"key": f"colour{bad}", "value": "Red"}]
        await upload_refused(client, {"id": "new", "name": "dress", "tags": tags})
        await refused(client, DELETE, {"id": f"p1{bad}"}, **{"x-api-key": API_KEY})
    assert (await world.catalog.get("new")) is None


async def upload_refused(client: httpx.AsyncClient, product: dict[str, Any]) -> str:
    form = {
        "operations": raw_json({"query": ADD, "variables": {"input": product, "image": None}}),
        "map": json.dumps({"0": ["variables.image"]}),
    }
    response = await client.post(
        "/graphql",
        data=form,
        files={"0": ("a.png", png(), "image/png")},
        headers={"x-api-key": API_KEY},
    )
    result = response.json()
    assert error_codes(result) == ["BAD_USER_INPUT"], result
    message: str = result["errors"][0]["message"]
    return message


# -- cursors ---------------------------------------------------------------------------------


def token(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode()


HOSTILE_CURSORS = {
    "infinity": token('{"o": Infinity}'),
    "nan": token('{"o": NaN}'),
    "1e400": token('{"o": 1e400}'),
    "bare-1e400": token("1e400"),
    "float": token('{"o": 10.5}'),
    "bool": token('{"o": true}'),
    "negative": token('{"o": -1}'),
    "huge-int": token('{"o": ' + "9" * 4000 + "}"),
    "past-depth": token('{"o": 5000}'),
    "nested": token("[" * 600 + "]" * 600)[:MAX_CURSOR_CHARS],
    "nested-dict": token('{"o": 0, "a": ' + '{"a": ' * 100 + "1" + "}" * 101),
    "list": token("[1, 2]"),
    "garbage": "%%%not-base64%%%",
    "non-ascii": "é" * 8,
    "too-long": "A" * (MAX_CURSOR_CHARS + 4),
    "long-id": Cursor(after_id="x" * (MAX_PRODUCT_ID_CHARS + 1)).encode(),
}


@pytest.mark.parametrize("cursor", HOSTILE_CURSORS.values(), ids=HOSTILE_CURSORS.keys())
async def test_hostile_cursors(client: httpx.AsyncClient, world: World, cursor: str) -> None:
    """Decoded and refused before anything is encoded, fetched or read."""
    calls = world.encoder.calls
    for query, variables in (
        (PRODUCTS_QUERY, {}),
        (SEARCH_BY_TEXT, {"text": "dress"}),
        (SEARCH_BY_IMAGE, {"image": {"url": "https://example.com/a.png"}}),
    ):
        message = await refused(client, query, {**variables, "after": cursor})
        assert "cursor" in message or "deeper" in message, message
    assert world.encoder.calls == calls, "the query was encoded before its cursor was read"
    assert world.fetcher is not None
    assert getattr(world.fetcher, "requested", []) == [], "a URL was fetched"


async def test_cursors_we_issue_still_work(client: httpx.AsyncClient) -> None:
    seen: list[str] = []
    after = None
    while True:
        response = await graphql(
            client, PRODUCTS_QUERY.replace("products(", "products(first: 2, "), {"after": after}
        )
        page = response.json()["data"]["products"]
        seen += [item["id"] for item in page["items"]]
        after = page["nextCursor"]
        if after is None:
            break
    assert seen == sorted(pid for pid, _, _ in PRODUCTS)


# -- filters and ids past their caps ---------------------------------------------------------


async def test_too_many_filter_keys(client: httpx.AsyncClient) -> None:
    """999 distinct keys made SQLite fail ("Expression tree is too large"): now any filter
    past MAX_FILTER_KEYS keys is refused by every adapter, before the store is asked."""
    keys = [(f"k{i}", ["v"]) for i in range(MAX_FILTER_KEYS + 1)]
    for query, variables in ((PRODUCTS_QUERY, {}), (FACETS, {}), (SEARCH_BY_TEXT, {"text": "a"})):
        message = await refused(client, query, {**variables, "filter": tag_filter(*keys)})
        assert str(MAX_FILTER_KEYS) in message
    many = [(f"k{i}", ["v"]) for i in range(999)]
    await refused(client, PRODUCTS_QUERY, {"filter": tag_filter(*many)})
    await refused(client, FACETS, {"filter": tag_filter(*many)})
    too_many = [f"k{i}" for i in range(MAX_FILTER_KEYS + 1)]
    await refused(client, FACETS, {"keys": too_many})
    await refused(client, SEARCH_FACETS, {"keys": too_many})


async def test_filter_at_its_limits_works(client: httpx.AsyncClient) -> None:
    values = ["Red", *(f"v{i}" for i in range(MAX_FILTER_VALUES - 1))]
    keys = [("colour", values), *((f"k{i}", ["v"]) for i in range(MAX_FILTER_KEYS - 1))]
    response = await graphql(client, PRODUCTS_QUERY, {"filter": tag_filter(*keys)})
    assert response.json() == {"data": {"products": {"items": [], "nextCursor": None}}}
    response = await graphql(client, PRODUCTS_QUERY, {"filter": tag_filter(("colour", values))})
    assert [i["id"] for i in response.json()["data"]["products"]["items"]] == ["p2"]


async def test_too_many_filter_values(client: httpx.AsyncClient) -> None:
    values = [f"v{i}" for i in range(MAX_FILTER_VALUES + 1)]
    await refused(client, PRODUCTS_QUERY, {"filter": tag_filter(("colour", values))})


async def test_a_million_values_are_refused_before_graphql_runs(
    client: httpx.AsyncClient,
) -> None:
    """1.2 million values (13 MB of JSON) held the event loop for 5 s while graphql-core
    coerced them. Now the HTTP layer refuses the request from the first list's length, with
    a 400 before the schema runs (an error raised by a resolver would come with a 200)."""
    values = [f"v{i}" for i in range(1_200_000)]
    for variables in (
        {"filter": tag_filter(("colour", values))},
        {"filter": {"tags": [{"key": f"k{i}", "values": ["v"]} for i in range(300_000)]}},
        {"filter": {"tags": [], **{f"x{i}": 1 for i in range(100_000)}}},
    ):
        response = await graphql(client, PRODUCTS_QUERY, variables)
        assert response.status_code == 400, response.text[:300]
        assert error_codes(response.json()) == ["BAD_USER_INPUT"]
        assert "variables" in response.json()["errors"][0]["message"]


async def test_long_ids(client: httpx.AsyncClient, world: World) -> None:
    """A 10,000-character product id was accepted by addProduct and listed."""
    for query in (PRODUCT, SIMILAR):
        message = await refused(client, query, {"id": LONG_ID})
        assert f"limit is {MAX_PRODUCT_ID_CHARS}" in message
    await refused(client, DELETE, {"id": LONG_ID}, **{"x-api-key": API_KEY})
    message = await upload_refused(client, {"id": LONG_ID, "name": "dress"})
    assert f"limit is {MAX_PRODUCT_ID_CHARS}" in message
    assert (await world.catalog.get(LONG_ID)) is None
    at_limit = "y" * MAX_PRODUCT_ID_CHARS
    response = await graphql(client, PRODUCT, {"id": at_limit})
    assert response.json() == {"data": {"product": None}}
