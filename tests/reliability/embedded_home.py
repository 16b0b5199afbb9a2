"""Real processes on one embedded data home (issue 14): ``fashion-search serve`` with several
workers, ``fashion-search ingest`` runs, and a view of what the stores hold.

Every process loads the ``crashtest`` encoder plugin (tests/reliability/crash_plugin.py)
through a ``*.dist-info`` on its PYTHONPATH, so no model is loaded. Catalogs are CSV manifests
of hm-demo rows whose images are absolute paths into the shared dataset (nothing copied).
Waits poll for a state (readiness, an answer) with a bound that only stops a broken run from
hanging; nothing is ordered by sleeping, and no elapsed time is asserted."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fashion_search.settings import Settings
from fashion_search.wiring import Container, build
from stores.images.local import LocalImageStore
from tests.stores.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ENCODER = "crashtest:a"
API_KEY = "embedded-home-key"
BATCH = 4
START_BOUND_S = 240.0
RUN_BOUND_S = 300.0
MAX_WORKER_PROBES = 200
"""Connections opened to reach every worker once (the kernel picks the worker)."""


def write_catalog(hm_demo: Path, folder: Path, rows: slice) -> Path:
    """A manifest of hm-demo's rows ``rows``, images as absolute paths."""
    with (hm_demo / "products.csv").open(encoding="utf-8", newline="") as handle:
        all_rows = list(csv.DictReader(handle))
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "products.csv"
    with manifest.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(all_rows[0]))
        writer.writeheader()
        for row in all_rows[rows]:
            writer.writerow({**row, "image": str(hm_demo / row["image"])})
    return manifest


def catalog_ids(manifest: Path) -> set[str]:
    with manifest.open(encoding="utf-8", newline="") as handle:
        return {row["id"] for row in csv.DictReader(handle)}


def child_env(home: Path, plugin_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FASHION_SEARCH_", "PINECONE_", "MONGODB_", "S3_", "AWS_"))
    }
    env.update(
        {
            "FASHION_SEARCH_HOME": str(home),
            "FASHION_SEARCH_ENCODER": ENCODER,
            "FASHION_SEARCH_API_KEYS": json.dumps([API_KEY]),
            "PYTHONPATH": os.pathsep.join([str(plugin_path), str(REPO_ROOT)]),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }
    )
    env.update(extra or {})
    return env


def start_ingest(
    home: Path, plugin_path: Path, manifest: Path, extra: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "fashion_search.cli", "ingest", str(manifest)]
    argv += ["--encoder", ENCODER, "--batch-size", str(BATCH)]
    return subprocess.Popen(
        argv,
        cwd=home.parent,
        env=child_env(home, plugin_path, extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def ingest(
    home: Path, plugin_path: Path, manifest: Path, extra: dict[str, str] | None = None
) -> tuple[int, str]:
    process = start_ingest(home, plugin_path, manifest, extra)
    output, _ = process.communicate(timeout=RUN_BOUND_S)
    return process.returncode, output


# -- a served home ----------------------------------------------------------------------------

COUNT = "{ encoders { id indexedCount } }"
PRODUCT = "query($id: ID!) { product(id: $id) { id name } }"
SIMILAR = "query($id: ID!) { similarProducts(productId: $id, topK: 3) { hits { product { id } } } }"
ADD = (
    "mutation($input: AddProductInput!, $image: Upload!) "
    "{ addProduct(input: $input, image: $image) { id } }"
)
DELETE = "mutation($id: ID!) { deleteProduct(id: $id) }"


@dataclass
class Server:
    """``fashion-search serve --workers N`` in its own process group."""

    home: Path
    plugin_path: Path
    workers: int = 2
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.port = free_port()
        self.log = self.home.parent / f"serve-{self.port}.log"
        argv = [sys.executable, "-m", "fashion_search.cli", "serve"]
        argv += ["--workers", str(self.workers), "--port", str(self.port)]
        argv += ["--log-level", "warning"]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=child_env(self.home, self.plugin_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        self.wait_ready()
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log else ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_BOUND_S
        while True:
            assert self.process is not None
            assert self.process.poll() is None, self.text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"not ready in {START_BOUND_S} s\n{self.text()}"
            time.sleep(0.2)  # polling for readiness, not ordering work

    def worker_pids(self) -> set[int]:
        assert self.process is not None
        found = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.add(int(pid))
        return found

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(
            f"{self.base}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        document: dict[str, Any] = response.json()
        return document

    def add_product(self, pid: str, name: str, image: bytes) -> dict[str, Any]:
        operations = {
            "query": ADD,
            "variables": {"input": {"id": pid, "name": name}, "image": None},
        }
        response = httpx.post(
            f"{self.base}/graphql",
            data={
                "operations": json.dumps(operations),
                "map": json.dumps({"0": ["variables.image"]}),
            },
            files={"0": ("photo.jpg", image, "image/jpeg")},
            headers={"X-API-Key": API_KEY},
            timeout=120,
        )
        document: dict[str, Any] = response.json()
        return document

    def delete_product(self, pid: str) -> dict[str, Any]:
        response = httpx.post(
            f"{self.base}/graphql",
            json={"query": DELETE, "variables": {"id": pid}},
            headers={"X-API-Key": API_KEY},
            timeout=120,
        )
        document: dict[str, Any] = response.json()
        return document

    def ask_every_worker(self, query: str, **variables: Any) -> dict[int, dict[str, Any]]:
        """The same query answered by each worker (told apart by who holds the server end of
        the connection), opening connections until every worker has answered once."""
        workers = self.worker_pids()
        assert len(workers) == self.workers, (workers, self.text())
        answers: dict[int, dict[str, Any]] = {}
        body = json.dumps({"query": query, "variables": variables})
        for _ in range(MAX_WORKER_PROBES):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                connection.request("POST", "/graphql", body, {"Content-Type": "application/json"})
                answer = json.loads(connection.getresponse().read())
                assert connection.sock is not None
                worker = _owner(self.port, connection.sock.getsockname()[1], workers)
            finally:
                connection.close()
            if worker is not None:
                answers.setdefault(worker, answer)
            if len(answers) == len(workers):
                return answers
        raise AssertionError(f"only workers {sorted(answers)} of {sorted(workers)} answered")

    def stop(self) -> int:
        """A normal stop (Ctrl-C): the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL of the whole process group (the server and its workers)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(60)
        workers_gone(self.process.pid)


def workers_gone(group: int) -> None:
    """Wait until no process of the group is left (the kernel reaps SIGKILLed workers)."""
    deadline = time.monotonic() + 60
    while any(_group_of(pid) == group for pid in _pids()):
        assert time.monotonic() < deadline, "workers outlived SIGKILL"
        time.sleep(0.05)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _group_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]) if fields[0] != "Z" else None


def _owner(server_port: int, client_port: int, workers: set[int]) -> int | None:
    """The worker holding the server end of the connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in workers:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return pid
    return None


# -- what the stores hold ---------------------------------------------------------------------


@dataclass
class HomeState:
    products: dict[str, tuple[str, ...]]  # id -> image keys
    ledger: dict[str, str]
    vector_count: int
    vector_ids: set[str]
    image_files: set[str]
    referenced_files: set[str]

    def agreement_problems(self) -> list[str]:
        """Every way catalog, ledger, vectors and images disagree (empty when they agree)."""
        problems = []
        ids = set(self.products)
        if set(self.ledger) != ids:
            problems.append(f"ledger vs catalog: {sorted(set(self.ledger) ^ ids)[:5]}")
        if self.vector_ids != ids or self.vector_count != len(ids):
            problems.append(
                f"vectors vs catalog: {sorted(self.vector_ids ^ ids)[:5]} "
                f"(count {self.vector_count}, catalog {len(ids)})"
            )
        if missing := self.referenced_files - self.image_files:
            problems.append(f"images missing: {sorted(missing)[:5]}")
        if orphans := self.image_files - self.referenced_files:
            problems.append(f"images no product points at: {sorted(orphans)[:5]}")
        return problems


def read_home(home: Path, probe_ids: Sequence[str] = ()) -> HomeState:
    """The stores of ``home`` as a fresh process sees them. ``probe_ids``: more ids whose
    vectors to look for (products that should be gone)."""
    return asyncio.run(_read_home(home, probe_ids))


async def _read_home(home: Path, probe_ids: Sequence[str]) -> HomeState:
    container: Container = build(Settings(home=home), load_entry_points=False)
    try:
        products: dict[str, tuple[str, ...]] = {}
        cursor: str | None = None
        while True:
            page = await container.catalog.list(cursor=cursor, limit=200)
            products.update({p.id: tuple(p.image_keys) for p in page.items})
            cursor = page.next_cursor
            if cursor is None:
                break
        ledger = await container.catalog.indexed_hashes(ENCODER)
        wanted = sorted(set(products) | set(ledger) | set(probe_ids))
        vectors = await container.index.fetch(ENCODER, wanted)
        count = await container.index.count(ENCODER)
        images = container.images
        assert isinstance(images, LocalImageStore)
        files = {
            str(p.relative_to(images.directory))
            for p in images.directory.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }
        referenced = {
            str(images.path(key).relative_to(images.directory))
            for keys in products.values()
            for key in keys
        }
        return HomeState(products, ledger, count, set(vectors), files, referenced)
    finally:
        await container.aclose()


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        assert server.process is not None
        if server.process.poll() is None:
            server.kill()
