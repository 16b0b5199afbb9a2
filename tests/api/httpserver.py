"""A small threaded HTTP server for fetcher tests: images, redirects, slow and huge answers."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, image: bytes) -> None:
        super().__init__((host, 0), Handler)
        self.image = image
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.accept_encodings: list[str] = []

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up early (timeouts, size caps) are part of the tests."""

    @property
    def base(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.server.requests.append((parts.path, self.headers.get("Host", "")))
        self.server.accept_encodings.append(self.headers.get("Accept-Encoding", ""))
        path = parts.path
        if path == "/img.png":
            self._send(200, self.server.image, {"Content-Type": "image/png"})
        elif path == "/redirect":
            self._send(int(query.get("status", ["302"])[0]), headers={"Location": query["to"][0]})
        elif path.startswith("/chain/"):
            hops = int(path.rsplit("/", 1)[1])
            target = "/img.png" if hops == 0 else f"/chain/{hops - 1}"
            self._send(302, headers={"Location": target})
        elif path == "/big":
            self._send(200, b"\x89PNG\r\n\x1a\n" + b"\x00" * 200_000, {"Content-Type": "image/png"})
        elif path == "/stream-big":
            # No Content-Length: the size is only known by reading.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\x00" * 10_000)
            except OSError:
                pass
            self.close_connection = True
        elif path == "/slow":
            time.sleep(float(query.get("s", ["2"])[0]))
            self._send(200, self.server.image)
        elif path == "/status":
            self._send(int(query["code"][0]), b"nope")
        elif path == "/empty":
            self._send(200, b"")
        elif path == "/gzip":
            # encoded whatever the client asked for (a small body can decode to gigabytes)
            encoded = gzip.compress(self.server.image + b"\x00" * int(query.get("pad", ["0"])[0]))
            self._send(200, encoded, {"Content-Type": "image/png", "Content-Encoding": "gzip"})
        else:
            self._send(404, b"not found")


@contextmanager
def serve(host: str = "127.0.0.1", image: bytes = b"") -> Iterator[Server]:
    server = Server(host, image)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
