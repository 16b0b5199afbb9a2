"""The API behind a real uvicorn server on a free loopback port, asked with the `gql` client
(as the UI does) and with plain HTTP (as legacy REST clients and browsers do)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from gql import Client, FileVar, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.requests import RequestsHTTPTransport

from api import ApiConfig, create_app
from stores.http_fetcher import SafeImageFetcher
from tests.api.helpers import API_KEY, World, jpeg, png
from tests.uvicorn_thread import uvicorn_in_thread

pytestmark = pytest.mark.e2e


@dataclass
class LiveServer:
    base: str
    world: World

    def client(self, headers: dict[str, str] | None = None) -> Client:
        transport = RequestsHTTPTransport(
            url=f"{self.base}/graphql", headers=headers or {}, timeout=30, retries=0
        )
        return Client(transport=transport, fetch_schema_from_transport=True)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    # The fetcher may reach this loopback server only (searching by one of its image URLs).
    world = World(fetcher=SafeImageFetcher(allowed_networks=["127.0.0.1/32"]))
    asyncio.run(world.seed())
    app = create_app(world.services(), ApiConfig(api_keys=(API_KEY,), serve_images=True))
    with uvicorn_in_thread(app, log_level="warning") as port:
        yield LiveServer(base=f"http://127.0.0.1:{port}", world=world)


SEARCH = """
query Search($text: String!, $topK: Int!) {
  searchByText(text: $text, topK: $topK) {
    encoder nextCursor hits { rank score product { id name imageUrl tags { key value } } }
  }
}"""


def run(client: Client, query: str, **variables: Any) -> dict[str, Any]:
    with client as session:
        result: dict[str, Any] = session.execute(GraphQLRequest(query, variable_values=variables))
    return result


def test_search_by_text_and_the_images_load(live: LiveServer) -> None:
    page = run(live.client(), SEARCH, text="white sneakers", topK=5)["searchByText"]
    assert page["encoder"] == "fake"
    assert len(page["hits"]) == 5
    assert {h["product"]["id"] for h in page["hits"][:2]} == {"p4", "p5"}
    for hit in page["hits"]:
        url = hit["product"]["imageUrl"]
        assert url.startswith(f"{live.base}/images/")
        image = httpx.get(url)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/jpeg"


def test_catalog_queries(live: LiveServer) -> None:
    query = """query {
      product(id: "p2") { name tags { key value } }
      products(first: 2) { items { id } nextCursor totalCount }
      facets(keys: ["type"]) { key values { value count } }
      encoders { id isDefault indexedCount }
    }"""
    data = run(live.client(), query)
    assert data["product"]["name"] == "red summer dress"
    assert data["products"]["items"] == [{"id": "p1"}, {"id": "p2"}]
    assert data["products"]["totalCount"] >= 6
    assert data["facets"][0]["key"] == "type"
    default = data["encoders"][0]
    assert default["id"] == "fake"
    assert default["isDefault"] is True
    assert default["indexedCount"] >= 6


def test_add_search_by_upload_and_url_then_delete(live: LiveServer) -> None:
    photo = jpeg((200, 10, 10), size=(80, 60))
    add = """mutation($input: AddProductInput!, $image: Upload!) {
      addProduct(input: $input, image: $image) { id imageUrl } }"""
    with live.client({"X-API-Key": API_KEY}) as session:
        request = GraphQLRequest(
            add,
            variable_values={
                "input": {
                    "id": "e2e",
                    "name": "e2e red",
                    "tags": [{"key": "type", "value": "Test"}],
                },
                "image": FileVar(io.BytesIO(photo), filename="red.jpg", content_type="image/jpeg"),
            },
        )
        added = session.execute(request, upload_files=True)["addProduct"]
    assert added["id"] == "e2e"
    assert httpx.get(added["imageUrl"]).content == photo

    by_image = """query($image: ImageInput!) {
      searchByImage(image: $image, topK: 1) { hits { score product { id } } } }"""
    with live.client() as session:
        request = GraphQLRequest(
            by_image,
            variable_values={"image": {"upload": FileVar(io.BytesIO(photo), filename="q.jpg")}},
        )
        hit = session.execute(request, upload_files=True)["searchByImage"]["hits"][0]
    assert hit["product"]["id"] == "e2e"
    assert hit["score"] > 0.999

    # The server fetches one of its own image URLs (loopback, allowed in this test only).
    by_url = run(live.client(), by_image, image={"url": added["imageUrl"]})
    assert by_url["searchByImage"]["hits"][0]["product"]["id"] == "e2e"

    deleted = run(live.client({"X-API-Key": API_KEY}), 'mutation { deleteProduct(id: "e2e") }')
    assert deleted == {"deleteProduct": True}


def test_errors_carry_their_code(live: LiveServer) -> None:
    with pytest.raises(TransportQueryError) as caught:
        run(live.client(), SEARCH, text="dress", topK=0)
    assert caught.value.errors is not None
    assert caught.value.errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    with pytest.raises(TransportQueryError) as caught:
        run(live.client(), 'mutation { deleteProduct(id: "p1") }')
    assert caught.value.errors is not None
    assert caught.value.errors[0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_rest_shims_over_http(live: LiveServer) -> None:
    by_text = httpx.post(f"{live.base}/get_image_by_text", json={"text": "red summer dress"})
    assert by_text.status_code == 200
    assert by_text.json()["id"] == "p2"
    photo = png((3, 3, 3))
    similar = httpx.post(
        f"{live.base}/get_similar_images", files={"file": ("q.png", photo, "image/png")}
    )
    assert similar.status_code == 200
    assert len(similar.json()["results"]) == 3
    private = httpx.post(
        f"{live.base}/get_similar_images", json={"url": "http://169.254.169.254/latest/meta-data/"}
    )
    assert private.status_code == 400
    assert private.json()["code"] == "BAD_USER_INPUT"


def test_health_metrics_and_graphiql(live: LiveServer) -> None:
    assert httpx.get(f"{live.base}/healthz").json() == {"status": "ok"}
    for _ in range(100):
        ready = httpx.get(f"{live.base}/readyz")
        if ready.status_code == 200:
            break
        time.sleep(0.05)
    assert ready.json()["status"] == "ready"
    metrics = httpx.get(f"{live.base}/metrics").text
    assert "fashion_search_graphql_operations_total" in metrics
    page = httpx.get(f"{live.base}/graphql", headers={"Accept": "text/html"})
    assert "graphiql" in page.text.lower()
