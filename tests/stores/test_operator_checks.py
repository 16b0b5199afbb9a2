"""What an operator sees when a production store is configured wrong: a Pinecone index whose
dimension is not the encoder's is named by /readyz (variable and both dimensions), and a
search against it is an upstream/configuration error, never the caller's bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api import ApiConfig, create_app
from domain.services import CatalogService, SearchService
from stores.vectors.pinecone_index import PineconeVectorIndex
from tests.api.helpers import Api, World, codes
from tests.fakes import FakeEncoderProvider, HashingEncoder
from tests.stores.pinecone_fake import FakePinecone
from tests.stores.servers import HEALTHY_TIMEOUT_S, pinecone_server, unique_name

__all__ = ["pinecone_server"]

INDEX_DIM = 128
ENCODER_DIM = 384


@pytest.fixture
async def mismatched(pinecone_server: FakePinecone) -> AsyncIterator[tuple[Api, str]]:
    """The API over a catalog of products and a Pinecone index of 128 dimensions, with a
    default encoder of 384."""
    world = World()
    world.encoder = HashingEncoder("fake", ENCODER_DIM)
    world.encoders = FakeEncoderProvider(world.encoder, world.other)
    world.products = CatalogService(world.encoders, world.index, world.catalog, world.images)
    await world.seed()  # into the in-memory index: the catalog has products
    host = pinecone_server.create_index(unique_name("idx"), INDEX_DIM)
    index = PineconeVectorIndex(pinecone_server.api_key, host=host, timeout_s=HEALTHY_TIMEOUT_S)
    world.index = index  # type: ignore[assignment]
    world.search = SearchService(world.encoders, index, world.catalog, world.images, None)
    world.products = CatalogService(world.encoders, index, world.catalog, world.images)
    config = ApiConfig(serve_images=True, warm_up_encoder=False)
    app = create_app(world.services(), config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    yield Api(world=world, app=app, client=client, config=config), host
    await client.aclose()
    await index.close()


async def test_readyz_names_the_variable_and_both_dimensions(
    mismatched: tuple[Api, str],
) -> None:
    api, host = mismatched
    response = await api.client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert "index" in body["down"]
    detail = body["checks"]["index"]["detail"]
    assert f"PINECONE_HOST={host}" in detail
    assert f"dimension {INDEX_DIM}" in detail
    assert f"{ENCODER_DIM}-d" in detail
    assert body["checks"]["catalog"]["ok"] is True


async def test_a_search_against_it_is_an_upstream_error(
    mismatched: tuple[Api, str], pinecone_server: FakePinecone
) -> None:
    api, host = mismatched
    result = await api.gql('{ searchByText(text: "red dress") { hits { rank } } }')
    assert codes(result) == ["UPSTREAM_UNAVAILABLE"]
    assert f"dimension {INDEX_DIM}" in result["errors"][0]["message"]
    rest = await api.client.post("/get_image_by_text", json={"text": "red dress"})
    assert rest.status_code == 503
    assert rest.json()["code"] == "UPSTREAM_UNAVAILABLE"
    name = host.rsplit("/", 1)[-1]
    assert pinecone_server.requests_to(name, "/query") == []  # refused before the query
