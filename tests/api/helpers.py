"""Building the API over the in-memory fakes, and small helpers for talking to it."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from PIL import Image

from api import ApiConfig, ApiServices, create_app
from domain.errors import UpstreamUnavailable
from domain.ports import ImageFetcher
from domain.services import CatalogService, SearchService
from encoders.images import decode_image, probe_image
from tests.fakes import (
    FakeEncoderProvider,
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)

API_KEY = "test-key-0123456789"

PRODUCTS: list[tuple[str, str, dict[str, str]]] = [
    ("p1", "black slim trousers", {"type": "Trousers", "colour": "Black"}),
    ("p2", "red summer dress", {"type": "Dress", "colour": "Red"}),
    ("p3", "black summer dress", {"type": "Dress", "colour": "Black"}),
    ("p4", "white leather sneakers", {"type": "Shoes", "colour": "White"}),
    ("p5", "white canvas sneakers", {"type": "Shoes", "colour": "White"}),
    ("p6", "blue denim jacket", {"type": "Jacket", "colour": "Blue"}),
]


def png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(colour: tuple[int, int, int] = (30, 120, 200), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buffer, format="JPEG", quality=90)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    image.paste(colour, (0, 0, size[0] // 2, size[1] // 2))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def webp(colour: tuple[int, int, int] = (20, 160, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="WEBP")
    return buffer.getvalue()


def pixel_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny file announcing width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FakeFetcher:
    """URL -> bytes, or an exception to raise; records what was asked."""

    def __init__(self, responses: Mapping[str, bytes | Exception] | None = None) -> None:
        self.responses: dict[str, bytes | Exception] = dict(responses or {})
        self.requested: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.requested.append(url)
        answer = self.responses.get(url)
        if answer is None:
            raise UpstreamUnavailable(f"nothing at {url}")
        if isinstance(answer, Exception):
            raise answer
        return answer


class World:
    """The fakes behind one app, seeded with PRODUCTS (indexed by their words)."""

    def __init__(self, fetcher: ImageFetcher | None = None) -> None:
        self.encoder = HashingEncoder()
        self.other = HashingEncoder("other", dim=32)
        self.encoders = FakeEncoderProvider(self.encoder, self.other)
        self.index = InMemoryVectorIndex()
        self.catalog = InMemoryCatalog()
        self.images = InMemoryImageStore()
        self.fetcher = fetcher if fetcher is not None else FakeFetcher()
        self.search = SearchService(
            self.encoders, self.index, self.catalog, self.images, self.fetcher
        )
        self.products = CatalogService(self.encoders, self.index, self.catalog, self.images)

    async def seed(self) -> None:
        for pid, name, tags in PRODUCTS:
            await self.products.add(pid, name, fake_image(name), f"{name}.", tags, ["fake"])

    def services(self) -> ApiServices:
        return ApiServices(
            search=self.search,
            catalog=self.products,
            encoders=self.encoders,
            index=self.index,
            catalog_store=self.catalog,
            images=self.images,
            image_decoder=decode_image,
            image_probe=probe_image,
            fetcher=self.fetcher,
        )


@dataclass
class Api:
    world: World
    app: FastAPI
    client: httpx.AsyncClient
    config: ApiConfig
    default_headers: dict[str, str] = field(default_factory=dict)

    async def gql(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        operation_name: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "variables": dict(variables or {})}
        if operation_name:
            body["operationName"] = operation_name
        response = await self.client.post("/graphql", json=body, headers=dict(headers or {}))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def gql_upload(
        self,
        query: str,
        variables: Mapping[str, Any],
        files: Mapping[str, tuple[str, bytes, str]],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A GraphQL multipart request: ``files`` maps a variable path (``image`` or
        ``image.upload``) to (filename, bytes, content type)."""
        file_map = {str(i): [f"variables.{path}"] for i, path in enumerate(files)}
        form = {
            "operations": json.dumps({"query": query, "variables": dict(variables)}),
            "map": json.dumps(file_map),
        }
        multipart = {str(i): spec for i, spec in enumerate(files.values())}
        return await self.client.post(
            "/graphql", data=form, files=multipart, headers=dict(headers or {})
        )


def errors_of(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = result.get("errors") or []
    return errors


def codes(result: Mapping[str, Any]) -> list[str]:
    return [str(e.get("extensions", {}).get("code")) for e in errors_of(result)]


async def make_api(world: World | None = None, **config: Any) -> Api:
    world = world or World()
    if not world.catalog.products:
        await world.seed()
    api_config = ApiConfig(**{"api_keys": (API_KEY,), "serve_images": True, **config})
    app = create_app(world.services(), api_config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    return Api(world=world, app=app, client=client, config=api_config)
