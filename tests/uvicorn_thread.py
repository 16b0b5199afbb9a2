"""A real uvicorn server for an ASGI app, in a thread of the test process, on a loopback
port: real sockets and HTTP parsing, while the app's fakes stay inspectable by the test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

START_BOUND_S = 20.0
"""How long the server may take to start before the test gives up."""
STOP_BOUND_S = 10.0
"""How long stop() waits for the server's thread to end."""


def loopback_socket(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` (0: a free one), reusable at once after a stop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class UvicornThread:
    """uvicorn serving ``app`` on ``sock`` in a daemon thread; ``config`` goes to
    ``uvicorn.Config`` (lifespan, log level, protocol class, ...)."""

    def __init__(self, app: Any, sock: socket.socket, **config: Any) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self._server = uvicorn.Server(uvicorn.Config(app, **config))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    def start(self) -> UvicornThread:
        self._thread.start()
        deadline = time.monotonic() + START_BOUND_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)  # polling for the start; nothing is ordered by it
        return self

    def stop(self) -> None:
        """Ends the server (open connections included) and closes its socket."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_BOUND_S)
        self.sock.close()


@contextmanager
def uvicorn_in_thread(app: Any, **config: Any) -> Iterator[int]:
    """Serve ``app`` (lifespan on) until the block ends; yields the port. ``config`` goes to
    ``uvicorn.Config`` (log level, protocol class, ...)."""
    server = UvicornThread(app, loopback_socket(), lifespan="on", **config).start()
    try:
        yield server.port
    finally:
        server.stop()
