"""A live API for the UI tests: the real FastAPI app (api.app.create_app) over the in-memory
fakes, serving a few H&M demo products with their real JPEG images, on a free loopback port
in a background thread.

The fake encoders make search meaningful enough to assert on: a sample product's image is
encoded as its caption (name and tags), so text search finds products by their words,
uploading a product's photo finds that product first, and "more like this" finds products
sharing words. Any other image is hashed (a random but stable direction).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import random
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from PIL import Image

from api.app import create_app
from api.config import ApiConfig, ApiServices
from domain.model import Modality
from domain.ports import Vectors
from domain.services import CatalogService, SearchService
from encoders.images import decode_image
from stores.http_fetcher import SafeImageFetcher
from tests.fakes import (
    FakeEncoderProvider,
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
)

TAG_COLUMNS = ("product_type", "product_group", "colour", "colour_master", "section")
ENCODER_IDS = ("fake-clip", "fake-lite", "fake-pixels")
IMAGE_ONLY = "fake-pixels"


@dataclass(frozen=True)
class SampleProduct:
    id: str
    name: str
    description: str
    tags: dict[str, str]
    image: bytes

    @property
    def caption(self) -> str:
        return " ".join([self.name, *self.tags.values()])


def load_samples(hm_demo: Path, count: int = 24) -> list[SampleProduct]:
    with (hm_demo / "products.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [
        SampleProduct(
            id=row["id"],
            name=row["name"],
            description=row["description"],
            tags={key: row[key] for key in TAG_COLUMNS if row.get(key)},
            image=(hm_demo / row["image"]).read_bytes(),
        )
        for row in rows
    ]


class CaptionEncoder(HashingEncoder):
    """Known product photos look like their captions; other images hash."""

    def __init__(self, encoder_id: str, captions: dict[str, str], image_only: bool = False) -> None:
        super().__init__(encoder_id, dim=64)
        self._captions = captions
        self._image_only = image_only

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.IMAGE}) if self._image_only else super().modalities

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        vectors = super().encode_images(images)
        for row, data in enumerate(images):
            caption = self._captions.get(hashlib.sha256(data).hexdigest())
            if caption is not None:
                vectors[row] = self.encode_texts([caption])[0]
        return vectors


@dataclass(frozen=True)
class LiveApi:
    url: str
    products: list[SampleProduct]
    encoder_ids: tuple[str, ...]

    def product(self, name: str) -> SampleProduct:
        return next(p for p in self.products if p.name == name)

    def image_url(self, product: SampleProduct) -> str:
        """The URL the API serves the product's image at (found through GraphQL)."""
        import httpx

        response = httpx.post(
            f"{self.url}/graphql",
            json={
                "query": "query($id: ID!) { product(id: $id) { imageUrl } }",
                "variables": {"id": product.id},
            },
            timeout=10,
        )
        return str(response.json()["data"]["product"]["imageUrl"])


def build_app(
    public_url: str,
    products: Sequence[SampleProduct],
    config: ApiConfig | None = None,
    encoder_ids: Sequence[str] = ENCODER_IDS,
) -> FastAPI:
    captions = {hashlib.sha256(p.image).hexdigest(): p.caption for p in products}
    encoders = FakeEncoderProvider(
        *(CaptionEncoder(e, captions, image_only=e == IMAGE_ONLY) for e in encoder_ids)
    )
    index, catalog, images = InMemoryVectorIndex(), InMemoryCatalog(), InMemoryImageStore()
    catalog_service = CatalogService(encoders, index, catalog, images)

    async def ingest() -> None:
        for p in products:
            await catalog_service.add(
                p.id, p.name, p.image, p.description, p.tags, encoder_ids=list(encoder_ids)
            )

    # In a thread of its own: the caller may be inside an event loop (Playwright's sync API).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, ingest()).result()
    # Loopback may be fetched (the API's own images); private and link-local addresses may not.
    fetcher = SafeImageFetcher(allowed_networks=["127.0.0.0/8"], read_timeout_s=5.0)
    services = ApiServices(
        search=SearchService(encoders, index, catalog, images, fetcher),
        catalog=catalog_service,
        encoders=encoders,
        index=index,
        catalog_store=catalog,
        images=images,
        image_decoder=decode_image,
        fetcher=fetcher,
    )
    base = config or ApiConfig()
    return create_app(
        services,
        ApiConfig(
            api_keys=base.api_keys,
            public_url=public_url,
            max_image_bytes=base.max_image_bytes,
            max_image_pixels=base.max_image_pixels,
            max_body_bytes=base.max_body_bytes,
            serve_images=True,
            warm_up_encoder=False,
            graphiql=False,
        ),
    )


def noisy_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 * side**2 bytes."""
    rng = random.Random(side)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def loopback_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def free_port() -> int:
    with loopback_socket() as sock:
        return int(sock.getsockname()[1])


def dead_url() -> str:
    """An http URL on a loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


@contextmanager
def serve(app_for: type[FastAPI] | object, sock: socket.socket) -> Iterator[None]:
    assert isinstance(app_for, FastAPI)
    server = uvicorn.Server(
        uvicorn.Config(app_for, log_level="warning", lifespan="on", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def running_api(
    products: Sequence[SampleProduct],
    config: ApiConfig | None = None,
    encoder_ids: Sequence[str] = ENCODER_IDS,
    port: int = 0,
) -> Iterator[LiveApi]:
    sock = loopback_socket(port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = build_app(url, products, config, encoder_ids)
    with serve(app, sock):
        yield LiveApi(url=url, products=list(products), encoder_ids=tuple(encoder_ids))
    sock.close()
