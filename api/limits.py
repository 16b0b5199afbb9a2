"""Limits on what clients send: request body size (checked before the body is read), and the
images themselves (bytes, pixels, format sniffed from the bytes) whichever way they arrive:
multipart upload, base64 or URL."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import Protocol, runtime_checkable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.config import ImageDecoder
from api.errors import PAYLOAD_TOO_LARGE
from domain.errors import BadInput, InvalidImage, PayloadTooLarge
from domain.images import sniff_image_type
from domain.ports import ImageFetcher

_READ_CHUNK = 256 * 1024
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without (or with a lying) Content-Length grows past
    the limit; the middleware turns it into a 413."""


class BodySizeLimitMiddleware:
    """413 for bodies above ``max_bytes``: at once from Content-Length, or as soon as a
    streamed body crosses the limit (the rest is never read)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
                    await self._reject(scope, send)
                    return
        received = 0
        started = exceeded = rejected = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Frameworks may turn the receive error into a response of their own (FastAPI
            # answers 400 "error parsing the body"): once the limit is crossed, the 413 wins.
            nonlocal started, rejected
            if exceeded:
                if not started and not rejected:
                    rejected = True
                    await self._reject(scope, send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if started:
                raise
            if not rejected:
                await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        detail = f"request body larger than {self.max_bytes:,} bytes"
        body: dict[str, object]
        if str(scope.get("path", "")).startswith("/graphql"):
            body = {"errors": [{"message": detail, "extensions": {"code": PAYLOAD_TOO_LARGE}}]}
        else:
            body = {"detail": detail, "code": PAYLOAD_TOO_LARGE}
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
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


class ImageReader:
    """Turns an upload, a base64 string or a URL into checked image bytes: at most
    ``max_bytes``, sniffed as JPEG, PNG or WebP, decodable, at most ``max_pixels``."""

    def __init__(
        self,
        max_bytes: int,
        max_pixels: int,
        fetcher: ImageFetcher | None,
        decoder: ImageDecoder,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._fetcher = fetcher
        self._decode = decoder

    def _too_large(self, size: int | None = None) -> PayloadTooLarge:
        what = f"the image is {size:,} bytes" if size is not None else "the image is too large"
        return PayloadTooLarge(f"{what}; the limit is {self.max_bytes:,} bytes")

    async def from_upload(self, upload: object) -> bytes:
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
        return await self.check(b"".join(chunks))

    async def from_base64(self, text: str) -> bytes:
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
        return await self.check(data)

    async def from_url(self, url: str) -> bytes:
        if self._fetcher is None:
            raise BadInput("searching by image URL is not enabled on this server")
        return await self.check(await self._fetcher.fetch(url))

    async def check(self, data: bytes) -> bytes:
        if not data:
            raise BadInput("the image is empty")
        if len(data) > self.max_bytes:
            raise self._too_large(len(data))
        if sniff_image_type(data) is None:
            raise InvalidImage("the file is not a JPEG, PNG or WebP image")
        await asyncio.to_thread(self._decode, data, self.max_pixels)
        return data
