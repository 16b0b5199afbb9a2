"""Auth (issue 8, item 7): mutations need a configured key, compared in constant time; keys
never reach logs, error messages or metrics; CORS is configurable from settings and closed by
default.

tests/api/test_graphql_mutations.py covers no key, "wrong", the key plus a character and an
empty key; tests/api/test_operations.py a default-config preflight and one configured origin.
These add keys of the right length with wrong bytes, keys sent anywhere but X-API-Key,
non-ASCII keys, the logs, and CORS configured through Settings against look-alike origins."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api import ApiConfig, create_app
from fashion_search.asgi import api_config
from fashion_search.settings import Settings
from tests.api.helpers import Api, World, jpeg, make_api
from tests.reliability.support import error_codes

KEY = "fs-live-7Qx2Vb9LmN4pR8sT1wZ6yK3c"
ADD = """mutation($input: AddProductInput!, $image: Upload!) {
  addProduct(input: $input, image: $image) { id } }"""
DELETE = "mutation($id: ID!) { deleteProduct(id: $id) }"


def flip(key: str, index: int) -> str:
    chars = list(key)
    chars[index] = "A" if chars[index] != "A" else "B"
    return "".join(chars)


SAME_LENGTH = {
    "last-byte": flip(KEY, -1),
    "first-byte": flip(KEY, 0),
    "middle-byte": flip(KEY, len(KEY) // 2),
    "every-byte": "x" * len(KEY),
    "swapped-case": KEY.swapcase(),
    "reversed": KEY[::-1],
}


def header(name: str, value: str | bytes) -> dict[bytes, bytes]:
    return {name.encode(): value if isinstance(value, bytes) else value.encode()}


WRONG_KEYS: dict[str, dict[bytes, bytes]] = {
    "no-key": {},
    **{f"same-length-{name}": header("X-API-Key", value) for name, value in SAME_LENGTH.items()},
    "prefix": header("X-API-Key", KEY[:-1]),
    "non-ascii": header("X-API-Key", b"\xff\xfe" + KEY.encode()[2:]),
    "bearer-header": header("Authorization", f"Bearer {KEY}"),
    "other-header": header("Api-Key", KEY),
    "cookie": header("Cookie", f"X-API-Key={KEY}; api_key={KEY}"),
}
RIGHT_KEY = header("X-API-Key", KEY)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    instance = await make_api(api_keys=(KEY,))
    async with instance.client:
        yield instance


def state_of(api: Api) -> tuple[Any, ...]:
    world = api.world
    return (
        dict(world.catalog.products),
        {space: sorted(v) for space, v in world.index.vectors.items()},
        sorted(world.images.objects),
        world.encoder.calls,
    )


async def add_product(
    api: Api, headers: dict[bytes, bytes], params: dict[str, str] | None = None
) -> httpx.Response:
    form = {
        "operations": json.dumps(
            {"query": ADD, "variables": {"input": {"id": "n1", "name": "coat"}, "image": None}}
        ),
        "map": json.dumps({"0": ["variables.image"]}),
    }
    return await api.client.post(
        "/graphql",
        data=form,
        files={"0": ("coat.jpg", jpeg(), "image/jpeg")},
        headers=headers,
        params=params,
    )


@pytest.mark.parametrize("headers", list(WRONG_KEYS.values()), ids=list(WRONG_KEYS))
async def test_mutations_without_the_right_key(api: Api, headers: dict[bytes, bytes]) -> None:
    before = state_of(api)
    added = await add_product(api, headers)
    deleted = await api.client.post(
        "/graphql", json={"query": DELETE, "variables": {"id": "p1"}}, headers=headers
    )
    for response in (added, deleted):
        assert response.status_code == 200
        result = response.json()
        assert error_codes(result) == ["UNAUTHENTICATED"]
        assert result["errors"][0]["message"] == "a valid X-API-Key header is required"
        assert result["data"] is None
    assert state_of(api) == before, "a refused mutation changed something or encoded an image"


async def test_the_key_in_the_query_string_is_not_a_key(api: Api) -> None:
    response = await add_product(api, {}, params={"api_key": KEY, "X-API-Key": KEY})
    assert error_codes(response.json()) == ["UNAUTHENTICATED"]


async def test_the_right_key_works(api: Api) -> None:
    """The control: the same requests with the key do what they say."""
    added = await add_product(api, RIGHT_KEY)
    assert added.json() == {"data": {"addProduct": {"id": "n1"}}}
    deleted = await api.client.post(
        "/graphql", json={"query": DELETE, "variables": {"id": "n1"}}, headers=RIGHT_KEY
    )
    assert deleted.json() == {"data": {"deleteProduct": True}}


async def test_queries_need_no_key(api: Api) -> None:
    result = await api.gql('{ product(id: "p1") { id } }')
    assert result == {"data": {"product": {"id": "p1"}}}


# -- keys stay secret --------------------------------------------------------------------------


async def test_keys_never_appear_in_logs_errors_or_metrics(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent_keys = [KEY, *SAME_LENGTH.values()]
    bodies: list[str] = []
    for key in sent_keys:
        bodies.append((await add_product(api, header("X-API-Key", key))).text)
        delete = {"query": DELETE, "variables": {"id": "p9"}}
        bodies.append(
            (await api.client.post("/graphql", json=delete, headers={"X-API-Key": key})).text
        )

    # A mutation that fails unexpectedly, with the right key: its traceback is logged.
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the catalog fell over")

    api.world.catalog.delete = broken  # type: ignore[method-assign]
    delete = {"query": DELETE, "variables": {"id": "p1"}}
    failed = await api.client.post("/graphql", json=delete, headers={"X-API-Key": KEY})
    assert error_codes_or_internal(failed.json()) == ["INTERNAL_SERVER_ERROR"]
    bodies.append(failed.text)
    assert "the catalog fell over" in caplog.text, "the failure was logged"

    bodies.append((await api.client.get("/metrics")).text)
    bodies.append((await api.client.get("/readyz")).text)
    everything = caplog.text + "".join(bodies)
    for key in sent_keys:
        assert key not in everything


def error_codes_or_internal(result: dict[str, Any]) -> list[str]:
    return [str(e["extensions"]["code"]) for e in result["errors"]]


def test_configuration_reprs_mask_the_keys() -> None:
    config = ApiConfig(api_keys=(KEY,))
    assert KEY not in repr(config)
    settings = Settings(api_keys=[KEY])
    assert KEY not in repr(settings)
    assert KEY not in str(settings.model_dump())
    assert KEY not in settings.model_dump_json()
    assert api_config(settings).api_keys == (KEY,)


async def test_mutations_are_off_without_configured_keys(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api = await make_api(api_keys=())
    async with api.client:
        response = await add_product(api, RIGHT_KEY)
    assert error_codes(response.json()) == ["UNAUTHENTICATED"]
    assert "n1" not in api.world.catalog.products
    assert KEY not in caplog.text + response.text


# -- CORS --------------------------------------------------------------------------------------

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type, x-api-key",
}


def app_from_environment(monkeypatch: pytest.MonkeyPatch, origins: list[str] | None) -> FastAPI:
    """The app configured the way the CLI configures it: environment -> Settings ->
    fashion_search.asgi.api_config -> create_app."""
    monkeypatch.delenv("FASHION_SEARCH_CORS_ORIGINS", raising=False)
    if origins is not None:
        monkeypatch.setenv("FASHION_SEARCH_CORS_ORIGINS", json.dumps(origins))
    monkeypatch.setenv("FASHION_SEARCH_API_KEYS", json.dumps([KEY]))
    world = World()
    return create_app(world.services(), api_config(Settings(_env_file=None)))


async def preflight(app: FastAPI, origin: str, path: str = "/graphql") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.options(path, headers={"Origin": origin, **PREFLIGHT})


@pytest.mark.parametrize("path", ["/graphql", "/get_similar_images", "/get_image_by_text"])
async def test_cors_is_closed_by_default(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    app = app_from_environment(monkeypatch, None)
    response = await preflight(app, "https://shop.example", path)
    assert not [h for h in response.headers if h.startswith("access-control-")]


async def test_a_cross_origin_mutation_gets_no_cors_headers_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a page elsewhere could send without a preflight (a simple POST) is refused for
    want of a key, and the answer carries nothing that would let the page read it."""
    app = app_from_environment(monkeypatch, None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/graphql",
            data={"query": 'mutation { deleteProduct(id: "p1") }'},
            headers={"Origin": "https://evil.example"},
        )
    assert response.status_code == 400  # form-encoded GraphQL is not accepted at all
    assert "access-control-allow-origin" not in response.headers


LOOK_ALIKES = [
    "https://evil.example",
    "http://shop.example",
    "https://shop.example:8443",
    "https://evil.shop.example",
    "https://shop.example.evil.example",
    "https://shop.exampl",
    "null",
]


async def test_cors_allows_exactly_the_configured_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    app = app_from_environment(monkeypatch, ["https://shop.example", "https://admin.example"])
    for origin in ("https://shop.example", "https://admin.example"):
        allowed = await preflight(app, origin)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == origin
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in allowed.headers
    for origin in LOOK_ALIKES:
        refused = await preflight(app, origin)
        assert "access-control-allow-origin" not in refused.headers, origin
