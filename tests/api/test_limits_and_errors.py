"""Hostile and broken input: each gets its exact error code (GraphQL ``extensions.code``) or
status and ``{"detail", "code"}`` (REST), never a 500 or a stack trace."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from domain.errors import EncoderUnavailable
from stores.http_fetcher import SafeImageFetcher
from tests.api.helpers import (
    Api,
    World,
    b64,
    codes,
    errors_of,
    jpeg,
    make_api,
    pixel_bomb_png,
    png,
)
from tests.api.httpserver import Server, serve

IMAGE_QUERY = """query($image: ImageInput!, $topK: Int! = 3) {
  searchByImage(image: $image, topK: $topK) { hits { product { id } } } }"""


async def graphql_image_code(api: Api, image: dict[str, Any]) -> list[str]:
    return codes(await api.gql(IMAGE_QUERY, {"image": image}))


async def rest_json(api: Api, body: dict[str, Any]) -> httpx.Response:
    return await api.client.post("/get_similar_images", json=body)


def assert_rest_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "code"}
    assert body["code"] == code
    assert "Traceback" not in response.text


# -- image bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    ["not base64 at all!", "aGVsbG8=====", "####", "iVBORw0KGgo=\x00"],
)
async def test_bad_base64(api: Api, encoded: str) -> None:
    assert await graphql_image_code(api, {"base64": encoded}) == ["BAD_USER_INPUT"]
    assert_rest_error(await rest_json(api, {"image_base64": encoded}), 400, "BAD_USER_INPUT")


@pytest.mark.parametrize(
    "data",
    [
        b"just some text",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"%PDF-1.4 fake",
        b"BM\x00\x00\x00\x00",
    ],
)
async def test_non_image_bytes(api: Api, data: bytes) -> None:
    assert await graphql_image_code(api, {"base64": b64(data)}) == ["BAD_USER_INPUT"]
    assert_rest_error(await rest_json(api, {"image_base64": b64(data)}), 400, "BAD_USER_INPUT")
    response = await api.client.post(
        "/get_similar_images", files={"file": ("x.jpg", data, "image/jpeg")}
    )
    assert_rest_error(response, 400, "BAD_USER_INPUT")


async def test_declared_content_type_is_ignored_bytes_decide(api: Api) -> None:
    response = await api.client.post(
        "/get_similar_images", files={"file": ("x.txt", png(), "text/plain")}
    )
    assert response.status_code == 200


async def test_truncated_jpeg(api: Api) -> None:
    whole = jpeg(size=(256, 256))
    truncated = whole[: len(whole) // 2]
    assert await graphql_image_code(api, {"base64": b64(truncated)}) == ["BAD_USER_INPUT"]
    response = await api.client.post(
        "/get_similar_images", files={"file": ("t.jpg", truncated, "image/jpeg")}
    )
    assert_rest_error(response, 400, "BAD_USER_INPUT")


async def test_pixel_bomb_png(api: Api) -> None:
    bomb = pixel_bomb_png()
    assert len(bomb) < 2_000
    result = await api.gql(IMAGE_QUERY, {"image": {"base64": b64(bomb)}})
    assert codes(result) == ["BAD_USER_INPUT"]
    assert "large" in result["errors"][0]["message"]
    response = await api.client.post(
        "/get_similar_images", files={"file": ("bomb.png", bomb, "image/png")}
    )
    assert_rest_error(response, 400, "BAD_USER_INPUT")


async def test_pixel_limit_follows_the_config() -> None:
    api = await make_api(max_image_pixels=100 * 100)
    async with api.client:
        assert await graphql_image_code(api, {"base64": b64(png(size=(99, 100)))}) == []
        assert await graphql_image_code(api, {"base64": b64(png(size=(101, 100)))}) == [
            "BAD_USER_INPUT"
        ]


@pytest.fixture
async def small_api() -> AsyncIterator[Api]:
    """Images up to 10 kB, bodies up to 100 kB."""
    api = await make_api(max_image_bytes=10_000, max_body_bytes=100_000)
    async with api.client:
        yield api


def big_png() -> bytes:
    """A valid PNG of about 30 kB (noise does not compress)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((120, 120), 80).convert("RGB").save(buffer, format="PNG")
    assert 20_000 < len(buffer.getvalue()) < 70_000
    return buffer.getvalue()


async def test_oversize_upload(small_api: Api) -> None:
    data = big_png()
    response = await small_api.gql_upload(
        IMAGE_QUERY, {"image": {"upload": None}}, {"image.upload": ("big.png", data, "image/png")}
    )
    assert codes(response.json()) == ["PAYLOAD_TOO_LARGE"]
    response = await small_api.client.post(
        "/get_similar_images", files={"file": ("big.png", data, "image/png")}
    )
    assert_rest_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_oversize_base64(small_api: Api) -> None:
    encoded = b64(big_png())
    assert await graphql_image_code(small_api, {"base64": encoded}) == ["PAYLOAD_TOO_LARGE"]
    assert_rest_error(
        await rest_json(small_api, {"image_base64": encoded}), 413, "PAYLOAD_TOO_LARGE"
    )


async def test_oversize_fetched_image(small_api: Api) -> None:
    small_api.world.fetcher.responses["https://img.example/big.png"] = big_png()  # type: ignore[attr-defined]
    url = {"url": "https://img.example/big.png"}
    assert await graphql_image_code(small_api, url) == ["PAYLOAD_TOO_LARGE"]
    assert_rest_error(await rest_json(small_api, url), 413, "PAYLOAD_TOO_LARGE")


async def test_oversize_request_bodies_are_refused_before_reading(small_api: Api) -> None:
    padding = "x" * 150_000
    response = await small_api.client.post(
        "/graphql", json={"query": "{ encoders { id } }", "variables": {"pad": padding}}
    )
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    response = await small_api.client.post("/get_image_by_text", json={"text": padding})
    assert_rest_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_streamed_bodies_without_length_are_cut_off(small_api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(20):
            yield b"y" * 10_000
        yield b'"}'

    response = await small_api.client.post(
        "/get_image_by_text", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_rest_error(response, 413, "PAYLOAD_TOO_LARGE")


# -- arguments and documents ---------------------------------------------------------------


@pytest.mark.parametrize("top_k", [0, -1, 101, 1000])
async def test_top_k_out_of_range(api: Api, top_k: int) -> None:
    text = await api.gql(
        'query($k: Int!) { searchByText(text: "dress", topK: $k) { encoder } }', {"k": top_k}
    )
    assert codes(text) == ["BAD_USER_INPUT"]
    assert "topK" in text["errors"][0]["message"]
    image = await api.gql(IMAGE_QUERY, {"image": {"base64": b64(png())}, "topK": top_k})
    assert codes(image) == ["BAD_USER_INPUT"]
    similar = await api.gql(
        'query($k: Int!) { similarProducts(productId: "p1", topK: $k) { encoder } }', {"k": top_k}
    )
    assert codes(similar) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize("top_k", [1, 100])
async def test_top_k_bounds_are_inclusive(api: Api, top_k: int) -> None:
    result = await api.gql(
        'query($k: Int!) { searchByText(text: "dress", topK: $k) { hits { rank } } }', {"k": top_k}
    )
    assert "errors" not in result
    assert len(result["data"]["searchByText"]["hits"]) == min(top_k, 6)


async def test_a_bad_top_k_costs_no_fetch(api: Api) -> None:
    await api.gql(IMAGE_QUERY, {"image": {"url": "https://img.example/a.png"}, "topK": 0})
    assert api.world.fetcher.requested == []  # type: ignore[attr-defined]


async def test_query_depth_limit() -> None:
    api = await make_api(max_query_depth=3)
    async with api.client:
        ok = await api.gql('{ searchByText(text: "x") { hits { rank } } }')
        assert "errors" not in ok
        deep = await api.gql('{ searchByText(text: "x") { hits { product { tags { key } } } } }')
    assert codes(deep) == ["BAD_USER_INPUT"]
    assert "depth" in deep["errors"][0]["message"]
    assert deep.get("data") is None


async def test_query_depth_limit_sees_through_fragments() -> None:
    api = await make_api(max_query_depth=3)
    query = """fragment T on Product { tags { key } }
               { searchByText(text: "x") { hits { product { ...T } } } }"""
    async with api.client:
        assert codes(await api.gql(query)) == ["BAD_USER_INPUT"]


async def test_alias_limit(api: Api) -> None:
    fields = " ".join(
        f'a{i}: product(id: "p1") {{ id }}' for i in range(api.config.max_aliases + 1)
    )
    result = await api.gql("{ " + fields + " }")
    assert codes(result) == ["BAD_USER_INPUT"]
    assert "aliases" in result["errors"][0]["message"]


async def test_token_limit(api: Api) -> None:
    fields = " ".join("encoders { id dim }" for _ in range(api.config.max_tokens // 4))
    result = await api.gql("{ " + fields + " }")
    assert codes(result) == ["BAD_USER_INPUT"]
    assert "tokens" in result["errors"][0]["message"]


async def test_introspection_is_not_caught_by_the_limits(api: Api) -> None:
    from graphql import get_introspection_query

    result = await api.gql(get_introspection_query(descriptions=True))
    assert "errors" not in result
    assert result["data"]["__schema"]["queryType"]["name"] == "Query"


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        ("{ searchByText(text: ", {}),
        ("{ nope }", {}),
        ('{ searchByText(text: "x", topK: "ten") { encoder } }', {}),
        ('query($k: Int!) { searchByText(text: "x", topK: $k) { encoder } }', {"k": "ten"}),
        ('query($k: Int!) { searchByText(text: "x", topK: $k) { encoder } }', {}),
        ('{ searchByText(text: "   ") { encoder } }', {}),
    ],
)
async def test_malformed_documents_and_variables(
    api: Api, query: str, variables: dict[str, Any]
) -> None:
    result = await api.gql(query, variables)
    assert codes(result) == ["BAD_USER_INPUT"]


async def test_malformed_http_requests_are_4xx(api: Api) -> None:
    not_json = await api.client.post(
        "/graphql", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    batch = await api.client.post("/graphql", json=[{"query": "{ encoders { id } }"}] * 2)
    assert batch.status_code == 400
    text = await api.client.post(
        "/graphql", content=b"{ encoders { id } }", headers={"content-type": "text/plain"}
    )
    assert text.status_code == 400
    mutation_via_get = await api.client.get(
        "/graphql", params={"query": 'mutation { deleteProduct(id: "p1") }'}
    )
    assert mutation_via_get.status_code == 400
    assert "p1" in api.world.catalog.products


# -- URLs ----------------------------------------------------------------------------------


@pytest.fixture
async def guarded_api() -> AsyncIterator[Api]:
    """The app with the real SSRF-safe fetcher, allowing only 127.0.0.1 (the test server)."""
    world = World(fetcher=SafeImageFetcher(allowed_networks=["127.0.0.1/32"]))
    api = await make_api(world)
    async with api.client:
        yield api


@pytest.fixture
def image_server() -> Iterator[Server]:
    with serve("127.0.0.1", png((4, 5, 6))) as server:
        yield server


@pytest.mark.parametrize(
    "url",
    [
        "http://0.0.0.0/a.png",
        "http://127.0.0.2/a.png",
        "http://[::1]/a.png",
        "http://10.0.0.8/a.png",
        "http://192.168.0.10/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[fd00:ec2::254]/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:25/_HELO",
        "ftp://example.com/a.png",
    ],
)
async def test_refused_urls(guarded_api: Api, url: str) -> None:
    assert await graphql_image_code(guarded_api, {"url": url}) == ["BAD_USER_INPUT"]
    assert_rest_error(await rest_json(guarded_api, {"url": url}), 400, "BAD_USER_INPUT")


async def test_redirect_to_a_private_address(guarded_api: Api, image_server: Server) -> None:
    url = {"url": f"{image_server.base}/redirect?to=http://169.254.169.254/latest/meta-data/"}
    assert await graphql_image_code(guarded_api, url) == ["BAD_USER_INPUT"]
    assert_rest_error(await rest_json(guarded_api, url), 400, "BAD_USER_INPUT")
    to_loopback = {"url": f"{image_server.base}/redirect?to=http://127.0.0.2:9/a.png"}
    assert await graphql_image_code(guarded_api, to_loopback) == ["BAD_USER_INPUT"]


async def test_allowed_url_with_redirect_works(guarded_api: Api, image_server: Server) -> None:
    url = f"{image_server.base}/redirect?to=/img.png"
    result = await guarded_api.gql(IMAGE_QUERY, {"image": {"url": url}})
    assert "errors" not in result
    response = await rest_json(guarded_api, {"url": url})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 3


async def test_unreachable_upstream(guarded_api: Api, image_server: Server) -> None:
    with serve("127.0.0.1") as closed:
        dead = f"{closed.base}/a.png"
    assert await graphql_image_code(guarded_api, {"url": dead}) == ["UPSTREAM_UNAVAILABLE"]
    assert_rest_error(await rest_json(guarded_api, {"url": dead}), 503, "UPSTREAM_UNAVAILABLE")
    failing = {"url": f"{image_server.base}/status?code=502"}
    assert await graphql_image_code(guarded_api, failing) == ["UPSTREAM_UNAVAILABLE"]


async def test_url_search_without_a_fetcher_is_bad_input() -> None:
    world = World()
    world.fetcher = None  # type: ignore[assignment]
    api = await make_api(world)
    async with api.client:
        assert await graphql_image_code(api, {"url": "https://img.example/a.png"}) == [
            "BAD_USER_INPUT"
        ]


# -- server-side failures ------------------------------------------------------------------


async def test_encoder_unavailable(api: Api) -> None:
    def unavailable(encoder_id: str | None = None) -> Any:
        raise EncoderUnavailable("weights are not on this machine")

    api.world.encoders.get = unavailable  # type: ignore[method-assign]
    result = await api.gql('{ searchByText(text: "dress") { encoder } }')
    assert codes(result) == ["ENCODER_UNAVAILABLE"]
    response = await api.client.post("/get_image_by_text", json={"text": "dress"})
    assert_rest_error(response, 503, "ENCODER_UNAVAILABLE")


async def test_unexpected_errors_are_generic_and_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    api.world.catalog.get_many = broken  # type: ignore[method-assign]
    result = await api.gql('{ product(id: "p1") { id } }')
    assert codes(result) == ["INTERNAL_SERVER_ERROR"]
    assert result["errors"][0]["message"] == "Internal server error"
    assert "hunter2" not in json.dumps(result)
    assert "hunter2" in caplog.text

    api.world.index.query = broken  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/get_image_by_text", json={"text": "dress"})
    assert_rest_error(response, 500, "INTERNAL_SERVER_ERROR")
    assert "hunter2" not in response.text


async def test_several_operations_need_an_operation_name(api: Api) -> None:
    """GraphQL spec (GetOperation): a document with several operations and no operationName
    is an error, not a run of whichever comes first; with a name, that one runs."""
    document = "query A { encoders { id } } query B { encoders { dim } }"
    unnamed = await api.gql(document)
    assert codes(unnamed) == ["BAD_USER_INPUT"]
    assert "operation name" in errors_of(unnamed)[0]["message"]
    assert unnamed.get("data") is None
    named = await api.gql(document, operation_name="B")
    assert "errors" not in named, named
    assert set(named["data"]["encoders"][0]) == {"dim"}
    first = await api.gql(document, operation_name="A")
    assert set(first["data"]["encoders"][0]) == {"id"}
    alone = await api.gql("query A { encoders { id } }")
    assert set(alone["data"]["encoders"][0]) == {"id"}
