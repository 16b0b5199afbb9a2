"""Server-side requests (issue 16): an image URL that redirects to the service's own
``GET /graphql?query=searchByImage(url: ...)`` made it call itself, recursively, as deep as
the redirector allowed; one request with 15 aliases pulled 142 MB from a third party.

Now the fetcher refuses the service's own listening sockets (recorded from the requests it
serves) and its public hostname, on every hop; URL-fetching queries never run over GET nor
for a request the service's own fetcher makes; one request may fetch one URL; and a process
fetches at most ``max_concurrent`` URLs at once. The served app is a real uvicorn server on
loopback, the redirector a real HTTP server (tests/api/httpserver.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from api import ApiConfig, create_app
from domain.errors import UpstreamUnavailable, UrlRejected
from domain.images import SELF_FETCH_HEADER
from stores.http_fetcher import IPAddress, SafeImageFetcher
from tests.api.helpers import World, png
from tests.api.httpserver import Server, serve
from tests.reliability.support import error_codes, no_error_logged
from tests.uvicorn_thread import uvicorn_in_thread

__all__ = ["no_error_logged"]

IMAGE = png((200, 30, 30))
SEARCH = """query($url: String!) {
  searchByImage(image: {url: $url}, topK: 2) { hits { product { id } } } }"""


@dataclass
class Served:
    base: str
    port: int
    redirector: Server
    own_endpoints: set[tuple[str, int]]
    graphql_requests: list[str]


class CountingApp:
    """Records the method and query string of every /graphql request the app gets."""

    def __init__(self, app: Any, seen: list[str]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/graphql":
            self.seen.append(f"{scope['method']} {scope['query_string'].decode()}")
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The scenario of the issue: private addresses reachable (here: loopback, where both the
    redirector and the service listen), the service's own sockets recorded as in wiring."""
    own: set[tuple[str, int]] = set()
    fetcher = SafeImageFetcher(allowed_networks=["127.0.0.1/32"], own_endpoints=own)
    world = World(fetcher=fetcher)
    asyncio.run(world.seed())
    services = dataclasses.replace(world.services(), own_endpoints=own)
    seen: list[str] = []
    app = CountingApp(create_app(services, ApiConfig(warm_up_encoder=False)), seen)
    with serve(image=IMAGE) as redirector, uvicorn_in_thread(app, log_level="warning") as port:
        yield Served(f"http://127.0.0.1:{port}", port, redirector, own, seen)


def post(served: Served, url: str, **headers: str) -> dict[str, Any]:
    response = httpx.post(
        f"{served.base}/graphql",
        json={"query": SEARCH, "variables": {"url": url}},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def self_search_url(served: Served, image_url: str) -> str:
    """The service's own GET /graphql, searching by ``image_url``."""
    query = "{ searchByImage(image: {url: " + json.dumps(image_url) + "}) { hits { rank } } }"
    return f"{served.base}/graphql?query={quote(query)}"


def test_a_redirect_to_the_service_itself_is_refused(served: Served) -> None:
    redirect = f"{served.redirector.base}/redirect?to="
    # The redirector sends the service to itself, asking it to fetch the redirector again.
    loop_url = redirect + quote(self_search_url(served, redirect + "x"), safe="")
    served.graphql_requests.clear()
    served.redirector.requests.clear()
    result = post(served, loop_url)
    assert error_codes(result) == ["BAD_USER_INPUT"], result
    assert "this service itself" in result["errors"][0]["message"]
    assert served.graphql_requests == ["POST "], "the service called itself"
    assert [path for path, _ in served.redirector.requests] == ["/redirect"]
    assert ("127.0.0.1", served.port) in served.own_endpoints


def test_a_direct_url_to_the_service_is_refused(served: Served) -> None:
    served.graphql_requests.clear()
    for url in (
        self_search_url(served, served.redirector.base + "/img.png"),
        f"http://localhost:{served.port}/images/x.png",
        f"http://[::ffff:127.0.0.1]:{served.port}/graphql",
    ):
        result = post(served, url)
        assert error_codes(result) == ["BAD_USER_INPUT"], (url, result)
    assert served.graphql_requests == ["POST "] * 3


def test_other_loopback_servers_are_still_fetched(served: Served) -> None:
    """Private addresses allowed: the redirector (another port) works, directly and after a
    redirect."""
    assert "errors" not in post(served, served.redirector.base + "/img.png")
    target = quote(served.redirector.base + "/img.png", safe="")
    assert "errors" not in post(served, f"{served.redirector.base}/redirect?to={target}")


def test_url_searches_never_run_over_get(served: Served) -> None:
    served.redirector.requests.clear()
    response = httpx.get(self_search_url(served, served.redirector.base + "/img.png"))
    result = response.json()
    assert error_codes(result) == ["BAD_USER_INPUT"], result
    assert "POST requests only" in result["errors"][0]["message"]
    assert served.redirector.requests == [], "a GET request fetched a URL"


def test_a_request_from_our_own_fetcher_fetches_nothing(served: Served) -> None:
    """Whatever address it came through (a proxy, another instance, a public hostname that
    resolves elsewhere): the request the fetcher makes carries SELF_FETCH_HEADER."""
    served.redirector.requests.clear()
    result = post(served, served.redirector.base + "/img.png", **{SELF_FETCH_HEADER: "1"})
    assert error_codes(result) == ["BAD_USER_INPUT"], result
    assert served.redirector.requests == []


def test_one_url_fetch_per_request(served: Served) -> None:
    """15 aliases pulled 142 MB from a third party; now one request fetches one URL."""
    aliases = " ".join(
        f'a{i}: searchByImage(image: {{url: "{served.redirector.base}/img.png?{i}"}})'
        " { hits { rank } }"
        for i in range(15)
    )
    served.redirector.requests.clear()
    response = httpx.post(f"{served.base}/graphql", json={"query": "{ " + aliases + " }"})
    result = response.json()
    assert set(error_codes(result)) == {"BAD_USER_INPUT"}, json.dumps(result)[:500]
    assert any("at most 1 image URLs" in e["message"] for e in result["errors"])
    assert len(served.redirector.requests) <= 1


async def test_concurrent_fetches_are_capped() -> None:
    """Past ``max_concurrent`` fetches in flight, a fetch is refused (503) instead of queued;
    ordered by events: the first fetch is held inside the transport."""
    started, release = asyncio.Event(), asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        started.set()
        await release.wait()
        return httpx.Response(200, content=IMAGE)

    async def public(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34")]

    fetcher = SafeImageFetcher(
        resolver=public, transport=httpx.MockTransport(held), max_concurrent=1
    )
    first = asyncio.create_task(fetcher.fetch("https://shop.example/a.png"))
    await started.wait()
    with pytest.raises(UpstreamUnavailable, match="retry"):
        await fetcher.fetch("https://shop.example/b.png")
    release.set()
    assert await first == IMAGE
    assert await fetcher.fetch("https://shop.example/c.png") == IMAGE


async def test_the_public_hostname_is_refused_on_every_hop() -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34")]

    def web(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "https://Shop.Example./graphql"})

    fetcher = SafeImageFetcher(
        resolver=resolver,
        transport=httpx.MockTransport(web),
        own_urls=["https://shop.example"],
    )
    for url in ("https://shop.example/images/a.png", "https://elsewhere.example/a.png"):
        with pytest.raises(UrlRejected, match="this service itself"):
            await fetcher.fetch(url)
