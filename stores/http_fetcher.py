"""Downloading images from user-supplied URLs without becoming an SSRF proxy.

Every hop (the first URL and each redirect) is checked the same way: http or https only, no
credentials in the URL, the host resolved once and *every* address it resolves to checked
against the blocked ranges (private, loopback, link-local, multicast, reserved, unspecified,
shared, cloud metadata). The connection then goes to the address that was checked (the URL's
host is replaced by the IP, the Host header and the TLS SNI keep the name, so certificates are
still verified against the name): a second DNS answer can never point the request elsewhere.
Redirects are followed by hand, at most ``max_redirects`` of them. Connect, read and total
timeouts apply, the body is streamed and cut off at ``max_bytes``, and the environment's proxy
settings are ignored (a proxy would connect to whatever the name resolves to at its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

import httpx

from domain.errors import PayloadTooLarge, UpstreamUnavailable, UrlRejected
from domain.images import SELF_FETCH_HEADER

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_CONCURRENT = 8
"""Fetches in flight in one process; more are refused (503) rather than queued, so a burst of
URL searches cannot hold more than this many response bodies in memory."""
MAX_URL_LENGTH = 4096
_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
"""Cloud metadata service names: refused whatever they resolve to."""

METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2/32",  # AWS ECS task metadata
        "169.254.169.123/32",  # AWS time sync
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.192/32",  # Oracle Cloud (classic)
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "fd00:ec2::23/128",  # AWS DNS over IPv6
    )
)
"""Cloud metadata addresses: refused even when private addresses are allowed (only an explicit
``allowed_networks`` entry lets them through)."""


class FetcherSettings(Protocol):
    """The settings SafeImageFetcher.from_settings reads (fashion_search.settings.Settings)."""

    @property
    def max_image_bytes(self) -> int: ...

    @property
    def allow_private_urls(self) -> bool: ...

    @property
    def url_connect_timeout_s(self) -> float: ...

    @property
    def url_read_timeout_s(self) -> float: ...

    @property
    def public_url(self) -> str | None: ...

    @property
    def max_concurrent_url_fetches(self) -> int: ...


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host`` (IP literals resolve to
    themselves, including the odd forms inet_aton accepts such as ``2130706433``)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every fetch (building one takes tens of milliseconds)."""
    return httpx.create_ssl_context()


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


class SafeImageFetcher:
    """Implements domain.ports.ImageFetcher."""

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        total_timeout_s: float | None = None,
        allow_private: bool = False,
        allowed_networks: Sequence[str | IPNetwork] = (),
        max_redirects: int = 3,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = "fashion-search-image-fetcher/1.0",
        own_urls: Sequence[str] = (),
        own_endpoints: Collection[tuple[str, int]] = (),
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._timeout = httpx.Timeout(
            connect=connect_timeout_s,
            read=read_timeout_s,
            write=read_timeout_s,
            pool=connect_timeout_s,
        )
        self._total_timeout_s = total_timeout_s or (connect_timeout_s + 2 * read_timeout_s)
        self.allow_private = allow_private
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(
            n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False)
            for n in allowed_networks
        )
        self.max_redirects = max_redirects
        self._resolve = resolver or resolve_host
        self._transport = transport
        self._user_agent = user_agent
        self._own_hosts = {
            (parsed.host.rstrip(".").lower(), parsed.port or _default_port(parsed.scheme))
            for parsed in (httpx.URL(u) for u in own_urls)
            if parsed.host
        }
        self.own_endpoints = own_endpoints
        """(address, port) of the server's own listening sockets, as its requests show them
        (a set the API fills in): never fetched, even when private addresses are allowed."""
        self.max_concurrent = max_concurrent
        self._in_flight = 0

    @classmethod
    def from_settings(
        cls, settings: FetcherSettings, own_endpoints: Collection[tuple[str, int]] = ()
    ) -> SafeImageFetcher:
        return cls(
            max_bytes=settings.max_image_bytes,
            connect_timeout_s=settings.url_connect_timeout_s,
            read_timeout_s=settings.url_read_timeout_s,
            allow_private=settings.allow_private_urls,
            own_urls=[settings.public_url] if settings.public_url else [],
            own_endpoints=own_endpoints,
            max_concurrent=settings.max_concurrent_url_fetches,
        )

    # -- checks -------------------------------------------------------------------------

    def check_address(self, address: IPAddress) -> None:
        """Raise UrlRejected unless connecting to ``address`` is allowed."""
        plain = _unmapped(address)
        if any(plain in net or address in net for net in self.allowed_networks):
            return
        if any(plain in net for net in METADATA_NETWORKS):
            raise UrlRejected("the image URL points at a cloud metadata address")
        if self.allow_private:
            if plain.is_unspecified or plain.is_multicast:
                raise UrlRejected(f"the image URL points at a non-routable address ({plain})")
            return
        if (
            plain.is_loopback
            or plain.is_private
            or plain.is_link_local
            or plain.is_multicast
            or plain.is_reserved
            or plain.is_unspecified
            or not plain.is_global
        ):
            raise UrlRejected(
                f"the image URL points at a private or reserved address ({plain}); "
                "only public addresses are fetched"
            )

    def parse_url(self, raw: str | httpx.URL) -> httpx.URL:
        """Check the syntax-level rules: scheme, host, no credentials."""
        if isinstance(raw, str):
            if not raw.strip():
                raise UrlRejected("the image URL is empty")
            if len(raw) > MAX_URL_LENGTH:
                raise UrlRejected("the image URL is too long")
            try:
                url = httpx.URL(raw.strip())
            except (httpx.InvalidURL, ValueError, TypeError) as exc:
                raise UrlRejected(f"not a valid URL: {exc}") from exc
        else:
            url = raw
        if url.scheme not in ("http", "https"):
            raise UrlRejected("only http and https image URLs are fetched")
        try:
            host = url.host  # decoded on reading: "xn--" raises here, not in httpx.URL()
        except ValueError as exc:  # idna.IDNAError is a UnicodeError
            raise UrlRejected(f"the image URL's host is not a valid domain name: {exc}") from exc
        if not host:
            raise UrlRejected("the image URL has no host")
        if url.userinfo:
            raise UrlRejected("image URLs with credentials are not fetched")
        host = host.rstrip(".").lower()
        if host in METADATA_HOSTNAMES:
            raise UrlRejected("the image URL points at a cloud metadata service")
        if any(host == own_host for own_host, _ in self._own_hosts):
            raise UrlRejected("the image URL points at this service itself")
        return url

    async def check_not_self(self, url: httpx.URL, addresses: list[IPAddress]) -> None:
        """UrlRejected when the URL reaches one of this service's own sockets: its listening
        addresses (loopback and unspecified ones match any local address) or the addresses
        its public URL resolves to, on the same port."""
        port = url.port or _default_port(url.scheme)
        own = {(str(_unmapped(ipaddress.ip_address(h))), p) for h, p in self._listening()}
        for own_host, own_port in self._own_hosts:
            if own_port == port:
                with contextlib.suppress(OSError, UnicodeError, ValueError):
                    own.update((str(a), own_port) for a in await self._resolve_own(own_host))
        local_ports = {
            p for h, p in own if ipaddress.ip_address(h).is_loopback or h in ("0.0.0.0", "::")
        }
        for address in addresses:
            plain = _unmapped(address)
            if (str(plain), port) in own or (
                port in local_ports and (plain.is_loopback or plain.is_unspecified)
            ):
                raise UrlRejected("the image URL points at this service itself")

    def _listening(self) -> list[tuple[str, int]]:
        found = []
        for host, port in list(self.own_endpoints):
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(host)
                found.append((host, port))
        return found

    async def _resolve_own(self, host: str) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            return await self._resolve(host, 0)

    async def resolve_checked(self, url: httpx.URL) -> list[IPAddress]:
        """The host's addresses, all of them allowed, or UrlRejected."""
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = await self._resolve(host, port)
            except (OSError, UnicodeError) as exc:
                raise UrlRejected(f"cannot resolve the image URL's host {host!r}") from exc
        if not addresses:
            raise UrlRejected(f"cannot resolve the image URL's host {host!r}")
        for address in addresses:
            self.check_address(address)
        return addresses

    # -- fetching -----------------------------------------------------------------------

    async def fetch(self, url: str) -> bytes:
        if self._in_flight >= self.max_concurrent:
            raise UpstreamUnavailable(
                f"{self._in_flight} image URLs are being fetched already; retry shortly"
            )
        self._in_flight += 1
        try:
            async with asyncio.timeout(self._total_timeout_s):
                return await self._fetch(url)
        except TimeoutError as exc:
            raise UpstreamUnavailable(
                f"fetching the image URL timed out after {self._total_timeout_s:g} s in total"
            ) from exc
        finally:
            self._in_flight -= 1

    async def _fetch(self, raw_url: str) -> bytes:
        url = self.parse_url(raw_url)
        addresses = await self.resolve_checked(url)
        await self.check_not_self(url, addresses)
        async with httpx.AsyncClient(
            timeout=self._timeout,
            verify=_tls_context(),
            follow_redirects=False,
            trust_env=False,
            transport=self._transport,
            headers={
                "User-Agent": self._user_agent,
                "Accept": "image/*",
                "Accept-Encoding": "identity",  # images are compressed; see _read
                SELF_FETCH_HEADER: "1",
            },
        ) as client:
            for hop in range(self.max_redirects + 1):
                if hop:
                    addresses = await self.resolve_checked(url)
                    await self.check_not_self(url, addresses)
                result = await self._request(client, url, addresses)
                if isinstance(result, bytes):
                    return result
                url = self.parse_url(result)
        raise UrlRejected(f"the image URL redirected more than {self.max_redirects} times")

    async def _request(
        self, client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress]
    ) -> bytes | httpx.URL:
        """The body, or the next URL when the answer is a redirect."""
        last_error: Exception | None = None
        for address in addresses:
            pinned = url.copy_with(host=str(address))
            headers = {"Host": url.netloc.decode("ascii")}
            extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
            try:
                async with client.stream(
                    "GET", pinned, headers=headers, extensions=extensions
                ) as response:
                    return await self._read(url, response)
            except httpx.ConnectError as exc:
                last_error = exc
                continue
            except httpx.TimeoutException as exc:
                raise UpstreamUnavailable(self._phase_timed_out(exc)) from exc
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise UrlRejected(f"not a fetchable URL: {exc}") from exc
            except ValueError as exc:  # httpx reads a redirect's target (IDNA) on its own
                raise UrlRejected(f"the image URL redirected to an invalid URL: {exc}") from exc
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(f"fetching the image URL failed: {exc}") from exc
        raise UpstreamUnavailable("cannot connect to the image URL's host") from last_error

    def _phase_timed_out(self, exc: httpx.TimeoutException) -> str:
        """Which of the per-phase timeouts fired, so a client (and a test) can tell it from
        the total deadline."""
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            phase, seconds = "connect", self._timeout.connect
        else:
            phase, seconds = "read", self._timeout.read
        return (
            f"fetching the image URL timed out: nothing within the {phase} timeout of {seconds:g} s"
        )

    async def _read(self, url: httpx.URL, response: httpx.Response) -> bytes | httpx.URL:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise UrlRejected(f"the image URL answered a redirect ({status}) without a target")
            try:
                return url.join(location)
            except (httpx.InvalidURL, ValueError) as exc:
                raise UrlRejected("the image URL redirected to an invalid URL") from exc
        if status >= 500:
            raise UpstreamUnavailable(f"the image URL answered HTTP {status}")
        if not 200 <= status < 300:
            raise UrlRejected(f"the image URL answered HTTP {status}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise PayloadTooLarge(
                f"the image at the URL is {int(declared):,} bytes, above the limit of "
                f"{self.max_bytes:,} bytes"
            )
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # refused before httpx decodes it: a 1 MB gzip answer can decode to a gigabyte,
            # and httpx decodes a whole received chunk before the size cap sees it
            raise UrlRejected(
                f"the image URL answered with Content-Encoding {encoding!r}; "
                "images are fetched unencoded"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes(_CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLarge(
                    f"the image at the URL is larger than the limit of {self.max_bytes:,} bytes"
                )
            chunks.append(chunk)
        if size == 0:
            raise UrlRejected("the image URL answered an empty body")
        return b"".join(chunks)
