"""The API over the real composition root: SQLite catalog, FAISS index, local image store and
a real encoder, on a tiny catalog ingested from the shared demo data."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from domain.model import Modality
from encoders.fashion_lite.heads import DEFAULT_HEADS
from fashion_search.asgi import app_for
from fashion_search.settings import Settings
from fashion_search.wiring import build
from ingest.pipeline import IngestOptions, ingest
from ingest.readers import open_source

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
FASHION_LITE_HEADS = DEFAULT_HEADS
# fashion-lite (text and image) once its trained heads are in the tree; until then the
# image-only EfficientNet-Lite0 baseline, which needs no trained artifact.
ENCODER = "fashion-lite" if FASHION_LITE_HEADS.exists() else "effnet-lite0"
KEY = "real-wiring-key"
SIZE = 8


async def gql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def test_api_over_the_real_stores_and_encoder(tmp_path: Path, hm_demo: Path) -> None:
    settings = Settings(home=tmp_path, encoder=ENCODER, api_keys=[SecretStr(KEY)])
    container = build(settings, load_entry_points=False)
    encoder = container.encoders.get(None)
    with open_source(hm_demo) as source:
        items = list(itertools.islice(iter(source), SIZE))
    summary = await ingest(
        items,
        [encoder],
        container.index,
        container.catalog,
        container.images,
        options=IngestOptions(batch_size=SIZE),
    )
    assert (summary.indexed, summary.failed) == (SIZE, 0)
    first = items[0]

    app = app_for(container)  # closes the container's stores on shutdown
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        for _ in range(200):
            ready = await client.get("/readyz")
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert ready.json()["status"] == "ready", ready.json()

        data = await gql(
            client,
            """query($id: ID!) {
              products(first: 100) { totalCount items { id } }
              facets(keys: ["product_type"]) { key values { count } }
              encoders { id isDefault indexedCount }
              product(id: $id) { id name imageUrl }
            }""",
            id=first.id,
        )
        assert data["products"]["totalCount"] == SIZE
        assert sum(v["count"] for v in data["facets"][0]["values"]) == SIZE
        assert {"id": encoder.id, "isDefault": True, "indexedCount": SIZE} in data["encoders"]
        assert data["product"]["name"] == first.name

        # The image of a product loads from its imageUrl, served from the local store.
        image = await client.get(data["product"]["imageUrl"])
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/jpeg"
        photo = image.content

        similar = await gql(
            client,
            """query($id: ID!) { similarProducts(productId: $id, topK: 3) {
                 hits { rank score product { id } } } }""",
            id=first.id,
        )
        hits = similar["similarProducts"]["hits"]
        assert len(hits) == 3
        assert first.id not in [h["product"]["id"] for h in hits]

        # Searching with a product's own photo finds that product first.
        response = await client.post(
            "/graphql",
            data={
                "operations": '{"query": "query($f: Upload!) { searchByImage(image: {upload: $f}, topK: 2) { hits { score product { id } } } }", "variables": {"f": null}}',
                "map": '{"0": ["variables.f"]}',
            },
            files={"0": ("q.jpg", photo, "image/jpeg")},
        )
        top = response.json()["data"]["searchByImage"]["hits"][0]
        assert top["product"]["id"] == first.id
        assert top["score"] > 0.99

        rest = await client.post(
            "/get_similar_images", files={"file": ("q.jpg", photo, "image/jpeg")}
        )
        assert rest.status_code == 200
        assert rest.json()["results"][0]["id"] == first.id
        assert len(rest.json()["results"]) == 3

        if Modality.TEXT in encoder.modalities:
            text = await client.post("/get_image_by_text", json={"text": first.name})
            assert text.status_code == 200
        else:
            text = await client.post("/get_image_by_text", json={"text": "black top"})
            assert text.status_code == 400
            assert text.json()["code"] == "BAD_USER_INPUT"

        deleted = await client.post(
            "/graphql",
            json={"query": f'mutation {{ deleteProduct(id: "{first.id}") }}'},
            headers={"X-API-Key": KEY},
        )
        assert deleted.json() == {"data": {"deleteProduct": True}}
        gone = await gql(client, "{ products(first: 100) { totalCount } }")
        assert gone["products"]["totalCount"] == SIZE - 1
