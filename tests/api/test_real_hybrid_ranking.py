"""Real rankings judged by their labels: the mixed catalog (hm-demo and Kaggle products,
ingested by the CLI with the default encoder) served by the real composition root, asked
over GraphQL. The query photo is chosen by its labels, and the assertions read the labels
of the results, never ids picked by hand."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fashion_search.asgi import app_for
from fashion_search.settings import Settings
from fashion_search.wiring import build
from ingest.readers import ZipImage, open_source
from tests.conftest import MIXED_KAGGLE_PRODUCTS

pytestmark = pytest.mark.slow

TOPS = frozenset({"Tshirts", "Shirts", "Tops", "Sweatshirts", "T-shirt", "Top", "Shirt", "Blouse"})
"""Upper-body tops, as the two sources' ``type`` labels name them."""
STEERED = """query($photo: String!, $text: String) {
  searchByImage(image: {base64: $photo}, text: $text, topK: 5) {
    hits { product { id tags { key value } } }
  }
}"""


@pytest.fixture
async def client(mixed_catalog_home: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = app_for(build(Settings(home=mixed_catalog_home), load_entry_points=False))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client


def white_tshirt_photo(kaggle_zip: Path) -> tuple[str, bytes]:
    """The first white T-shirt of the catalog's Kaggle products, by its labels."""
    with open_source(kaggle_zip) as source:
        for n, item in enumerate(source):
            assert n < MIXED_KAGGLE_PRODUCTS, "no white T-shirt among the catalog's products"
            if item.tags.get("type") == "Tshirts" and item.tags.get("colour") == "White":
                assert isinstance(item.image, ZipImage)
                return item.id, item.image.read(10 * 1024 * 1024)
    raise AssertionError("the Kaggle zip has no white T-shirt")


async def top5(client: httpx.AsyncClient, photo: bytes, text: str | None) -> list[dict[str, str]]:
    variables: dict[str, Any] = {"photo": base64.b64encode(photo).decode(), "text": text}
    response = await client.post("/graphql", json={"query": STEERED, "variables": variables})
    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body
    hits = body["data"]["searchByImage"]["hits"]
    return [
        {"id": h["product"]["id"], **{t["key"]: t["value"] for t in h["product"]["tags"]}}
        for h in hits
    ]


def blue_tops(labels: list[dict[str, str]]) -> list[dict[str, str]]:
    return [p for p in labels if p.get("colour_group") == "Blue" and p.get("type") in TOPS]


@pytest.mark.timeout(1800)
async def test_in_blue_steers_a_white_tshirt_photo_to_blue_tops(
    client: httpx.AsyncClient, kaggle_zip: Path
) -> None:
    photo_id, photo = white_tshirt_photo(kaggle_zip)
    plain = await top5(client, photo, None)
    assert plain[0]["id"] == photo_id  # the photo is a catalog product: found first
    steered = await top5(client, photo, "in blue")
    assert len(blue_tops(steered)) >= 3, steered
    assert any(p["type"] == "Tshirts" for p in blue_tops(steered)), steered
    assert len(blue_tops(plain)) < len(blue_tops(steered)), plain
