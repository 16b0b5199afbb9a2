"""Fixtures for the backend reliability tests (issue 8, items 4-6): the three production
backends as servers that can be stopped, frozen and restarted on the same port with their data
intact, and the settings of a production profile pointing at them.

* ``MongoProcess``: nx-27017 in a subprocess with an on-disk data directory, so a restart keeps
  the catalog. ``stop()`` terminates it (connections refused), ``freeze()`` sends SIGSTOP (the
  kernel still accepts connections, nothing answers: a hung server), ``start()`` / ``thaw()``
  bring it back on the same port.
* ``MotoS3``: moto's S3 app on werkzeug in a thread, like ``ThreadedMotoServer`` but on a fixed
  port and speaking HTTP/1.0, so stopping it leaves no keep-alive connection that a handler
  thread would go on serving. moto keeps its state in this process: a restart keeps the bucket.
* ``PineconeServer``: the Pinecone fake's app on uvicorn in a thread, on a fixed port; the
  fake's state survives restarts.
* ``Blackhole``: a socket listening on a port that never accepts: connections complete (the
  kernel's backlog) and then nothing is ever answered. Put in place of a stopped in-thread
  server it makes that server *hang* instead of refuse.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from pydantic import SecretStr
from pymongo import MongoClient
from werkzeug.serving import BaseWSGIServer, make_server

from fashion_search.settings import Settings
from tests.stores.pinecone_fake import FakePinecone
from tests.stores.servers import (
    AWS_TEST_CREDENTIALS,
    AWS_TEST_REGION,
    free_port,
    stop_process,
    unique_name,
)
from tests.uvicorn_thread import UvicornThread, loopback_socket

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": AWS_TEST_CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": AWS_TEST_CREDENTIALS["aws_secret_access_key"],
    "AWS_DEFAULT_REGION": AWS_TEST_REGION,
}
STORE_ENV_NAMES = (
    "PINECONE_API_KEY",
    "PINECONE_INDEX",
    "PINECONE_HOST",
    "MONGODB_URI",
    "MONGODB_DB",
    "S3_BUCKET",
    "S3_ENDPOINT_URL",
    "S3_PUBLIC_BASE_URL",
)
"""Settings that switch a store to production: scrubbed from child environments."""


def _wait_listening(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


class MongoProcess:
    """nx-27017 on a fixed loopback port, data on disk (survives restarts)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        script = Path(sys.executable).with_name("nx-27017")
        base = [str(script)] if script.exists() else [sys.executable, "-m", "nx_27017.nx_27017"]
        return [
            *base,
            "--data-dir",
            str(self.workdir / "data"),
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--pid-file",
            str(self.workdir / "nx.pid"),
            "--log-file",
            str(self.workdir / "nx.log"),
        ]

    def start(self, timeout_s: float = 30.0) -> MongoProcess:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        with (self.workdir / "stdout.log").open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                client: MongoClient[dict[str, object]]
                with MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return self
            except Exception as exc:
                last = str(exc)
                time.sleep(0.1)
        output = (self.workdir / "stdout.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"nx-27017 did not start on port {self.port}: {last}\n{output}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if self.frozen:
            process.send_signal(signal.SIGCONT)
            self.frozen = False
        stop_process(process)

    def freeze(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)
        self.frozen = False


class _Http10Handler(MotoRequestHandler):
    """One request per connection: nothing outlives a stop."""

    protocol_version = "HTTP/1.0"


class MotoS3:
    """moto's S3 on a fixed loopback port; stop() closes the listener and every connection."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> MotoS3:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", self.port, app, threaded=True, request_handler=_Http10Handler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        if not _wait_listening(self.port, 10):
            raise RuntimeError("moto did not start")
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # serve_forever closes the listening socket on its way out
        if self._thread is not None:
            self._thread.join(timeout=10)


class PineconeServer:
    """The Pinecone fake on a fixed loopback port; its indexes survive restarts."""

    def __init__(self) -> None:
        self.fake = FakePinecone()
        self.port = free_port()
        self.fake.port = self.port
        self._server: UvicornThread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> PineconeServer:
        self._server = UvicornThread(
            self.fake.app,
            loopback_socket(self.port),
            log_level="critical",
            lifespan="off",
            access_log=False,
        ).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()


class Blackhole:
    """Listens on ``port`` and never accepts: clients connect, send, and wait forever."""

    def __init__(self, port: int) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self._socket.listen(256)

    def close(self) -> None:
        self._socket.close()


@dataclass
class Backends:
    mongo: MongoProcess
    s3: MotoS3
    pinecone: PineconeServer

    def ensure_running(self) -> None:
        """Undo whatever a failed test left behind."""
        if self.mongo.frozen:
            self.mongo.thaw()
        if not self.mongo.running:
            self.mongo.start()
        if not self.s3.running:
            self.s3.start()
        if not self.pinecone.running:
            self.pinecone.start()


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    workdir = Path(tempfile.mkdtemp(prefix="reliability-nx27017-"))
    mongo = MongoProcess(workdir).start()
    s3 = MotoS3().start()
    pinecone = PineconeServer().start()
    try:
        yield Backends(mongo, s3, pinecone)
    finally:
        pinecone.stop()
        s3.stop()
        mongo.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class ProductionNames:
    """Fresh per test: a MongoDB database, an S3 bucket and a Pinecone index."""

    database: str
    bucket: str
    index: str


def production_names(prefix: str) -> ProductionNames:
    return ProductionNames(
        database=unique_name(prefix), bucket=unique_name(prefix), index=unique_name(prefix)
    )


def production_env(backends: Backends, names: ProductionNames, timeout_s: float) -> dict[str, str]:
    """The environment of the production profile (what an operator would export)."""
    return {
        "PINECONE_API_KEY": backends.pinecone.fake.api_key,
        "PINECONE_HOST": backends.pinecone.fake.host_of(names.index),
        "MONGODB_URI": backends.mongo.uri,
        "MONGODB_DB": names.database,
        "S3_BUCKET": names.bucket,
        "S3_ENDPOINT_URL": backends.s3.endpoint_url,
        "AWS_REGION": AWS_TEST_REGION,
        "FASHION_SEARCH_STORE_TIMEOUT_S": str(timeout_s),
        **AWS_ENV,
    }


def production_settings(
    backends: Backends,
    names: ProductionNames,
    home: Path,
    *,
    encoder: str,
    timeout_s: float,
    api_keys: tuple[str, ...] = (),
) -> Settings:
    return Settings(
        home=home,
        encoder=encoder,
        api_keys=[SecretStr(k) for k in api_keys],
        pinecone_api_key=SecretStr(backends.pinecone.fake.api_key),
        pinecone_host=backends.pinecone.fake.host_of(names.index),
        mongodb_uri=SecretStr(backends.mongo.uri),
        mongodb_db=names.database,
        s3_bucket=names.bucket,
        s3_endpoint_url=backends.s3.endpoint_url,
        aws_region=AWS_TEST_REGION,
        store_timeout_s=timeout_s,
    )


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 reads the credentials of moto's server from the environment."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
