"""Health, readiness, metrics, the image route, CORS, GraphiQL."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tests.api.helpers import Api, World, make_api


async def test_healthz(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def ready(api: Api) -> dict[str, Any]:
    """Wait (briefly) for the encoder warm-up, then return /readyz's body."""
    for _ in range(100):
        response = await api.client.get("/readyz")
        body: dict[str, Any] = response.json()
        if body["checks"]["encoder"]["ok"] or "failed" in body["checks"]["encoder"]["detail"]:
            return body | {"status_code": response.status_code}
        await asyncio.sleep(0.01)
    raise AssertionError("the encoder never loaded")


async def test_readyz_when_everything_is_up(api: Api) -> None:
    async with api.app.router.lifespan_context(api.app):
        body = await ready(api)
    assert body["status_code"] == 200
    assert body["status"] == "ready"
    assert body["down"] == []
    assert set(body["checks"]) == {"encoder", "index", "catalog", "images"}
    assert body["checks"]["encoder"] == {"ok": True, "detail": "fake loaded"}


async def test_readyz_names_a_failing_store(api: Api) -> None:
    async def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("catalog database refused the connection")

    api.world.catalog.count = down  # type: ignore[method-assign]
    body = await ready(api)
    assert body["status_code"] == 503
    assert body["status"] == "unavailable"
    assert body["down"] == ["catalog"]
    assert body["checks"]["catalog"]["ok"] is False
    assert "ConnectionRefusedError" in body["checks"]["catalog"]["detail"]
    assert body["checks"]["index"]["ok"] is True


async def test_readyz_times_out_a_hanging_store() -> None:
    api = await make_api(readiness_timeout_s=0.05)

    async def hang(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(10)

    api.world.index.count = hang  # type: ignore[method-assign]
    api.world.images.exists = hang  # type: ignore[method-assign]
    async with api.client:
        body = await ready(api)
    assert body["status_code"] == 503
    assert body["down"] == ["images", "index"]
    assert "no answer" in body["checks"]["index"]["detail"]


async def test_readyz_reports_an_encoder_that_cannot_load() -> None:
    world = World()

    def broken(texts: Any) -> Any:
        raise RuntimeError("no weights")

    api = await make_api(world)  # (its products are written with a working encoder)
    world.encoder.encode_texts = broken  # type: ignore[method-assign]
    async with api.client:
        body = await ready(api)
    assert body["status_code"] == 503
    assert body["down"] == ["encoder"]
    assert "no weights" in body["checks"]["encoder"]["detail"]


async def test_a_starting_server_answers_text_while_the_image_tower_warms_up() -> None:
    """The lifespan waits for the text tower only: text searches are answered (and /readyz
    is 200) while the image tower's warm-up is still running in the background."""
    world = World()
    api = await make_api(world, serve_when_warm=True)
    image_warming = threading.Event()
    release_image = threading.Event()
    encode_images = world.encoder.encode_images

    def slow_images(images: Any) -> Any:
        image_warming.set()
        assert release_image.wait(timeout=60)
        return encode_images(images)

    world.encoder.encode_images = slow_images  # type: ignore[method-assign]
    try:
        async with api.app.router.lifespan_context(api.app):  # returns once text is warm
            assert await asyncio.to_thread(image_warming.wait, 60)
            body = await ready(api)
            assert body["status_code"] == 200
            answer = await api.gql('{ searchByText(text: "dress", topK: 2) { hits { score } } }')
            assert answer["data"]["searchByText"]["hits"]
            release_image.set()
    finally:
        release_image.set()


async def test_an_image_tower_that_fails_to_warm_up_makes_readyz_503() -> None:
    world = World()

    def broken(images: Any) -> Any:
        raise RuntimeError("no image weights")

    api = await make_api(world)
    world.encoder.encode_images = broken  # type: ignore[method-assign]
    async with api.app.router.lifespan_context(api.app):
        for _ in range(3000):  # until the background warm-up has failed (polls its state)
            body = (await api.client.get("/readyz")).json()
            if "failed" in body["checks"]["encoder"]["detail"]:
                break
            await asyncio.sleep(0.01)
    assert body["down"] == ["encoder"]
    assert "image tower" in body["checks"]["encoder"]["detail"]
    assert "no image weights" in body["checks"]["encoder"]["detail"]


async def test_metrics_count_routes_operations_and_search_stages(api: Api) -> None:
    await api.client.post("/get_image_by_text", json={"text": "red dress"})
    await api.client.post("/get_image_by_text", json={})
    await api.gql('query Named { searchByText(text: "dress", topK: 2) { encoder } }')
    await api.gql('{ a: product(id: "p1") { id } encoders { id } }')
    await api.gql("{ nope }")
    await api.client.get("/does-not-exist")
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'fashion_search_http_requests_total{method="POST",route="/get_image_by_text",status="200"} 1.0'
        in text
    )
    assert (
        'fashion_search_http_requests_total{method="POST",route="/get_image_by_text",status="422"} 1.0'
        in text
    )
    assert 'route="/graphql",status="200"} 3.0' in text
    assert (
        'fashion_search_http_requests_total{method="GET",route="unmatched",status="404"} 1.0'
        in text
    )
    assert (
        'fashion_search_http_request_duration_seconds_count{method="POST",route="/graphql"} 3.0'
        in text
    )
    assert (
        'fashion_search_graphql_operations_total{operation="searchByText",outcome="ok",type="query"} 1.0'
        in text
    )
    assert (
        'fashion_search_graphql_operations_total{operation="encoders,product",outcome="ok",type="query"} 1.0'
        in text
    )
    assert (
        'fashion_search_graphql_operations_total{operation="unknown",outcome="error",type="query"} 1.0'
        in text
    )
    assert (
        'fashion_search_graphql_operation_duration_seconds_count{operation="searchByText",type="query"} 1.0'
        in text
    )
    # Two searches ran (REST + GraphQL): each stage was timed twice.
    assert 'fashion_search_encode_duration_seconds_count{encoder="fake"} 2.0' in text
    assert 'fashion_search_index_query_duration_seconds_count{encoder="fake"} 2.0' in text
    assert 'fashion_search_catalog_fetch_duration_seconds_count{encoder="fake"} 2.0' in text


async def test_each_app_has_its_own_metrics() -> None:
    first = await make_api()
    second = await make_api()
    async with first.client, second.client:
        await first.client.get("/healthz")
        text = (await second.client.get("/metrics")).text
    assert 'route="/healthz"' not in text


async def test_images_are_served_with_type_and_cache_headers(api: Api) -> None:
    key = api.world.catalog.products["p1"].image_keys[0]
    response = await api.client.get(f"/images/{key}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert "immutable" in response.headers["cache-control"]
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    again = await api.client.get(f"/images/{key}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    head = await api.client.head(f"/images/{key}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


@pytest.mark.parametrize("etag", ['"missing.jpg"', 'W/"missing.jpg"'])
async def test_a_missing_image_is_404_even_with_a_matching_etag(api: Api, etag: str) -> None:
    """The ETag is the key: a client can name any key, so If-None-Match never turns a missing
    image into a 304 (issue 16)."""
    response = await api.client.get("/images/missing.jpg", headers={"If-None-Match": etag})
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"


async def test_a_deleted_image_is_404_for_a_client_that_cached_it(api: Api) -> None:
    key = api.world.catalog.products["p1"].image_keys[0]
    etag = (await api.client.get(f"/images/{key}")).headers["etag"]
    await api.world.images.delete(key)
    response = await api.client.get(f"/images/{key}", headers={"If-None-Match": etag})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/images/missing.jpg",
        "/images/..",
        "/images/../../etc/passwd",
        "/images/..%2F..%2Fetc%2Fpasswd",
        "/images/%2e%2e",
        "/images/.hidden",
        "/images/a%00b.jpg",
        "/images/" + "a" * 300,
    ],
)
async def test_images_route_refuses_traversal_and_unknown_keys(api: Api, path: str) -> None:
    response = await api.client.get(path)
    assert response.status_code in (404, 422)
    assert response.json()["code"] in ("NOT_FOUND", "BAD_USER_INPUT")


async def test_images_are_not_served_for_remote_stores() -> None:
    api = await make_api(serve_images=False)
    key = api.world.catalog.products["p1"].image_keys[0]
    async with api.client:
        response = await api.client.get(f"/images/{key}")
    assert response.status_code == 404


async def test_cors_is_closed_by_default(api: Api) -> None:
    response = await api.client.options(
        "/graphql",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_configured_origins_only() -> None:
    api = await make_api(cors_origins=("https://shop.example",))
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    async with api.client:
        ok = await api.client.options(
            "/graphql", headers={"Origin": "https://shop.example", **preflight}
        )
        other = await api.client.options(
            "/graphql", headers={"Origin": "https://evil.example", **preflight}
        )
    assert ok.headers["access-control-allow-origin"] == "https://shop.example"
    assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers


async def test_graphiql_in_a_browser(api: Api) -> None:
    response = await api.client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


async def test_queries_via_get(api: Api) -> None:
    response = await api.client.get("/graphql", params={"query": '{ product(id: "p1") { id } }'})
    assert response.json() == {"data": {"product": {"id": "p1"}}}
