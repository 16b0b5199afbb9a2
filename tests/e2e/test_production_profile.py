"""The production profile end to end: the composition root builds the Pinecone, MongoDB and
S3 adapters from settings pointing at the Pinecone fake, nx-27017 and moto; products are
added through the domain CatalogService and found by text, by image and by product, and
their image URLs serve the bytes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from domain.model import ImageQuery, Modality, ProductFilter, product_text_space
from domain.ports import Vectors
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build, build_encoders
from stores.catalog.mongodb import MongoCatalog
from stores.images.s3 import S3ImageStore
from stores.vectors.pinecone_index import PineconeVectorIndex
from tests.stores.pinecone_fake import FakePinecone
from tests.stores.servers import (
    AWS_TEST_CREDENTIALS,
    AWS_TEST_REGION,
    HEALTHY_TIMEOUT_S,
    MongoServer,
    S3Server,
    mongo_server,
    pinecone_server,
    s3_server,
    unique_name,
)

__all__ = ["mongo_server", "pinecone_server", "s3_server"]

pytestmark = pytest.mark.e2e

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}
PRODUCTS = [
    ("red-dress", "Red dress", "red", "dress"),
    ("red-shirt", "Red shirt", "red", "shirt"),
    ("blue-dress", "Blue dress", "blue", "dress"),
    ("green-trousers", "Green trousers", "green", "trousers"),
    ("white-shirt", "White shirt", "white", "shirt"),
    ("black-trousers", "Black trousers", "black", "trousers"),
]


def _colour_vector(rgb: tuple[float, float, float]) -> Vectors:
    r, g, b = rgb
    vector = np.array([r, g, b, 1.0 - max(r, g, b) + 0.05], dtype=np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class ColourEncoder:
    """A tiny two-modality encoder of one shared space: an image is its mean colour, a text
    the colour words it names. Enough to tell whether search finds the right products."""

    id = "colour-test"
    dim = 4
    modalities = frozenset({Modality.TEXT, Modality.IMAGE})

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        rows = []
        for text in texts:
            named = [COLOURS[w] for w in text.lower().split() if w in COLOURS]
            rgb = tuple(np.mean(named, axis=0)) if named else (0.3, 0.3, 0.3)
            rows.append(_colour_vector((float(rgb[0]), float(rgb[1]), float(rgb[2]))))
        return np.stack(rows)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        rows = []
        for data in images:
            with Image.open(io.BytesIO(data)) as image:
                mean = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255
            rows.append(_colour_vector((float(mean[0]), float(mean[1]), float(mean[2]))))
        return np.stack(rows)


def png(colour: str, size: int = 24) -> bytes:
    rgb = tuple(int(c * 255) for c in COLOURS[colour])
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
async def container(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pinecone_server: FakePinecone,
    mongo_server: MongoServer,
    s3_server: S3Server,
) -> AsyncIterator[Container]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["aws_secret_access_key"])
    bucket = unique_name("images")
    settings = Settings(
        home=tmp_path / "home",
        encoder=ColourEncoder.id,
        pinecone_api_key=SecretStr(pinecone_server.api_key),
        pinecone_host=pinecone_server.create_index(unique_name("idx"), ColourEncoder.dim),
        mongodb_uri=SecretStr(mongo_server.uri),
        mongodb_db=unique_name("shop").replace("-", "_"),
        s3_bucket=bucket,
        s3_endpoint_url=s3_server.endpoint_url,
        aws_region=AWS_TEST_REGION,
        store_timeout_s=HEALTHY_TIMEOUT_S,
    )
    encoders = build_encoders(settings, load_entry_points=False)
    encoders.register_instance(ColourEncoder())
    built = build(settings, encoders=encoders)
    assert isinstance(built.images, S3ImageStore)
    await built.images.create_bucket()
    yield built
    if isinstance(built.catalog, MongoCatalog):
        await built.catalog.drop()
    await built.aclose()


async def add_products(container: Container) -> None:
    for product_id, name, colour, kind in PRODUCTS:
        await container.catalog_service.add(
            product_id, name, png(colour), tags={"colour": colour, "type": kind}
        )


async def test_production_adapters_are_wired(container: Container) -> None:
    assert isinstance(container.index, PineconeVectorIndex)
    assert isinstance(container.catalog, MongoCatalog)
    assert isinstance(container.images, S3ImageStore)


async def test_ingest_and_search_across_pinecone_mongodb_and_s3(
    container: Container, pinecone_server: FakePinecone, mongo_server: MongoServer
) -> None:
    await add_products(container)
    assert await container.index.count(ColourEncoder.id) == len(PRODUCTS)
    spaces = [ColourEncoder.id, product_text_space(ColourEncoder.id)]  # images, then words
    assert sorted(await container.index.encoder_ids()) == sorted(spaces)
    assert await container.catalog.count() == len(PRODUCTS)
    assert set(await container.catalog.indexed_hashes(ColourEncoder.id)) == {p[0] for p in PRODUCTS}

    reds = await container.search.by_text("red", top_k=2)
    assert [h.product.id for h in reds.hits] == ["red-dress", "red-shirt"]
    # Pinecone's cosine of the perfect colour match comes through as the visual signal (the
    # hit's score is the fused one, which is not a cosine).
    assert reds.hits[0].signals.visual == pytest.approx(1.0, abs=1e-4)
    assert reds.next_cursor is not None

    dresses = await container.search.by_text(
        "red", top_k=5, filter=ProductFilter({"type": "dress"})
    )
    assert [h.product.id for h in dresses.hits] == ["red-dress", "blue-dress"]

    by_image = await container.search.by_image(ImageQuery(data=png("blue")), top_k=1)
    assert [h.product.id for h in by_image.hits] == ["blue-dress"]

    similar = await container.search.similar("red-dress", top_k=1)
    assert [h.product.id for h in similar.hits] == ["red-shirt"]  # itself excluded

    # Follow the image URL of a hit: a presigned S3 URL serving the stored PNG.
    hit = by_image.hits[0]
    assert hit.image_url is not None
    assert "X-Amz-Signature=" in hit.image_url
    async with httpx.AsyncClient() as http:
        response = await http.get(hit.image_url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == png("blue")

    facets = await container.catalog_service.facets(["colour"])
    assert facets == {"colour": {"red": 2, "blue": 1, "green": 1, "white": 1, "black": 1}}

    # The documents really are in MongoDB, the vectors in the Pinecone fake.
    catalog = container.catalog
    assert isinstance(catalog, MongoCatalog)
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_server.uri)
    products: AsyncCollection[dict[str, object]] = mongo[catalog.database_name]["products"]
    doc = await products.find_one({"_id": "red-dress"})
    await mongo.close()
    assert doc is not None
    assert doc["tags"] == {"colour": "red", "type": "dress"}
    assert (
        sum(
            index.namespaces.get(ColourEncoder.id, {}).get("red-dress") is not None
            for index in pinecone_server.indexes.values()
        )
        == 1
    )


async def test_delete_removes_the_product_from_every_store(container: Container) -> None:
    await add_products(container)
    product = await container.catalog_service.get("red-dress")
    key = product.primary_image_key
    assert key is not None
    assert await container.images.exists(key)

    assert await container.catalog_service.delete("red-dress") is True
    assert await container.catalog.get("red-dress") is None
    assert await container.index.fetch(ColourEncoder.id, ["red-dress"]) == {}
    assert not await container.images.exists(key)
    reds = await container.search.by_text("red", top_k=1)
    assert [h.product.id for h in reds.hits] == ["red-shirt"]
