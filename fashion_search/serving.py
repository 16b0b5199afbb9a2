"""How ``fashion-search serve`` speaks HTTP: uvicorn's httptools protocol (what it picks by
default) plus a deadline for request headers. uvicorn times out idle keep-alive connections but
not a request whose headers never finish: a client that connects and sends nothing, or half a
request line, holds its connection for ever (the body has its own idle timeout in the app,
``api.limits.BodyLimitsMiddleware``; headers never reach the app)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("fashion_search.serving")


@functools.cache
def _configured_header_timeout_s() -> float:
    from fashion_search.settings import Settings

    return Settings().header_timeout_s


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """Closes a connection whose request headers are not complete ``header_timeout_s`` after
    the connection opened (first request) or the request began (later ones on a keep-alive
    connection). Between requests uvicorn's keep-alive timeout applies as before."""

    header_timeout_s: ClassVar[float | None] = None
    """None: FASHION_SEARCH_HEADER_TIMEOUT_S (uvicorn passes the class by reference to
    spawned workers, so the worker reads its own settings)."""

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            timeout = self.header_timeout_s or _configured_header_timeout_s()
            self._header_deadline = self.loop.call_later(timeout, self._headers_stalled)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_stalled(self) -> None:
        self._header_deadline = None
        logger.debug("request headers incomplete at the deadline: closing %s", self.client)
        self.transport.close()
