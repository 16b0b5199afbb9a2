"""A real uvicorn server for an ASGI app, in a thread of the test process, on a free loopback
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


@contextmanager
def uvicorn_in_thread(app: Any, **config: Any) -> Iterator[int]:
    """Serve ``app`` (lifespan on) until the block ends; yields the port. ``config`` goes to
    ``uvicorn.Config`` (log level, protocol class, ...)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_BOUND_S
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)  # polling for the start; nothing is ordered by it
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
