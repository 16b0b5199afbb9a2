"""Hostile and awkward images (issue 8, item 2), each sent every way the API takes an image:
GraphQL base64, GraphQL multipart upload, GraphQL URL, REST multipart file, REST base64 and
REST URL (served by a loopback server, fetched by the real SSRF-safe fetcher).

Refusals carry the exact code (REST: status and code) and happen before the encoder is
asked; CMYK JPEGs and 16-bit PNGs are decoded to 8-bit RGB, as the real encoders do, and
return hits. tests/api/test_limits_and_errors.py covers the basic forms of some of these
through one or two channels; these go through all six."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import resource
import struct
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from api.config import ApiServices
from domain.ports import Vectors
from domain.services import CatalogService, SearchService
from encoders.images import decode_image
from stores.http_fetcher import SafeImageFetcher
from tests.api.helpers import Api, World, jpeg, make_api
from tests.fakes import FAKE_IMAGE_PREFIX, FakeEncoderProvider, HashingEncoder
from tests.reliability.support import (
    CHANNELS,
    HostileServer,
    Route,
    encode,
    every_channel,
    expected,
    hostile_server,
    photo,
    png_chunk,
    png_declaring,
    random_bytes,
)


@dataclass(frozen=True)
class Decoded:
    mode: str
    size: tuple[int, int]
    pixel: tuple[int, ...]


class DecodingEncoder(HashingEncoder):
    """Decodes real image bytes with encoders.images.decode_image, exactly as the open_clip,
    fashion-lite and image-only encoders do, and records what it got; the seeded catalog's
    fake images keep their word vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded: list[Decoded] = []
        self.image_batches = 0

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        self.image_batches += 1
        rows = []
        for data in images:
            if data.startswith(FAKE_IMAGE_PREFIX):
                rows.append(super().encode_images([data])[0])
                continue
            image = decode_image(data)
            pixel = image.getpixel((0, 0))
            assert isinstance(pixel, tuple)
            self.decoded.append(Decoded(image.mode, image.size, tuple(int(v) for v in pixel)))
            rows.append(self._words(hashlib.sha256(image.tobytes()).hexdigest()))
        return np.stack(rows).astype(np.float32)


class CountingDecoder:
    """The API's real image check (encoders.images.decode_image), counting the images it
    decodes: a pixel bomb must be refused from its header, before any decoding."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes, max_pixels: int) -> object:
        self.calls += 1
        return decode_image(data, max_pixels)


class DecodingWorld(World):
    def __init__(self) -> None:
        super().__init__(fetcher=SafeImageFetcher(allowed_networks=["127.0.0.1/32"]))
        self.decoder = CountingDecoder()
        self.encoder = DecodingEncoder()
        self.encoders = FakeEncoderProvider(self.encoder, self.other)
        self.search = SearchService(
            self.encoders, self.index, self.catalog, self.images, self.fetcher
        )
        self.products = CatalogService(self.encoders, self.index, self.catalog, self.images)

    def services(self) -> ApiServices:
        return dataclasses.replace(super().services(), image_decoder=self.decoder)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    """Default limits (10 MB, 40 Mpx), the real fetcher allowed to reach 127.0.0.1 only."""
    instance = await make_api(DecodingWorld())
    async with instance.client:
        yield instance


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with hostile_server() as running:
        yield running


def encoder_of(api: Api) -> DecodingEncoder:
    encoder = api.world.encoder
    assert isinstance(encoder, DecodingEncoder)
    return encoder


async def refused_everywhere(
    api: Api, server: HostileServer, data: bytes, code: str, content_type: str = "image/jpeg"
) -> None:
    before = encoder_of(api).image_batches
    outcomes = await every_channel(api.client, server, data, content_type)
    assert outcomes == expected(code)
    assert encoder_of(api).image_batches == before, "the encoder saw a refused image"


# -- broken bytes ----------------------------------------------------------------------------

WHOLE_JPEG = jpeg(size=(256, 192))


@pytest.mark.parametrize(
    "cut",
    [3, 20, 200, len(WHOLE_JPEG) // 2, len(WHOLE_JPEG) - 300],
    ids=["soi-only", "in-app0", "in-tables", "half-scan", "late-scan"],
)
async def test_truncated_jpeg(api: Api, server: HostileServer, cut: int) -> None:
    await refused_everywhere(api, server, WHOLE_JPEG[:cut], "BAD_USER_INPUT")


async def test_zero_bytes(api: Api, server: HostileServer) -> None:
    await refused_everywhere(api, server, b"", "BAD_USER_INPUT")


@pytest.mark.parametrize("size", [1, 1024, 64 * 1024])
async def test_random_bytes(api: Api, server: HostileServer, size: int) -> None:
    await refused_everywhere(api, server, random_bytes(size, seed=size), "BAD_USER_INPUT")


@pytest.mark.parametrize(
    "magic",
    [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x10\x00\x00WEBPVP8 "],
    ids=["jpeg", "png", "webp"],
)
async def test_random_bytes_behind_a_valid_signature(
    api: Api, server: HostileServer, magic: bytes
) -> None:
    """Sniffing passes, decoding must not."""
    await refused_everywhere(api, server, magic + random_bytes(4096, seed=7), "BAD_USER_INPUT")


# -- too big -----------------------------------------------------------------------------------


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) announces width x height."""
    data = bytearray(encode(photo((16, 16)), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


@pytest.mark.parametrize(
    "bomb",
    [png_declaring(50_000, 50_000), jpeg_declaring(50_000, 50_000)],
    ids=["png-50000x50000", "jpeg-50000x50000"],
)
async def test_pixel_bomb_is_refused_from_its_header(
    api: Api, server: HostileServer, bomb: bytes
) -> None:
    """2.5 billion pixels announced in a file of a few kB: refused from the header, never
    decoded, and without the process growing (decoding would need 7.5 GB)."""
    assert len(bomb) < 5_000
    world = api.world
    assert isinstance(world, DecodingWorld)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await refused_everywhere(api, server, bomb, "BAD_USER_INPUT")
    assert world.decoder.calls == 0, "a pixel bomb reached the decoder"
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kb < 200_000, f"max RSS grew by {grown_kb} kB"


async def test_pixel_bomb_message_names_the_limit(api: Api) -> None:
    response = await api.client.post(
        "/get_similar_images",
        files={"file": ("bomb.png", png_declaring(50_000, 50_000), "image/png")},
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "image is too large to decode", "code": "BAD_USER_INPUT"}
    # Below Pillow's own bomb threshold, the configured pixel limit speaks.
    response = await api.client.post(
        "/get_similar_images", files={"file": ("big.png", png_declaring(8_000, 6_000), "image/png")}
    )
    assert response.status_code == 400
    assert "8000x6000" in response.json()["detail"]
    assert "40,000,000" in response.json()["detail"]


def jpeg_with_scans(extra: int) -> bytes:
    """A progressive JPEG with ``extra`` empty copies of its last scan before the end: each
    is a few bytes, and the decoder goes over the whole image once per scan (at 2000x2000,
    10,000 of them took 4.7 s to decode; a 10 MB file holds some 900,000)."""
    buffer = io.BytesIO()
    photo((64, 48)).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    (length,) = struct.unpack(">H", data[last + 2 : last + 4])
    scan = data[last : last + 2 + length] + b"\x00"
    return data[:-2] + scan * extra + data[-2:]


async def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(
    api: Api, server: HostileServer
) -> None:
    world = api.world
    assert isinstance(world, DecodingWorld)
    await refused_everywhere(api, server, jpeg_with_scans(5_000), "BAD_USER_INPUT")
    assert world.decoder.calls == 0, "a scan bomb reached the decoder"
    response = await api.client.post(
        "/get_similar_images", files={"file": ("scans.jpg", jpeg_with_scans(5_000), "image/jpeg")}
    )
    assert "scans" in response.json()["detail"]
    # a progressive JPEG as encoders write them (about ten scans) is searched as any other
    ordinary = await every_channel(api.client, server, jpeg_with_scans(0))
    assert ordinary == expected("OK")


def twelve_megabytes() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + random_bytes(12 * 1024 * 1024, seed=12)


async def test_12_mb_image_every_way(api: Api, server: HostileServer) -> None:
    """Against the default 10 MB limit: uploads and URLs are cut at the image limit; as base64
    the body itself (16 MB) is above the request limit and refused before it is read."""
    before = encoder_of(api).image_batches
    outcomes = await every_channel(api.client, server, twelve_megabytes(), "image/png")
    assert outcomes == expected("PAYLOAD_TOO_LARGE")
    assert encoder_of(api).image_batches == before


async def test_12_mb_url_is_refused_from_its_content_length(
    api: Api, server: HostileServer
) -> None:
    """The announced length is enough: the body is not read (the message quotes the header;
    a body cut off while streaming says "larger than" instead, see test_hostile_urls.py)."""
    data = twelve_megabytes()
    server.routes["/twelve"] = Route(body=data, content_type="image/png")
    response = await api.client.post("/get_similar_images", json={"url": server.base + "/twelve"})
    assert response.status_code == 413
    assert f"is {len(data):,} bytes" in response.json()["detail"]


# -- not what they claim -------------------------------------------------------------------

SVG = b"""<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">
  <rect width="64" height="64" fill="red"/><script>alert(1)</script></svg>"""
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)>dress</body></html>"


@pytest.mark.parametrize("data", [SVG, HTML, b"\xff\xd8" + HTML], ids=["svg", "html", "ffd8-html"])
async def test_markup_served_as_image_jpeg(api: Api, server: HostileServer, data: bytes) -> None:
    """The declared type (Content-Type of the URL, of the upload) is ignored: bytes decide."""
    await refused_everywhere(api, server, data, "BAD_USER_INPUT", content_type="image/jpeg")


def animated(fmt: str) -> bytes:
    frames = [photo((32, 32), seed=i) for i in range(3)]
    params = {"save_all": True, "append_images": frames[1:], "duration": 100, "loop": 0}
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
        params["append_images"] = frames[1:]
    data = encode(frames[0], fmt, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    return data


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"], ids=["gif", "webp", "apng"])
async def test_animated_images(api: Api, server: HostileServer, fmt: str) -> None:
    """GIF is not a supported format at all; animated WebP and PNG (APNG) are refused for
    having more than one frame."""
    await refused_everywhere(api, server, animated(fmt), "BAD_USER_INPUT")
    if fmt != "GIF":
        response = await api.client.post(
            "/get_similar_images", files={"file": ("a", animated(fmt), "image/jpeg")}
        )
        assert "animated" in response.json()["detail"]


# -- awkward but valid: must work ------------------------------------------------------------

RED = (200, 30, 30)


def cmyk_jpeg() -> bytes:
    image = Image.new("RGB", (40, 30), RED).convert("CMYK")
    data = encode(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    return data


def png_16_bit_grey(value: int = 0x8000) -> bytes:
    image = Image.new("I;16", (40, 30), value)
    data = encode(image, "PNG")
    assert data[24] == 16, "bit depth in IHDR"
    return data


def png_16_bit(colour_type: int, channels: int) -> bytes:
    """16 bits per channel RGB (colour type 2) or RGBA (6), written by hand: Pillow does not
    write these, phones and scanners do."""
    width, height = 40, 30
    sample = {3: (0xC8C8, 0x1E1E, 0x1E1E), 4: (0xC8C8, 0x1E1E, 0x1E1E, 0xFFFF)}[channels]
    row = b"\x00" + struct.pack(f">{channels}H", *sample) * width
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(row * height))
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "pixel"),
    [
        (cmyk_jpeg(), RED),
        (png_16_bit_grey(), (128, 128, 128)),
        (png_16_bit(2, 3), (200, 30, 30)),
        (png_16_bit(6, 4), (200, 30, 30)),
    ],
    ids=["cmyk-jpeg", "16-bit-grey-png", "16-bit-rgb-png", "16-bit-rgba-png"],
)
async def test_cmyk_and_16_bit_images_work(
    api: Api, server: HostileServer, data: bytes, pixel: tuple[int, int, int]
) -> None:
    encoder = encoder_of(api)
    outcomes = await every_channel(api.client, server, data, "image/jpeg")
    assert outcomes == expected("OK")
    assert len(encoder.decoded) == len(CHANNELS)
    world = api.world
    assert isinstance(world, DecodingWorld)
    assert world.decoder.calls == len(CHANNELS)  # the API checks each image it accepts
    for decoded in encoder.decoded:
        assert decoded.mode == "RGB"
        assert decoded.size == (40, 30)
        assert all(abs(a - b) <= 6 for a, b in zip(decoded.pixel, pixel, strict=True)), decoded
