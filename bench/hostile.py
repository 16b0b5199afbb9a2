"""Hostile requests for the soak (issue 16): what ``python -m bench soak`` mixes into normal
traffic. Each case is one request a careless or malicious client sends; the server must answer
it with a 4xx or a coded GraphQL error (or cut the connection, for transport abuse), never a
5xx, and its memory must stay flat. Each case reports the outcome it saw ("400
BAD_USER_INPUT", "200 ok", "408", ...), so the soak's table shows which cases are refused and
which are (still) accepted.

The cases: an image of 1 x 40,000 pixels (a few hundred bytes that decode to a long strip), a
lone surrogate in a search text, a filter with 50,000 values, cursors that overflow or nest
deeply, a 10,000-character product id, 1,000 aliases, 50 multipart files that no variable
maps to, a body that stalls half-way (the server's idle timeout answers it), headers that
stall half-way (the header deadline closes the connection), and a client that disconnects in
the middle of an upload."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

Case = Callable[[], Awaitable["Outcome"]]
INTERNAL = "INTERNAL_SERVER_ERROR"
STALL_BOUND_S = 120.0
"""How long a stalled or abandoned connection is watched before the case gives up."""
SEARCH_IMAGE = """query($image: ImageInput!) { searchByImage(image: $image, topK: 3) {
  hits { product { id } } } }"""
SEARCH_TEXT = "query($t: String!, $after: String) { searchByText(text: $t, topK: 3, after: $after) { hits { rank } } }"
PRODUCTS = """query($f: ProductFilter, $after: String) { products(first: 5, filter: $f, after: $after) {
  items { id } } }"""
PRODUCT = "query($id: ID!) { product(id: $id) { id } similarProducts(productId: $id, topK: 3) { hits { rank } } }"


@dataclass(frozen=True)
class Outcome:
    label: str
    """What the server answered: status and codes ("400 BAD_USER_INPUT"), or what the
    connection did ("closed")."""
    error: str | None = None
    """Set when the answer is a failure of the server: a 5xx, an error without a code, or
    a connection neither answered nor closed."""
    socket_status: int | None = None
    """The status of an answer read from a raw socket (httpx answers are counted by the
    client's own hook)."""


def strip_png(width: int = 1, height: int = 40_000) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def cursor(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode()


BAD_CURSORS = (
    cursor('{"o": Infinity}'),
    cursor('{"o": 1e400}'),
    cursor("[" * 5000 + "]" * 5000),
    cursor('{"o": -1}'),
    "not base64 at all!",
)


def outcome_of(response: httpx.Response) -> Outcome:
    """The label of an HTTP answer, and an error if it is a server failure."""
    codes: set[str] = set()
    uncoded = False
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for error in body.get("errors") or []:
            code = (error.get("extensions") or {}).get("code")
            if code:
                codes.add(str(code))
            else:
                uncoded = True
        if isinstance(body.get("code"), str):
            codes.add(body["code"])
    label = f"{response.status_code} {','.join(sorted(codes)) or 'ok'}"
    if response.status_code >= 500:
        return Outcome(label, f"HTTP {response.status_code}: {response.text[:200]}")
    if INTERNAL in codes:  # a GraphQL error that is a server failure: a 500 in all but status
        return Outcome(label, f"{INTERNAL}: {response.text[:200]}")
    if uncoded:
        return Outcome(label, f"GraphQL error without a code: {response.text[:200]}")
    return Outcome(label)


class HostileRequests:
    """The hostile cases, sent over one client's connection (or raw sockets)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, seed: int) -> None:
        self.http = http
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.rng = random.Random(seed)
        self.strip = base64.b64encode(strip_png()).decode()
        self.cases: list[tuple[str, Case]] = [
            ("hostile: 1x40000 PNG", self.huge_dimension_png),
            ("hostile: surrogate text", self.surrogate_text),
            ("hostile: 50k-value filter", self.huge_filter),
            ("hostile: bad cursor", self.bad_cursor),
            ("hostile: 10k-char id", self.long_id),
            ("hostile: 1000 aliases", self.aliases),
            ("hostile: unmapped files", self.unmapped_files),
            ("hostile: stalled body", self.stalled_body),
            ("hostile: stalled headers", self.stalled_headers),
            ("hostile: leaves mid-upload", self.leaves_mid_upload),
        ]

    async def graphql(self, query: str, variables: dict[str, Any]) -> Outcome:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        return outcome_of(response)

    async def huge_dimension_png(self) -> Outcome:
        return await self.graphql(SEARCH_IMAGE, {"image": {"base64": self.strip}})

    async def surrogate_text(self) -> Outcome:
        # valid JSON (a \ud800 escape), not valid Unicode text
        body = json.dumps({"query": SEARCH_TEXT, "variables": {"t": "x"}}).replace(
            '"t": "x"', '"t": "red \\ud800 dress"'
        )
        response = await self.http.post(
            "/graphql", content=body, headers={"content-type": "application/json"}
        )
        return outcome_of(response)

    async def huge_filter(self) -> Outcome:
        values = [f"colour-{i}" for i in range(50_000)]
        return await self.graphql(PRODUCTS, {"f": {"tags": [{"key": "colour", "values": values}]}})

    async def bad_cursor(self) -> Outcome:
        after = self.rng.choice(BAD_CURSORS)
        if self.rng.random() < 0.5:
            return await self.graphql(PRODUCTS, {"after": after})
        return await self.graphql(SEARCH_TEXT, {"t": "red dress", "after": after})

    async def long_id(self) -> Outcome:
        return await self.graphql(PRODUCT, {"id": "x" * 10_000})

    async def aliases(self) -> Outcome:
        document = (
            "{ "
            + " ".join(f'a{i}: searchByText(text: "red") {{ tookMs }}' for i in range(1000))
            + " }"
        )
        response = await self.http.post("/graphql", json={"query": document})
        return outcome_of(response)

    async def unmapped_files(self) -> Outcome:
        operations = json.dumps({"query": SEARCH_IMAGE, "variables": {"image": {"upload": None}}})
        files = {
            f"f{i}": (f"f{i}.png", b"\x89PNG" + b"\x00" * 20_000, "image/png") for i in range(50)
        }
        response = await self.http.post(
            "/graphql", data={"operations": operations, "map": "{}"}, files=files
        )
        return outcome_of(response)

    async def stalled_body(self) -> Outcome:
        """Headers and half a body, then silence: the server should answer 408 and close."""
        body = json.dumps({"query": "{ encoders { id } }", "pad": "x" * 2000}).encode()
        head = (
            f"POST /graphql HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            async with asyncio.timeout(STALL_BOUND_S):
                answer = await reader.read()  # until the server closes the connection
        except TimeoutError:
            return Outcome("still open", f"a stalled body kept its connection {STALL_BOUND_S:g} s")
        finally:
            writer.close()
        if not answer.startswith(b"HTTP/"):
            return Outcome("closed without an answer")
        status = int(answer.split(b" ", 2)[1])
        error = f"HTTP {status} for a stalled body" if status >= 500 else None
        return Outcome(str(status), error, socket_status=status)

    async def stalled_headers(self) -> Outcome:
        """Half a request's headers, then silence: the server should close the connection."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"POST /graphql HTTP/1.1\r\nHost: {self.host}\r\nContent-Ty".encode())
            await writer.drain()
            async with asyncio.timeout(STALL_BOUND_S):
                answer = await reader.read()
        except TimeoutError:
            return Outcome(
                "still open", f"stalled headers kept their connection {STALL_BOUND_S:g} s"
            )
        finally:
            writer.close()
        if answer.startswith(b"HTTP/"):
            status = int(answer.split(b" ", 2)[1])
            error = f"HTTP {status} for stalled headers" if status >= 500 else None
            return Outcome(str(status), error, socket_status=status)
        return Outcome("closed")

    async def leaves_mid_upload(self) -> Outcome:
        """Half a multipart upload, then the client closes (the server should count a 499)."""
        boundary = "soak-leaving"
        start = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
                + json.dumps({"query": SEARCH_IMAGE, "variables": {"image": {"upload": None}}})
                + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="map"\r\n\r\n'
                + '{"0": ["variables.image.upload"]}\r\n'
                + f'--{boundary}\r\nContent-Disposition: form-data; name="0"; filename="a.png"\r\n'
                + "Content-Type: image/png\r\n\r\n"
            ).encode()
            + b"\x89PNG\r\n\x1a\n"
            + b"\x00" * 1000
        )
        head = (
            f"POST /graphql HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Content-Length: 1000000\r\n\r\n"
        ).encode()
        _, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(head + start)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        return Outcome("left")
