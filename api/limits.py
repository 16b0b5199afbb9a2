"""Limits on what clients send: request body size (checked before the body is read), and the
images themselves (bytes, pixels, format sniffed from the bytes) whichever way they arrive:
multipart upload, base64 or URL."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.config import DEFAULT_BODY_IDLE_TIMEOUT_S, ApiConfig, ImageDecoder, ImageProbe
from api.errors import code_for_status
from domain.errors import BadInput, InvalidImage, PayloadTooLarge
from domain.images import sniff_image_type
from domain.ports import ImageFetcher

_READ_CHUNK = 256 * 1024
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without (or with a lying) Content-Length grows past
    the limit; the middleware turns it into a 413."""


class BodyStalled(Exception):
    """Raised from ``receive`` when the client sent nothing of its body for the idle timeout;
    the middleware turns it into a 408 and closes the connection."""


class BodyLimitsMiddleware:
    """Guards reading the request body. 413 for bodies above ``max_bytes``: at once from
    Content-Length, or as soon as a streamed body crosses the limit (the rest is never read).
    408, with the connection closed, when the body stalls: no bytes for ``idle_timeout_s``
    while the app waits for more (a slow-loris client holding a worker's connection and
    buffers); ``on_stall`` counts it. Once the body is complete, ``receive`` is passed
    through untouched (apps wait on it for a disconnect)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.on_stall = on_stall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await _reject(scope, send, 413, self._too_large_detail())
                    return
        received = 0
        started = body_done = False
        failure: BodyTooLarge | BodyStalled | None = None
        answered = False

        async def answer(exc: BodyTooLarge | BodyStalled) -> None:
            nonlocal answered
            if not answered:  # once per request
                answered = True
                await self._answer(scope, send, exc)

        async def guarded_receive() -> Message:
            nonlocal received, body_done, failure
            if failure is not None:
                raise failure
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                failure = BodyStalled()
                if self.on_stall is not None:
                    self.on_stall()
                raise failure from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    failure = BodyTooLarge()
                    raise failure
            return message

        async def guarded_send(message: Message) -> None:
            # Frameworks may turn the receive error into a response of their own (FastAPI
            # answers 400 "error parsing the body"): once the body failed, our answer wins.
            nonlocal started
            if failure is not None:
                if not started:
                    await answer(failure)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except (BodyTooLarge, BodyStalled) as exc:
            if started:
                raise
            await answer(exc)

    async def _answer(self, scope: Scope, send: Send, failure: Exception) -> None:
        if isinstance(failure, BodyStalled):
            detail = f"no request body bytes for {self.idle_timeout_s:g} s"
            await _reject(scope, send, 408, detail)
        else:
            await _reject(scope, send, 413, self._too_large_detail())

    def _too_large_detail(self) -> str:
        return f"request body larger than {self.max_bytes:,} bytes"


async def _reject(scope: Scope, send: Send, status: int, detail: str) -> None:
    """A JSON error (GraphQL-shaped on /graphql) that closes the connection: the rest of the
    body is never read."""
    code = code_for_status(status)
    body: dict[str, object]
    if str(scope.get("path", "")).startswith("/graphql"):
        body = {"errors": [{"message": detail, "extensions": {"code": code}}]}
    else:
        body = {"detail": detail, "code": code}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@runtime_checkable
class AsyncReadable(Protocol):
    """What an uploaded file looks like (starlette's UploadFile)."""

    async def read(self, size: int = -1) -> bytes: ...


@dataclass
class ImageBudget:
    """What one request may still send, name or fetch: images (GraphQL aliases, uploads and
    URLs together), their decoded pixels, and URL fetches. Charged on the event loop before
    any decoding or fetching starts, so aliases resolved concurrently cannot overdraw it."""

    max_images: int
    max_pixels: int
    max_url_fetches: int
    url_fetches_allowed: bool = True
    """False for GET requests: a URL-fetching query in a link or an <img> must not run."""
    images: int = 0
    pixels: int = 0
    url_fetches: int = 0

    @classmethod
    def for_request(
        cls, config: ApiConfig, method: str = "POST", fetched_by_us: bool = False
    ) -> ImageBudget:
        """The budget of one request; a GET, or a request this service's own image fetcher
        makes (SELF_FETCH_HEADER), may fetch no URL."""
        return cls(
            max_images=config.max_images_per_request,
            max_pixels=config.max_request_pixels,
            max_url_fetches=0 if fetched_by_us else config.max_url_fetches_per_request,
            url_fetches_allowed=method.upper() != "GET",
        )

    def take_image(self) -> None:
        if self.images >= self.max_images:
            raise BadInput(f"one request may send at most {self.max_images} images")
        self.images += 1

    def take_pixels(self, width: int, height: int) -> None:
        if self.pixels + width * height > self.max_pixels:
            raise PayloadTooLarge(
                f"the images of this request would decode to more than {self.max_pixels:,}"
                " pixels together"
            )
        self.pixels += width * height

    def take_url_fetch(self) -> None:
        if not self.url_fetches_allowed:
            raise BadInput("image URLs are fetched for POST requests only")
        if self.max_url_fetches == 0:
            raise BadInput("this request may not have image URLs fetched")
        if self.url_fetches >= self.max_url_fetches:
            raise BadInput(f"one request may fetch at most {self.max_url_fetches} image URLs")
        self.url_fetches += 1


class ImageReader:
    """Turns an upload, a base64 string or a URL into checked image bytes: at most
    ``max_bytes``, sniffed as JPEG, PNG or WebP, within the decoder's size limits (read from
    the header first, when a probe is given), decodable, and within the request's budget."""

    def __init__(
        self,
        max_bytes: int,
        max_pixels: int,
        fetcher: ImageFetcher | None,
        decoder: ImageDecoder,
        probe: ImageProbe | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._fetcher = fetcher
        self._decode = decoder
        self._probe = probe

    def _too_large(self, size: int | None = None) -> PayloadTooLarge:
        what = f"the image is {size:,} bytes" if size is not None else "the image is too large"
        return PayloadTooLarge(f"{what}; the limit is {self.max_bytes:,} bytes")

    async def from_upload(self, upload: object, budget: ImageBudget) -> bytes:
        if not isinstance(upload, AsyncReadable):
            raise BadInput("the image upload must be a file sent as multipart form data")
        declared = getattr(upload, "size", None)
        if isinstance(declared, int) and declared > self.max_bytes:
            raise self._too_large(declared)
        chunks: list[bytes] = []
        size = 0
        while chunk := await upload.read(_READ_CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return await self.check(b"".join(chunks), budget)

    async def from_base64(self, text: str, budget: ImageBudget) -> bytes:
        cleaned = _DATA_URL.sub("", text.strip(), count=1)
        cleaned = re.sub(r"\s+", "", cleaned)
        if not cleaned:
            raise BadInput("the base64 image is empty")
        if len(cleaned) * 3 // 4 - 2 > self.max_bytes:
            raise self._too_large(len(cleaned) * 3 // 4)
        # Standard or URL-safe alphabet, padding optional.
        cleaned = cleaned.replace("-", "+").replace("_", "/")
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            data = base64.b64decode(cleaned, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("the image is not valid base64") from None
        return await self.check(data, budget)

    async def from_url(self, url: str, budget: ImageBudget) -> bytes:
        if self._fetcher is None:
            raise BadInput("searching by image URL is not enabled on this server")
        budget.take_url_fetch()
        return await self.check(await self._fetcher.fetch(url), budget)

    async def check(self, data: bytes, budget: ImageBudget) -> bytes:
        if not data:
            raise BadInput("the image is empty")
        if len(data) > self.max_bytes:
            raise self._too_large(len(data))
        if sniff_image_type(data) is None:
            raise InvalidImage("the file is not a JPEG, PNG or WebP image")
        budget.take_image()
        if self._probe is not None:
            budget.take_pixels(*self._probe(data, self.max_pixels))
            await asyncio.to_thread(self._decode, data, self.max_pixels)
        else:
            decoded = await asyncio.to_thread(self._decode, data, self.max_pixels)
            size = getattr(decoded, "size", None)
            if isinstance(size, tuple) and len(size) == 2:
                budget.take_pixels(int(size[0]), int(size[1]))
        return data
