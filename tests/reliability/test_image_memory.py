"""Memory per request (issue 16): images are sized from their header before any pixel buffer
exists, long strips are refused, long-but-acceptable images are shrunk before they are padded
to a square, and one request's images share a budget (count and decoded pixels, aliases,
uploads and URLs together).

Memory is this process's own peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``
before each case): the app runs in-process, and its encoder decodes and preprocesses every
image exactly as fashion-lite does before its network (``decode_image``, crop to content,
pad to square, resize, colour histogram). Before the fix a 238-byte 1x40000 PNG took a
worker from 2.0 to 7.2 GB."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domain.errors import InvalidImage
from domain.ports import Vectors
from domain.services import CatalogService, SearchService
from encoders.backbones import MAX_CANVAS_SIDE, colour_histogram, image_array, pad_to_square
from encoders.images import MAX_ASPECT_RATIO, MAX_SIDE, decode_image
from stores.http_fetcher import SafeImageFetcher
from tests.api.helpers import Api, World, make_api
from tests.fakes import FAKE_IMAGE_PREFIX, FakeEncoderProvider, HashingEncoder
from tests.reliability.support import (
    HostileServer,
    encode,
    error_codes,
    every_channel,
    expected,
    hostile_server,
    no_error_logged,
)

__all__ = ["no_error_logged"]

MB = 1024
"""kB per MB (/proc reports kB)."""
REFUSED_BOUND_KB = 64 * MB
"""What refused requests may add to the peak RSS (a strip padded first needed 4.8 GB)."""
ACCEPTED_BOUND_KB = 256 * MB
"""What the longest accepted image may add, six requests in a row: its decoded copies
(30 MB each: the check, the encoder's decode, the crop, the thumbnail) but no 10000x10000
canvas (730 MB measured with padding before shrinking)."""


def _status_kb(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert match, field
    return int(match.group(1))


class PeakRss:
    """The growth of this process's peak RSS over a block of work."""

    def __enter__(self) -> PeakRss:
        Path("/proc/self/clear_refs").write_text("5")  # peak := current
        self.start_kb = _status_kb("VmRSS")
        self.grown_kb = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.grown_kb = _status_kb("VmHWM") - self.start_kb


class PreprocessingEncoder(HashingEncoder):
    """Does with real image bytes what fashion-lite does before its network."""

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        self.calls += 1
        rows = []
        for data in images:
            if data.startswith(FAKE_IMAGE_PREFIX):
                rows.append(self._words(data[len(FAKE_IMAGE_PREFIX) :].decode()))
                continue
            image = decode_image(data)
            pixels = image_array(image, 192, crop=True)
            colour_histogram(image)
            rows.append(self._words(hashlib.sha256(pixels.tobytes()).hexdigest()))
        return np.stack(rows).astype(np.float32)


class PreprocessingWorld(World):
    def __init__(self) -> None:
        super().__init__(fetcher=SafeImageFetcher(allowed_networks=["127.0.0.1/32"]))
        self.encoder = PreprocessingEncoder()
        self.encoders = FakeEncoderProvider(self.encoder, self.other)
        self.search = SearchService(
            self.encoders, self.index, self.catalog, self.images, self.fetcher
        )
        self.products = CatalogService(self.encoders, self.index, self.catalog, self.images)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    instance = await make_api(PreprocessingWorld(), warm_up_encoder=False)
    async with instance.client:
        yield instance


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with hostile_server() as running:
        yield running


def strip(width: int, height: int, fmt: str) -> bytes:
    """A real image of width x height (a few hundred bytes for a strip)."""
    image = Image.new("RGB", (width, height), (180, 40, 40))
    return encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))


STRIPS = {
    "png-1x40000": strip(1, 40_000, "PNG"),
    "png-1x100000": strip(1, 100_000, "PNG"),
    "webp-16383x1": strip(16_383, 1, "WEBP"),
}


@pytest.mark.parametrize("data", STRIPS.values(), ids=STRIPS.keys())
async def test_strips_are_refused_from_their_header(
    api: Api, server: HostileServer, data: bytes
) -> None:
    """Every way in: BAD_USER_INPUT naming the limit, the encoder never asked, no growth."""
    assert len(data) < 2_000
    calls = api.world.encoder.calls
    with PeakRss() as peak:
        outcomes = await every_channel(api.client, server, data, "image/png")
    assert outcomes == expected("BAD_USER_INPUT")
    assert api.world.encoder.calls == calls
    assert peak.grown_kb < REFUSED_BOUND_KB, f"peak RSS grew by {peak.grown_kb} kB"
    response = await api.client.post("/get_similar_images", files={"file": ("s", data, "x/y")})
    detail = response.json()["detail"]
    assert f"{MAX_SIDE:,} pixels a side" in detail or f"{MAX_ASPECT_RATIO:g}:1" in detail


FOUR_ALIASES = """query($a: ImageInput!, $b: ImageInput!, $c: ImageInput!, $d: ImageInput!) {
  a: searchByImage(image: $a) { hits { rank } }  b: searchByImage(image: $b) { hits { rank } }
  c: searchByImage(image: $c) { hits { rank } }  d: searchByImage(image: $d) { hits { rank } } }"""


@pytest.mark.parametrize("data", STRIPS.values(), ids=STRIPS.keys())
async def test_four_aliases_of_a_strip(api: Api, data: bytes) -> None:
    """One 3.3 KB request with 4 aliases of such an image added 3.1 GB."""
    image = {"base64": base64.b64encode(data).decode()}
    calls = api.world.encoder.calls
    with PeakRss() as peak:
        result = await api.gql(FOUR_ALIASES, dict.fromkeys("abcd", image))
    assert set(error_codes(result)) == {"BAD_USER_INPUT"}  # non-null fields: data is null
    assert result["data"] is None
    assert api.world.encoder.calls == calls
    assert peak.grown_kb < REFUSED_BOUND_KB, f"peak RSS grew by {peak.grown_kb} kB"


async def test_the_longest_accepted_image_is_shrunk_before_padding(
    api: Api, server: HostileServer
) -> None:
    """10000x1000 (the longest side and the widest ratio accepted) decodes to 30 MB; padded
    to a square first it would be a 300 MB canvas. Shrunk first, the request stays bounded,
    every way in, and finds products."""
    data = strip(MAX_SIDE, int(MAX_SIDE / MAX_ASPECT_RATIO), "PNG")
    with PeakRss() as peak:
        outcomes = await every_channel(api.client, server, data, "image/png")
    assert outcomes == expected("OK")
    assert peak.grown_kb < ACCEPTED_BOUND_KB, f"peak RSS grew by {peak.grown_kb} kB"


def test_padding_shrinks_long_images_first_and_leaves_the_rest_alone() -> None:
    long = Image.new("RGB", (MAX_SIDE, 1_000), (10, 20, 30))
    padded = pad_to_square(long)
    assert padded.size[0] == padded.size[1] <= MAX_CANVAS_SIDE
    usual = Image.new("RGB", (1_200, 1_600), (10, 20, 30))
    usual.paste((200, 0, 0), (0, 0, 600, 800))
    square = pad_to_square(usual)
    assert square.size == (1_600, 1_600)
    assert square.crop((200, 0, 1_400, 1_600)).tobytes() == usual.tobytes()


# -- the per-request budget ------------------------------------------------------------------

FIVE_ALIASES = FOUR_ALIASES.replace("$d: ImageInput!)", "$d: ImageInput!, $e: ImageInput!)")
FIVE_ALIASES = FIVE_ALIASES.replace("} } }", "} }  e: searchByImage(image: $e) { hits { rank } } }")


def small_png(seed: int) -> bytes:
    return strip(40 + seed, 30, "PNG")


async def test_a_request_may_send_four_images(api: Api) -> None:
    images = {k: {"base64": base64.b64encode(small_png(i)).decode()} for i, k in enumerate("abcde")}
    result = await api.gql(FIVE_ALIASES, images)
    assert error_codes(result) == ["BAD_USER_INPUT"]
    assert "at most 4 images" in result["errors"][0]["message"]
    four = await api.gql(FOUR_ALIASES, {k: images[k] for k in "abcd"})
    assert "errors" not in four


async def test_a_request_may_decode_one_full_size_image() -> None:
    """Two 6000x6000 images (36 Mpx each, each under the 40 Mpx image limit): the second
    would take the request past its 40 Mpx budget."""
    instance = await make_api(PreprocessingWorld(), warm_up_encoder=False)
    big = {"base64": base64.b64encode(strip(6_000, 6_000, "PNG")).decode()}
    query = """query($a: ImageInput!, $b: ImageInput!) {
      a: searchByImage(image: $a) { hits { rank } } b: searchByImage(image: $b) { hits { rank } } }"""
    async with instance.client:
        result = await instance.gql(query, {"a": big, "b": big})
    assert error_codes(result) == ["PAYLOAD_TOO_LARGE"]
    assert "40,000,000 pixels together" in result["errors"][0]["message"]


@pytest.mark.parametrize("size", [(11, 1), (1, 11), (5_000, 400)])
def test_an_elongated_image_is_refused_in_words_that_fit_its_shape(
    size: tuple[int, int],
) -> None:
    """Wide or tall, the message says which limit (long side to short side), not "narrower"."""
    with pytest.raises(InvalidImage) as refused:
        decode_image(strip(*size, "PNG"))
    message = str(refused.value)
    assert f"{size[0]}x{size[1]}" in message
    assert f"{MAX_ASPECT_RATIO:g}:1 (long side to short side)" in message
    assert "narrower" not in message
