"""Hostile image URLs (issue 8, item 2) through the API, GraphQL and REST alike, with the
real SafeImageFetcher in its default configuration unless a case needs a loopback server to
be reachable. Where a private target exists it is a live loopback server, and the test
asserts it was never contacted; unroutable targets (10.0.0.1, 169.254.169.254) go through a
recording transport that must never be used.

tests/api/test_http_fetcher.py tests the fetcher's rules one by one;
tests/api/test_limits_and_errors.py sends a few refused URLs through the API. These add the
cases issue 8 names through both APIs, against live servers, with the deadline that fired and byte counts."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from fashion_search.settings import Settings
from stores.http_fetcher import SafeImageFetcher
from tests.api.helpers import Api, World, make_api, png
from tests.reliability.support import (
    IMAGE_QUERY,
    HostileServer,
    Route,
    graphql_outcome,
    hostile_server,
    rest_outcome,
)

IMAGE = png((10, 200, 90))


class RecordingTransport(httpx.AsyncBaseTransport):
    """Stands in for the network: records every request it is asked to send."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, content=IMAGE)


async def api_with(fetcher: SafeImageFetcher) -> Api:
    return await make_api(World(fetcher=fetcher))


@pytest.fixture
async def default_api() -> AsyncIterator[Api]:
    """The fetcher as the app builds it from default settings."""
    api = await api_with(SafeImageFetcher.from_settings(Settings()))
    async with api.client:
        yield api


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with hostile_server("127.0.0.1") as running:
        running.routes["/img.png"] = Route(IMAGE, "image/png")
        yield running


@pytest.fixture
def server_v6() -> Iterator[HostileServer]:
    with hostile_server("::1") as running:
        running.routes["/img.png"] = Route(IMAGE, "image/png")
        yield running


@pytest.fixture
def private_server() -> Iterator[HostileServer]:
    """On 127.0.0.2: 'private' even where 127.0.0.1 is allowed for the test server."""
    with hostile_server("127.0.0.2") as running:
        running.routes["/img.png"] = Route(IMAGE, "image/png")
        yield running


async def both(api: Api, url: str) -> tuple[str, str]:
    return (
        await graphql_outcome(api.client, {"url": url}),
        await rest_outcome(api.client, {"url": url}),
    )


REFUSED = ("BAD_USER_INPUT", "400 BAD_USER_INPUT")


# -- private targets -----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_urls_are_refused_without_contact(
    default_api: Api, server: HostileServer, host: str
) -> None:
    assert await both(default_api, f"http://{host}:{server.port}/img.png") == REFUSED
    assert server.requests == []


async def test_ipv6_loopback_url_is_refused_without_contact(
    default_api: Api, server_v6: HostileServer
) -> None:
    assert await both(default_api, f"{server_v6.base}/img.png") == REFUSED
    assert server_v6.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/img.png",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://169.254.169.254:80/computeMetadata/v1/",
    ],
)
async def test_private_and_metadata_urls_are_refused_before_connecting(url: str) -> None:
    transport = RecordingTransport()
    api = await api_with(SafeImageFetcher(transport=transport))
    async with api.client:
        assert await both(api, url) == REFUSED
    assert transport.requests == []


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names under .shop.test resolve to the listed addresses through the system resolver's
    entry point (socket.getaddrinfo, which asyncio's getaddrinfo calls): the fetcher's real
    resolver runs, no DNS server is asked. Returns the table; lookups are recorded in it
    under "asked"."""
    table: dict[str, list[str]] = {"asked": []}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(".shop.test"):
            return real(host, port, *args, **kwargs)
        table["asked"].append(name)
        results = []
        for address in table[name]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr: tuple[Any, ...] = (
                (address, int(port or 0), 0, 0) if ":" in address else (address, int(port or 0))
            )
            results.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return results

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.7"],
        ["127.0.0.1"],
        ["169.254.169.254"],
        ["fd00::1"],
        ["::ffff:10.0.0.1"],
        ["93.184.216.34", "192.168.1.20"],
    ],
    ids=["rfc1918", "loopback", "metadata", "ula-v6", "v4-mapped-v6", "public-and-private"],
)
async def test_hostname_resolving_to_a_private_address(
    default_api: Api, server: HostileServer, fake_dns: dict[str, list[str]], addresses: list[str]
) -> None:
    fake_dns["catalog.shop.test"] = addresses
    url = f"http://catalog.shop.test:{server.port}/img.png"
    assert await both(default_api, url) == REFUSED
    assert fake_dns["asked"] == ["catalog.shop.test"] * 2  # resolved once per request
    assert server.requests == []


@pytest.mark.parametrize(
    "template",
    [
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "FILE:///proc/self/environ",
        "gopher://127.0.0.1:{port}/_GET%20/img.png%20HTTP/1.0%0D%0A%0D%0A",
        "dict://127.0.0.1:{port}/info",
        "ftp://127.0.0.1:{port}/img.png",
    ],
)
async def test_non_http_schemes(default_api: Api, server: HostileServer, template: str) -> None:
    assert await both(default_api, template.format(port=server.port)) == REFUSED
    assert server.requests == []


# -- redirects -------------------------------------------------------------------------------


@pytest.fixture
async def redirecting_api() -> AsyncIterator[Api]:
    """127.0.0.1 is allowed (the open redirector lives there); everything else holds."""
    api = await api_with(SafeImageFetcher(allowed_networks=["127.0.0.1/32"]))
    async with api.client:
        yield api


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_open_redirect_to_a_private_server(
    redirecting_api: Api, server: HostileServer, private_server: HostileServer, status: int
) -> None:
    target = f"{private_server.base}/img.png"
    url = f"{server.base}/redirect?status={status}&to={target}"
    assert await both(redirecting_api, url) == REFUSED
    assert server.requests == ["/redirect", "/redirect"]
    assert private_server.requests == []


async def test_open_redirect_chains_and_other_targets(
    redirecting_api: Api,
    server: HostileServer,
    server_v6: HostileServer,
    fake_dns: dict[str, list[str]],
) -> None:
    fake_dns["cdn.shop.test"] = ["127.0.0.2"]
    targets = [
        f"{server_v6.base}/img.png",
        "http://10.0.0.1/img.png",
        f"http://cdn.shop.test:{server_v6.port}/img.png",
        "file:///etc/passwd",
        # two hops: the first redirect stays on the allowed server, the second leaves it
        f"{server.base}/redirect?to=http://10.0.0.1/img.png",
    ]
    for target in targets:
        url = f"{server.base}/redirect?to={target}"
        assert await both(redirecting_api, url) == REFUSED, target
    assert server_v6.requests == []
    # And a redirect that stays on the allowed host is followed.
    url = f"{server.base}/redirect?to=/img.png"
    assert await both(redirecting_api, url) == ("OK", "OK")


# -- slow and huge answers ---------------------------------------------------------------------


async def timed(coroutine: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    outcome = await coroutine
    return outcome, time.perf_counter() - started


async def graphql_error(client: httpx.AsyncClient, url: str) -> tuple[str, str]:
    """The code and message of searchByImage's error for an image URL."""
    body = {"query": IMAGE_QUERY, "variables": {"image": {"url": url}}}
    (error,) = (await client.post("/graphql", json=body)).json()["errors"]
    return error["extensions"]["code"], error["message"]


async def rest_error(client: httpx.AsyncClient, url: str) -> tuple[str, str]:
    """``<status> <code>`` and the detail of /get_similar_images' error for an image URL."""
    response = await client.post("/get_similar_images", json={"url": url})
    body = response.json()
    return f"{response.status_code} {body['code']}", body["detail"]


@pytest.mark.parametrize("path", ["/drip?interval=0.2&bytes=500", "/drip-headers?interval=0.2"])
async def test_slow_drip_times_out_within_the_configured_timeout(
    server: HostileServer, path: str
) -> None:
    """A byte every 0.2 s never trips the 0.5 s read timeout; the 1.5 s total does (the
    message says which deadline fired; the drip alone would last 13 s to 100 s)."""
    fetcher = SafeImageFetcher(
        allowed_networks=["127.0.0.1/32"],
        connect_timeout_s=0.5,
        read_timeout_s=0.5,
        total_timeout_s=1.5,
    )
    api = await api_with(fetcher)
    url = server.base + path
    async with api.client:
        (graphql, graphql_s), (rest, rest_s) = await asyncio.gather(
            timed(graphql_error(api.client, url)), timed(rest_error(api.client, url))
        )
    total = "fetching the image URL timed out after 1.5 s in total"
    assert graphql == ("UPSTREAM_UNAVAILABLE", total)
    assert rest == ("503 UPSTREAM_UNAVAILABLE", total)
    for elapsed in (graphql_s, rest_s):
        assert elapsed >= 1.4, elapsed  # not cut short: the deadline waits by design
    if path.startswith("/drip?"):
        assert server.sent["/drip"] >= 4, "the server was dripping the whole time"


async def test_slow_drip_times_out_within_the_timeout_from_settings(
    server: HostileServer,
) -> None:
    """The timeouts the app gets from settings (connect + 2 x read = 1.0 s in total here)."""
    settings = Settings(url_connect_timeout_s=0.2, url_read_timeout_s=0.4, allow_private_urls=True)
    api = await api_with(SafeImageFetcher.from_settings(settings))
    async with api.client:
        outcome, elapsed = await timed(
            rest_error(api.client, server.base + "/drip?interval=0.3&bytes=500")
        )
    assert outcome == (
        "503 UPSTREAM_UNAVAILABLE",
        "fetching the image URL timed out after 1 s in total",
    )
    assert elapsed >= 0.9, elapsed  # not cut short: the deadline waits by design


async def settled(server: HostileServer, path: str) -> int:
    """Bytes the server managed to send on ``path``, once it has stopped sending."""
    previous = -1
    while previous != server.sent.get(path, 0):
        previous = server.sent.get(path, 0)
        await asyncio.sleep(0.3)
    return previous


async def test_a_gigabyte_stream_is_cut_at_the_size_cap(server: HostileServer) -> None:
    """1 GB generated on the fly, no Content-Length: reading stops just past the 10 MB cap
    and the connection is dropped, so the server stops too."""
    api = await api_with(SafeImageFetcher(allowed_networks=["127.0.0.1/32"]))
    url = server.base + "/gigabyte"
    async with api.client:
        assert await graphql_outcome(api.client, {"url": url}) == "PAYLOAD_TOO_LARGE"
        response = await api.client.post("/get_similar_images", json={"url": url})
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert "larger than the limit of 10,485,760 bytes" in response.json()["detail"]
    # Reading stopped at the cap and the connection was dropped: the server sent a few MB.
    sent = await settled(server, "/gigabyte")
    assert sent < 2 * 32 * 1024**2, f"{sent:,} bytes sent for two requests"
    assert sent < HostileServer.GIGABYTE // 10


async def test_a_gigabyte_announced_is_refused_from_its_content_length(
    server: HostileServer,
) -> None:
    api = await api_with(SafeImageFetcher(allowed_networks=["127.0.0.1/32"]))
    url = server.base + "/gigabyte?declare=1"
    async with api.client:
        assert await graphql_outcome(api.client, {"url": url}) == "PAYLOAD_TOO_LARGE"
        response = await api.client.post("/get_similar_images", json={"url": url})
    assert response.status_code == 413
    assert "is 1,073,741,824 bytes" in response.json()["detail"]
    sent = await settled(server, "/gigabyte")
    assert sent < 2 * 32 * 1024**2, f"{sent:,} bytes sent for two requests"
