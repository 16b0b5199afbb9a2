"""Clients that misbehave at the transport level (issue 16), against a real uvicorn server on
a loopback socket, spoken to with raw sockets:

* 40 connections that send their headers and half a body, then nothing: each is answered
  408 and closed by the server once the (short, configured) idle timeout passes, and counted.
* A client that disconnects in the middle of a multipart upload: no ERROR log (no
  traceback), counted as 499, not 500; the server keeps answering.

The assertions are on what the sockets and /metrics show, never on elapsed time: socket
timeouts only bound how long a broken server could hang the test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from api import ApiConfig, create_app
from fashion_search.serving import HeaderDeadlineProtocol
from tests.api.helpers import World, png
from tests.uvicorn_thread import uvicorn_in_thread

pytestmark = pytest.mark.e2e

IDLE_TIMEOUT_S = 0.5
STALLED_CLIENTS = 40
SOCKET_BOUND_S = 30.0
"""How long a socket read may block before the test gives up (a hang, not a measurement)."""


class ShortHeaderDeadline(HeaderDeadlineProtocol):
    """What ``fashion-search serve`` runs, with a short header deadline."""

    header_timeout_s = IDLE_TIMEOUT_S


@dataclass
class Served:
    port: int
    base: str


@contextlib.contextmanager
def serving(idle_timeout_s: float) -> Iterator[Served]:
    world = World()
    asyncio.run(world.seed())
    app = create_app(world.services(), ApiConfig(body_idle_timeout_s=idle_timeout_s))
    # log_config=None: uvicorn's loggers propagate to the root logger, where caplog sees them.
    with uvicorn_in_thread(app, log_config=None, backlog=256, http=ShortHeaderDeadline) as port:
        yield Served(port, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving(IDLE_TIMEOUT_S) as server:
        yield server


def metric(served: Served, pattern: str) -> float:
    text = httpx.get(f"{served.base}/metrics", timeout=SOCKET_BOUND_S).text
    match = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    conn.settimeout(SOCKET_BOUND_S)
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


STALLS = r"fashion_search_body_read_timeouts_total"
GRAPHQL_408 = r'fashion_search_http_requests_total\{method="POST",route="/graphql",status="408"\}'


def test_stalled_bodies_are_cut_off_and_counted(served: Served) -> None:
    stalls_before = metric(served, STALLS)
    body = b'{"query": "{ encoders { id } }", "padding": "' + b"x" * 1000 + b'"}'
    half = body[: len(body) // 2]
    request = (
        f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    connections = []
    for _ in range(STALLED_CLIENTS):
        conn = socket.create_connection(("127.0.0.1", served.port), timeout=SOCKET_BOUND_S)
        conn.sendall(request + half)
        connections.append(conn)
    answers = []
    try:
        for conn in connections:
            answers.append(read_until_closed(conn))  # returns only once the server closed it
    finally:
        for conn in connections:
            conn.close()
    assert len(answers) == STALLED_CLIENTS
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"code": "BAD_USER_INPUT"' in answer
        assert b"no request body bytes for 0.5 s" in answer
    assert metric(served, STALLS) - stalls_before == STALLED_CLIENTS
    assert metric(served, GRAPHQL_408) >= STALLED_CLIENTS
    # the server still answers
    assert httpx.get(f"{served.base}/healthz", timeout=SOCKET_BOUND_S).status_code == 200


STEADY_IDLE_TIMEOUT_S = 3.0
STEADY_GAP_S = 0.1
"""30 times shorter than the idle timeout: a loaded machine's scheduling delays fit in."""


def test_a_slow_but_steady_body_is_not_cut_off() -> None:
    """The timeout is on silence, not on the whole body: bytes that keep coming are fine
    (the body takes longer than the timeout to arrive)."""
    body = b'{"query": "{ encoders { id } }", "pad": "' + b"x" * 10 + b'"}'
    assert len(body) * STEADY_GAP_S > STEADY_IDLE_TIMEOUT_S
    with serving(STEADY_IDLE_TIMEOUT_S) as served:
        answer = send_slowly(served, body)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b'"encoders"' in answer


def send_slowly(served: Served, body: bytes) -> bytes:
    conn = socket.create_connection(("127.0.0.1", served.port), timeout=SOCKET_BOUND_S)
    try:
        conn.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        for byte in range(len(body)):
            conn.sendall(body[byte : byte + 1])
            time.sleep(STEADY_GAP_S)  # paces the client; the test asserts the answer
        return read_until_closed(conn)
    finally:
        conn.close()


def requests_counted(served: Served, route: str, status: int) -> float:
    pattern = (
        rf'fashion_search_http_requests_total\{{method="POST",route="{route}",status="{status}"\}}'
    )
    return metric(served, pattern)


GRAPHQL_UPLOAD_START = (
    '--leaving\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
    '{"query": "query($i: ImageInput!) { searchByImage(image: $i) { encoder } }", '
    '"variables": {"i": {"upload": null}}}\r\n'
    '--leaving\r\nContent-Disposition: form-data; name="map"\r\n\r\n'
    '{"0": ["variables.i.upload"]}\r\n'
    '--leaving\r\nContent-Disposition: form-data; name="0"; filename="a.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
)
REST_UPLOAD_START = (
    '--leaving\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
)


@pytest.mark.parametrize(
    ("route", "start"),
    [("/graphql", GRAPHQL_UPLOAD_START), ("/get_similar_images", REST_UPLOAD_START)],
    ids=["graphql", "rest"],
)
def test_a_client_leaving_mid_upload_is_a_quiet_499(
    served: Served, caplog: pytest.LogCaptureFixture, route: str, start: str
) -> None:
    before_499 = requests_counted(served, route, 499)
    before_500 = requests_counted(served, route, 500)
    head = (
        f"POST {route} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: multipart/form-data; boundary=leaving\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.DEBUG):
        conn = socket.create_connection(("127.0.0.1", served.port), timeout=SOCKET_BOUND_S)
        conn.sendall(head + start.encode() + png()[:40])
        conn.close()
        deadline = time.monotonic() + SOCKET_BOUND_S
        while requests_counted(served, route, 499) == before_499 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling /metrics for the outcome; nothing is ordered by it
    assert requests_counted(served, route, 499) == before_499 + 1
    assert requests_counted(served, route, 500) == before_500
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("client disconnected" in r.getMessage() for r in caplog.records)
    assert httpx.get(f"{served.base}/healthz", timeout=SOCKET_BOUND_S).status_code == 200


@pytest.mark.parametrize(
    "sent",
    [b"", b"POS", b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: appl"],
    ids=["nothing", "half-a-method", "half-the-headers"],
)
def test_stalled_headers_are_cut_off(served: Served, sent: bytes) -> None:
    """Headers never reach the app, so uvicorn's protocol closes these (the header deadline
    of ``fashion-search serve``): 40 connections, none left open."""
    connections = []
    for _ in range(STALLED_CLIENTS):
        conn = socket.create_connection(("127.0.0.1", served.port), timeout=SOCKET_BOUND_S)
        conn.sendall(sent)
        connections.append(conn)
    try:
        answers = [read_until_closed(conn) for conn in connections]  # EOF: closed by the server
    finally:
        for conn in connections:
            conn.close()
    assert answers == [b""] * STALLED_CLIENTS
    assert httpx.get(f"{served.base}/healthz", timeout=SOCKET_BOUND_S).status_code == 200


def test_a_second_request_with_stalled_headers_is_cut_off(served: Served) -> None:
    """On a keep-alive connection the deadline starts again with each request."""
    conn = socket.create_connection(("127.0.0.1", served.port), timeout=SOCKET_BOUND_S)
    try:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = conn.recv(65536)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        rest = read_until_closed(conn)
    finally:
        conn.close()
    assert first.startswith(b"HTTP/1.1 200 ")
    assert rest == b""
