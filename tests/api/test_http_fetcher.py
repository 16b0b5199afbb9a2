"""SafeImageFetcher: SSRF rules on every hop, pinned connections, limits and timeouts."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from domain.errors import PayloadTooLarge, UpstreamUnavailable, UrlRejected
from stores.http_fetcher import IPAddress, SafeImageFetcher
from tests.api.helpers import png
from tests.api.httpserver import Server, serve

IMAGE = png((1, 2, 3))


@pytest.fixture
def server() -> Iterator[Server]:
    with serve("127.0.0.1", IMAGE) as running:
        yield running


@pytest.fixture
def other_loopback() -> Iterator[Server]:
    """A server on 127.0.0.2: a 'private' target that must never be contacted."""
    with serve("127.0.0.2", IMAGE) as running:
        yield running


def allowing_localhost(**kwargs: object) -> SafeImageFetcher:
    """Only 127.0.0.1 is allowed (where the test server runs); every other rule holds."""
    return SafeImageFetcher(allowed_networks=["127.0.0.1/32"], **kwargs)  # type: ignore[arg-type]


async def test_fetches_an_allowed_url(server: Server) -> None:
    assert await allowing_localhost().fetch(f"{server.base}/img.png") == IMAGE


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_GET",
        "ftp://example.com/a.png",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "//example.com/a.png",
        "not a url",
        "http://user:secret@example.com/a.png",
        "http:///a.png",
        "http://xn--/a.png",  # hosts that are not IDNA: httpx raises only when read
        "http://xn--zz.com/a.png",
        "http://xn--a/a.png",
    ],
)
async def test_rejects_other_schemes_credentials_and_garbage(url: str) -> None:
    with pytest.raises(UrlRejected):
        await SafeImageFetcher().fetch(url)


@pytest.mark.parametrize("url", ["", "   ", "\t\n"])
async def test_an_empty_url_is_refused_as_empty(url: str) -> None:
    with pytest.raises(UrlRejected, match="the image URL is empty"):
        await SafeImageFetcher().fetch(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://localhost/a.png",
        "http://127.1/a.png",
        "http://2130706433/a.png",
        "http://0x7f000001/a.png",
        "http://0.0.0.0/a.png",
        "http://10.1.2.3/a.png",
        "http://172.16.0.1/a.png",
        "http://192.168.1.1/a.png",
        "http://100.64.0.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.1.1/a.png",
        "http://224.0.0.1/a.png",
        "http://240.0.0.1/a.png",
        "http://255.255.255.255/a.png",
        "http://[::1]/a.png",
        "http://[::]/a.png",
        "http://[fe80::1]/a.png",
        "http://[fc00::1]/a.png",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[::ffff:169.254.169.254]/a.png",
        "http://[ff02::1]/a.png",
        "https://metadata.google.internal/computeMetadata/v1/",
        "http://metadata/computeMetadata/v1/",
    ],
)
async def test_rejects_private_loopback_link_local_reserved_and_metadata(url: str) -> None:
    with pytest.raises(UrlRejected):
        await SafeImageFetcher().fetch(url)


async def test_metadata_addresses_stay_blocked_when_private_urls_are_allowed() -> None:
    fetcher = SafeImageFetcher(allow_private=True)
    for url in (
        "http://169.254.169.254/latest/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
    ):
        with pytest.raises(UrlRejected, match="metadata"):
            await fetcher.fetch(url)


async def test_allow_private_lets_loopback_through(server: Server) -> None:
    assert await SafeImageFetcher(allow_private=True).fetch(f"{server.base}/img.png") == IMAGE


async def test_a_host_resolving_to_any_private_address_is_rejected() -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.5")]

    with pytest.raises(UrlRejected, match="private"):
        await SafeImageFetcher(resolver=resolver).fetch("http://mixed.example/a.png")


async def test_unresolvable_hosts_are_rejected() -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        raise OSError("Name or service not known")

    with pytest.raises(UrlRejected, match="resolve"):
        await SafeImageFetcher(resolver=resolver).fetch("http://nowhere.invalid/a.png")


async def test_connects_to_the_checked_address_keeping_the_host_name(server: Server) -> None:
    """No DNS-rebinding gap: the name is resolved once per hop, the connection goes to the
    address that was checked, and the Host header still names the site."""
    port = server.server_address[1]
    calls: list[str] = []

    async def resolver(host: str, resolved_port: int) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    fetcher = allowing_localhost(resolver=resolver)
    assert await fetcher.fetch(f"http://shop.test:{port}/img.png") == IMAGE
    assert calls == ["shop.test"]
    assert server.requests == [("/img.png", f"shop.test:{port}")]


async def test_redirect_to_a_private_address_is_rejected_before_connecting(
    server: Server, other_loopback: Server
) -> None:
    target = f"{other_loopback.base}/img.png"
    with pytest.raises(UrlRejected, match="private"):
        await allowing_localhost().fetch(f"{server.base}/redirect?to={target}")
    assert [path for path, _ in server.requests] == ["/redirect"]
    assert other_loopback.requests == []


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://10.0.0.1/a.png",
        "http://[::1]/a.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http://xn--/a.png",
    ],
)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_every_redirect_hop_is_checked(server: Server, target: str, status: int) -> None:
    with pytest.raises(UrlRejected):
        await allowing_localhost().fetch(f"{server.base}/redirect?status={status}&to={target}")


async def test_follows_up_to_three_redirects(server: Server) -> None:
    # /chain/N answers N + 1 redirects before the image.
    assert await allowing_localhost().fetch(f"{server.base}/chain/2") == IMAGE
    assert [path for path, _ in server.requests] == ["/chain/2", "/chain/1", "/chain/0", "/img.png"]
    with pytest.raises(UrlRejected, match="redirected more than 3"):
        await allowing_localhost().fetch(f"{server.base}/chain/3")


async def test_size_cap_from_content_length(server: Server) -> None:
    with pytest.raises(PayloadTooLarge):
        await allowing_localhost(max_bytes=100_000).fetch(f"{server.base}/big")


async def test_size_cap_while_streaming(server: Server) -> None:
    with pytest.raises(PayloadTooLarge):
        await allowing_localhost(max_bytes=100_000).fetch(f"{server.base}/stream-big")


async def test_read_timeout_is_upstream_unavailable(server: Server) -> None:
    fetcher = allowing_localhost(connect_timeout_s=0.5, read_timeout_s=0.2)
    with pytest.raises(
        UpstreamUnavailable, match=r"timed out: nothing within the read timeout of 0\.2 s"
    ):
        await fetcher.fetch(f"{server.base}/slow?s=1.5")


async def test_total_timeout_bounds_the_whole_fetch(server: Server) -> None:
    fetcher = allowing_localhost(read_timeout_s=5, total_timeout_s=0.3)
    with pytest.raises(UpstreamUnavailable, match=r"timed out after 0\.3 s in total"):
        await fetcher.fetch(f"{server.base}/slow?s=1.5")


async def test_refused_connection_is_upstream_unavailable(server: Server) -> None:
    with serve("127.0.0.1") as closed:
        port = closed.server_address[1]
    with pytest.raises(UpstreamUnavailable):
        await allowing_localhost().fetch(f"http://127.0.0.1:{port}/img.png")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (404, UrlRejected),
        (403, UrlRejected),
        (500, UpstreamUnavailable),
        (503, UpstreamUnavailable),
    ],
)
async def test_error_statuses(server: Server, code: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        await allowing_localhost().fetch(f"{server.base}/status?code={code}")


async def test_images_are_asked_unencoded_and_an_encoded_answer_is_refused(
    server: Server,
) -> None:
    """The size cap counts the bytes received: a 1 MB gzip answer decoding to 1 GB made one
    fetch grow the process by 262 MB before the cap cut it (httpx decodes a whole received
    chunk at once). Images are compressed already: they are asked with no content coding,
    and an answer encoded anyway is refused, never decoded."""
    assert await allowing_localhost().fetch(f"{server.base}/img.png") == IMAGE
    assert server.accept_encodings == ["identity"]
    with pytest.raises(UrlRejected, match="Content-Encoding"):
        await allowing_localhost().fetch(f"{server.base}/gzip?pad=20000000")


async def test_empty_body_is_rejected(server: Server) -> None:
    with pytest.raises(UrlRejected, match="empty"):
        await allowing_localhost().fetch(f"{server.base}/empty")


def test_from_settings_reads_the_limits() -> None:
    settings = SimpleNamespace(
        max_image_bytes=1234,
        allow_private_urls=True,
        url_connect_timeout_s=1.5,
        url_read_timeout_s=2.5,
        public_url="https://shop.example/",
        max_concurrent_url_fetches=3,
    )
    fetcher = SafeImageFetcher.from_settings(settings)
    assert fetcher.max_bytes == 1234
    assert fetcher.allow_private is True
    assert fetcher.max_concurrent == 3
    with pytest.raises(UrlRejected, match="this service itself"):
        fetcher.parse_url("http://SHOP.example./a.png")
