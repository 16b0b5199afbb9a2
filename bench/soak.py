"""Soak: sustained mixed load against a real uvicorn server on loopback (issue 8, item 6).

``python -m bench.soak [--duration 300] [--clients 16] ...`` starts the API in a child
process (``python -m bench.soak serve``: the composition root's embedded profile under a
scratch data directory, the demo catalog ingested first, uvicorn on a free loopback port),
then runs ``--clients`` concurrent clients for ``--duration`` seconds after a ``--warmup``.
Each client loops over a mix of text search (GraphQL ``searchByText``), image upload (the REST
``/get_similar_images`` multipart shim and GraphQL ``searchByImage`` with an upload, in
turn), similar products (GraphQL ``similarProducts``) and the product listing (GraphQL
``products``, paging through the catalog). Every answer is checked (status, no GraphQL
error, results present); the child's resident memory (RSS, ``/proc/<pid>/status``) is sampled
every second.

Written to ``bench/results/soak.json`` and printed as a table: errors, p50/p99 per interval
(``--bucket``, a minute by default), requests per second, RSS over time. Passes when there are
no errors, the last interval's p99 is at most 1.5x the first one's, and RSS grew by at most
10 % between the start of the measured period (after the warm-up) and its end.

With ``--hostile`` (what ``python -m bench soak`` runs: 16 clients, 10 minutes, written to
``bench/results/soak-hostile.json``), every fourth request of each client is one of the
hostile cases of ``bench/hostile.py`` in turn (a 1x40000 PNG, a lone surrogate, a 50,000-value
filter, bad cursors, a 10,000-character id, 1,000 aliases, 50 unmapped multipart files, a
stalled body, stalled headers, a client leaving mid-upload); the server's body idle timeout
and header deadline are 2 s. A hostile
request fails the soak only when the server fails it (a 5xx, a GraphQL INTERNAL_SERVER_ERROR,
an error without a code, a stalled connection left open); each case's outcomes are reported,
and so are the statuses the clients saw and those the server counted (/metrics: 408, 499).

The encoder is ``soak-hash`` by default: a deterministic stand-in computed from the bytes
(no model), so the load exercises the server itself (HTTP, GraphQL, uploads and image
validation, the FAISS index, the SQLite catalog, the image store) at a high request rate,
which is what shows leaks and drift. ``--encoder fashion-lite`` (or any encoder id) soaks
with a real model instead.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import hashlib
import itertools
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from bench.hostile import INTERNAL, HostileRequests, Outcome
from domain.model import Modality

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "soak.json"
HOSTILE_RESULTS_PATH = RESULTS_PATH.with_name("soak-hostile.json")
HOSTILE_EVERY = 4
"""With hostile requests on, every fourth request of each client is one of them."""
HOSTILE_BODY_IDLE_TIMEOUT_S = 2.0
"""The server's body idle timeout in a hostile soak: a stalled body occupies its client
this long."""
SOAK_ENCODER = "soak-hash"
P99_RATIO_LIMIT = 1.5
RSS_GROWTH_LIMIT = 0.10
READY_LINE = "SOAK-SERVER-READY"

console = Console() if sys.stdout.isatty() else Console(width=120)
Json = dict[str, Any]


# -- the stand-in encoder ------------------------------------------------------------------


class SoakHashEncoder:
    """Deterministic vectors without a model: texts as hashed bags of words, images as a
    pseudo-random vector seeded by their bytes (a product's own photo finds it first)."""

    def __init__(self, dim: int = 128) -> None:
        self._dim = dim

    @property
    def id(self) -> str:
        return SOAK_ENCODER

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.TEXT, Modality.IMAGE})

    def _unit(self, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        norm = float(np.linalg.norm(vector)) or 1.0
        unit: npt.NDArray[np.float32] = (vector / norm).astype(np.float32)
        return unit

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rows = []
        for text in texts:
            vector = np.zeros(self._dim, dtype=np.float32)
            for word in text.lower().split():
                digest = hashlib.sha256(word.encode()).digest()
                vector[int.from_bytes(digest[:4], "little") % self._dim] += 1.0
            rows.append(self._unit(vector))
        return np.stack(rows)

    def encode_images(self, images: Sequence[bytes]) -> npt.NDArray[np.float32]:
        rows = []
        for data in images:
            seed = int.from_bytes(hashlib.sha256(bytes(data)).digest()[:8], "little")
            vector = np.random.default_rng(seed).standard_normal(self._dim).astype(np.float32)
            rows.append(self._unit(vector))
        return np.stack(rows)


# -- the server (child process) --------------------------------------------------------------


def serve(home: Path, catalog: Path, encoder_id: str, limit: int | None) -> None:
    """Build the API like `fashion-search serve` does (embedded profile), ingest the catalog
    when the index is empty, print the port, serve until SIGTERM/SIGINT."""
    import uvicorn

    from fashion_search.asgi import app_for
    from fashion_search.serving import HeaderDeadlineProtocol
    from fashion_search.settings import Settings
    from fashion_search.wiring import build, build_encoders
    from ingest.pipeline import IngestOptions, ingest
    from ingest.readers import open_source

    settings = Settings(home=home, encoder=encoder_id)
    encoders = build_encoders(settings)
    if encoder_id == SOAK_ENCODER:
        encoders.register_instance(SoakHashEncoder())
    container = build(settings, encoders=encoders)

    async def seed() -> None:
        encoder = container.encoders.get(None)
        if await container.index.count(encoder.id) == 0:
            with open_source(catalog) as source:
                await ingest(
                    source,
                    [encoder],
                    container.index,
                    container.catalog,
                    container.images,
                    options=IngestOptions(limit=limit),
                )
            await container.index.flush()

    asyncio.run(seed())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app_for(container),
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=HeaderDeadlineProtocol,  # as `fashion-search serve` runs it
    )
    server = uvicorn.Server(config)
    print(f"{READY_LINE} {port}", flush=True)
    server.run(sockets=[sock])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process has used."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_server(
    work_dir: Path,
    catalog: Path,
    encoder_id: str,
    limit: int | None,
    timeout_s: float = 180,
    settings_env: dict[str, str] | None = None,
) -> ServerProcess:
    home = work_dir / "home"
    log = work_dir / "server.log"
    argv = [
        sys.executable,
        "-m",
        "bench.soak",
        "serve",
        "--home",
        str(home),
        "--catalog",
        str(catalog),
        "--encoder",
        encoder_id,
    ]
    if limit is not None:
        argv += ["--limit", str(limit)]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FASHION_SEARCH_", "PINECONE_", "MONGODB_", "S3_"))
    }
    env.update(settings_env or {})
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    handle = log.open("wb")
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=handle)
    handle.close()
    port: list[int] = []

    def read_stdout() -> None:
        assert process.stdout is not None
        with log.open("ab") as out:
            for raw in process.stdout:
                line = raw.decode(errors="replace")
                if line.startswith(READY_LINE) and not port:
                    port.append(int(line.split()[1]))
                out.write(raw)
                out.flush()

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        return _wait_ready(process, port, log, time.monotonic() + timeout_s)
    except BaseException:  # a failed start, or Ctrl-C / a test timeout while waiting
        ServerProcess(process, port[0] if port else 0, log).stop()
        raise


def _wait_ready(
    process: subprocess.Popen[bytes], port: list[int], log: Path, deadline: float
) -> ServerProcess:
    while not port:
        if process.poll() is not None or time.monotonic() > deadline:
            tail = ServerProcess(process, 0, log).tail()
            raise RuntimeError(f"the soak server did not start:\n{tail}")
        time.sleep(0.1)
    server = ServerProcess(process, port[0], log)
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/readyz", timeout=5).status_code == 200:
                return server
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"the soak server never became ready:\n{server.tail()}")


# -- the clients -----------------------------------------------------------------------------

TEXT_QUERY = """query($text: String!) { searchByText(text: $text, topK: 10) {
  hits { rank score product { id name imageUrl tags { key value } } } } }"""
SIMILAR_QUERY = """query($id: ID!) { similarProducts(productId: $id, topK: 5) {
  hits { score product { id name imageUrl } } } }"""
PRODUCTS_QUERY = """query($after: String) { products(first: 20, after: $after) {
  items { id name imageUrl tags { key value } } nextCursor } }"""
IMAGE_QUERY = """query($image: Upload!) { searchByImage(image: {upload: $image}, topK: 5) {
  hits { score product { id } } } }"""


@dataclass(frozen=True)
class Sample:
    at: float
    """Seconds since the measured period began (negative: warm-up)."""
    operation: str
    ms: float
    error: str | None
    outcome: str = ""
    """Hostile requests: what the server answered ("400 BAD_USER_INPUT", "408", ...)."""


@dataclass
class Workload:
    texts: list[str]
    product_ids: list[str]
    images: list[bytes]


def load_workload(catalog: Path, limit: int | None) -> Workload:
    from ingest.readers import open_source

    texts: list[str] = []
    ids: list[str] = []
    images: list[bytes] = []
    with open_source(catalog) as source:
        items = source if limit is None else itertools.islice(source, limit)
        for item in items:
            ids.append(item.id)
            texts.append(" ".join([item.name, *list(item.tags.values())[:2]]))
            if len(images) < 40:
                images.append(item.image.read(10 * 1024 * 1024))  # type: ignore[union-attr]
    return Workload(texts, ids, images)


class Client:
    """One simulated client: its own connection, looping over the operations."""

    def __init__(
        self, number: int, base_url: str, workload: Workload, hostile: bool = False
    ) -> None:
        self.number = number
        self.statuses: collections.Counter[int] = collections.Counter()
        self.http = httpx.AsyncClient(
            base_url=base_url, timeout=30.0, event_hooks={"response": [self._count_status]}
        )
        self.workload = workload
        self.hostile = HostileRequests(self.http, base_url, number) if hostile else None
        self.hostile_turn = number
        self.rng = random.Random(number)
        self.cursor: str | None = None
        self.image_turn = 0
        self.operations: list[tuple[str, Callable[[], Awaitable[str | None]]]] = [
            ("text search", self.text_search),
            ("image upload", self.image_upload),
            ("similar products", self.similar),
            ("products list", self.products),
        ]

    async def _count_status(self, response: httpx.Response) -> None:
        self.statuses[response.status_code] += 1

    def next_operation(self, turn: int) -> tuple[str, Callable[[], Awaitable[str | None]]]:
        if self.hostile is not None and turn % HOSTILE_EVERY == HOSTILE_EVERY - 1:
            name, case = self.hostile.cases[self.hostile_turn % len(self.hostile.cases)]
            self.hostile_turn += 1
            return name, functools.partial(self._hostile, case)
        return self.operations[turn % len(self.operations)]

    async def _hostile(self, case: Callable[[], Awaitable[Outcome]]) -> str | None:
        outcome = await case()
        self.last_outcome = outcome.label
        if outcome.socket_status is not None:  # answered on a raw socket, not through httpx
            self.statuses[outcome.socket_status] += 1
        return outcome.error

    async def graphql(self, query: str, variables: Json) -> Json | str:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        return _graphql_data(response)

    async def text_search(self) -> str | None:
        data = await self.graphql(TEXT_QUERY, {"text": self.rng.choice(self.workload.texts)})
        if isinstance(data, str):
            return data
        return None if data["searchByText"]["hits"] else "no hits"

    async def image_upload(self) -> str | None:
        image = self.rng.choice(self.workload.images)
        self.image_turn += 1
        if self.image_turn % 2:
            response = await self.http.post(
                "/get_similar_images", files={"file": ("query.jpg", image, "image/jpeg")}
            )
            if response.status_code != 200:
                return f"HTTP {response.status_code}: {response.text[:200]}"
            return None if len(response.json()["results"]) == 3 else "not 3 results"
        operations = json.dumps({"query": IMAGE_QUERY, "variables": {"image": None}})
        response = await self.http.post(
            "/graphql",
            data={"operations": operations, "map": '{"0": ["variables.image"]}'},
            files={"0": ("query.jpg", image, "image/jpeg")},
        )
        data = _graphql_data(response)
        if isinstance(data, str):
            return data
        return None if data["searchByImage"]["hits"] else "no hits"

    async def similar(self) -> str | None:
        pid = self.rng.choice(self.workload.product_ids)
        data = await self.graphql(SIMILAR_QUERY, {"id": pid})
        if isinstance(data, str):
            return data
        hits = data["similarProducts"]["hits"]
        if not hits or any(h["product"]["id"] == pid for h in hits):
            return "no hits, or the product itself"
        return None

    async def products(self) -> str | None:
        data = await self.graphql(PRODUCTS_QUERY, {"after": self.cursor})
        if isinstance(data, str):
            return data
        page = data["products"]
        if not page["items"]:
            return "empty page"
        self.cursor = page["nextCursor"]
        return None

    async def run(self, started: float, until: float, samples: list[Sample]) -> None:
        turn = self.number  # clients start at different operations
        while time.monotonic() < until:
            name, operation = self.next_operation(turn)
            turn += 1
            begun = time.monotonic()
            self.last_outcome = ""
            try:
                error = await operation()
            except (httpx.HTTPError, OSError, KeyError, TypeError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            ended = time.monotonic()
            samples.append(
                Sample(begun - started, name, (ended - begun) * 1000, error, self.last_outcome)
            )

    async def close(self) -> None:
        await self.http.aclose()


def _graphql_data(response: httpx.Response) -> Json | str:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    body = response.json()
    if body.get("errors"):
        return f"GraphQL error: {json.dumps(body['errors'])[:300]}"
    data: Json = body["data"]
    return data


# -- running and judging ----------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 300.0
    clients: int = 16
    warmup_s: float = 30.0
    bucket_s: float = 60.0
    rss_interval_s: float = 1.0
    encoder: str = SOAK_ENCODER
    catalog: Path | None = None
    limit: int | None = None
    work_dir: Path | None = None
    hostile: bool = False
    """Mix hostile requests (bench/hostile.py) into every client's traffic."""
    body_idle_timeout_s: float | None = None
    """The server's FASHION_SEARCH_BODY_IDLE_TIMEOUT_S (None: its default; a hostile soak
    uses HOSTILE_BODY_IDLE_TIMEOUT_S)."""


@dataclass
class Bucket:
    start_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    rss_mb: float | None
    server_cpu_ms_per_request: float | None
    """CPU the server spent per request: flat while latency rises means contention."""
    load_average: float | None
    """The machine's 1-minute load average (2 cores: above 2 means waiting for a CPU)."""


@dataclass
class SoakResult:
    config: Json
    machine: Json
    buckets: list[Bucket]
    operations: dict[str, Json]
    rss: list[tuple[float, float]]
    cpu: list[tuple[float, float]]
    load: list[tuple[float, float]]
    rss_baseline_mb: float
    rss_final_mb: float
    rss_max_mb: float
    requests: int
    errors: int
    error_examples: list[str]
    p99_first_ms: float
    p99_last_ms: float
    checks: dict[str, Json] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    """HTTP statuses the clients received (warm-up included)."""
    server_statuses: dict[str, int] = field(default_factory=dict)
    """Requests by status as the server counted them (/metrics at the end): 408 for stalled
    bodies, 499 for clients that left."""

    internal_errors: int = 0
    """GraphQL answers with an INTERNAL_SERVER_ERROR code (HTTP 200, a 500 in all but
    status), warm-up included."""

    @property
    def server_errors(self) -> int:
        """5xx answers, as the clients saw them and as the server counted them."""
        seen = sum(n for status, n in self.statuses.items() if status.startswith("5"))
        counted = sum(n for status, n in self.server_statuses.items() if status.startswith("5"))
        return max(seen, counted)

    @property
    def rss_growth(self) -> float:
        return self.rss_final_mb / self.rss_baseline_mb - 1

    @property
    def p99_ratio(self) -> float:
        return self.p99_last_ms / self.p99_first_ms

    @property
    def passed(self) -> bool:
        return all(check["ok"] for check in self.checks.values())

    def to_json(self) -> Json:
        return {
            "kind": "fashion-search.soak",
            "version": 1,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "passed": self.passed,
            "checks": self.checks,
            "config": self.config,
            "machine": self.machine,
            "requests": self.requests,
            "errors": self.errors,
            "error_examples": self.error_examples,
            "server_errors_5xx": self.server_errors,
            "graphql_internal_errors": self.internal_errors,
            "statuses_seen_by_clients": self.statuses,
            "statuses_counted_by_server": self.server_statuses,
            "p99_first_ms": round(self.p99_first_ms, 2),
            "p99_last_ms": round(self.p99_last_ms, 2),
            "rss_baseline_mb": round(self.rss_baseline_mb, 1),
            "rss_final_mb": round(self.rss_final_mb, 1),
            "rss_max_mb": round(self.rss_max_mb, 1),
            "rss_growth_pct": round(self.rss_growth * 100, 2),
            "buckets": [asdict(b) for b in self.buckets],
            "operations": self.operations,
            "rss_samples": [[round(t, 1), round(mb, 1)] for t, mb in self.rss],
            "server_cpu_samples": [[round(t, 1), round(cpu, 2)] for t, cpu in self.cpu],
            "load_average_samples": [[round(t, 1), round(x, 2)] for t, x in self.load],
        }


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return round(float(p50), 2), round(float(p99), 2)


def _window_rss(rss: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Median RSS over [start, end): one reading is noisy, a window is not."""
    values = [mb for t, mb in rss if start <= t < end]
    return float(np.median(values)) if values else float("nan")


def _at(series: Sequence[tuple[float, float]], moment: float) -> float | None:
    """The last value of ``series`` sampled at or before ``moment``."""
    before = [value for t, value in series if t <= moment]
    return before[-1] if before else None


def judge(
    config: SoakConfig,
    samples: Sequence[Sample],
    rss: Sequence[tuple[float, float]],
    machine: Json,
    cpu: Sequence[tuple[float, float]] = (),
    load: Sequence[tuple[float, float]] = (),
) -> SoakResult:
    measured = [s for s in samples if s.at >= 0 and s.at < config.duration_s]
    buckets: list[Bucket] = []
    n_buckets = max(1, int(np.ceil(config.duration_s / config.bucket_s)))
    for i in range(n_buckets):
        start, end = i * config.bucket_s, min((i + 1) * config.bucket_s, config.duration_s)
        inside = [s for s in measured if start <= s.at < end]
        p50, p99 = _percentiles([s.ms for s in inside])
        rss_values = [mb for t, mb in rss if start <= t < end]
        cpu_start, cpu_end = _at(cpu, start), _at(cpu, end)
        cpu_per_request = (
            round((cpu_end - cpu_start) * 1000 / len(inside), 2)
            if cpu_start is not None and cpu_end is not None and inside
            else None
        )
        loads = [x for t, x in load if start <= t < end]
        buckets.append(
            Bucket(
                start_s=start,
                requests=len(inside),
                errors=sum(1 for s in inside if s.error),
                rps=round(len(inside) / max(end - start, 1e-9), 1),
                p50_ms=p50,
                p99_ms=p99,
                rss_mb=round(max(rss_values), 1) if rss_values else None,
                server_cpu_ms_per_request=cpu_per_request,
                load_average=round(float(np.mean(loads)), 2) if loads else None,
            )
        )
    operations: dict[str, Json] = {}
    for name in sorted({s.operation for s in samples}):
        mine = [s for s in measured if s.operation == name]
        p50, p99 = _percentiles([s.ms for s in mine])
        operations[name] = {
            "requests": len(mine),
            "errors": sum(1 for s in mine if s.error),
            "p50_ms": p50,
            "p99_ms": p99,
        }
        outcomes = collections.Counter(s.outcome for s in mine if s.outcome)
        if outcomes:
            operations[name]["outcomes"] = dict(outcomes.most_common())
    # Errors count everywhere, warm-up included: the server must never fail.
    errors = [s for s in samples if s.error]
    window = min(max(config.bucket_s / 4, 3.0), config.duration_s / 4)
    baseline = _window_rss(rss, 0.0, window)
    final = _window_rss(rss, config.duration_s - window, config.duration_s + 1)
    measured_rss = [mb for t, mb in rss if t >= 0]
    result = SoakResult(
        config={
            "duration_s": config.duration_s,
            "clients": config.clients,
            "warmup_s": config.warmup_s,
            "bucket_s": config.bucket_s,
            "encoder": config.encoder,
            "catalog": str(config.catalog),
            "limit": config.limit,
            "rss_window_s": window,
            "hostile": config.hostile,
            "body_idle_timeout_s": config.body_idle_timeout_s,
        },
        machine=machine,
        buckets=buckets,
        operations=operations,
        rss=list(rss),
        cpu=list(cpu),
        load=list(load),
        rss_baseline_mb=baseline,
        rss_final_mb=final,
        rss_max_mb=max(measured_rss) if measured_rss else float("nan"),
        requests=len(measured),
        errors=len(errors),
        error_examples=sorted({f"{s.operation}: {s.error}" for s in errors})[:10],
        p99_first_ms=buckets[0].p99_ms,
        p99_last_ms=buckets[-1].p99_ms,
    )
    result.checks = {
        "errors": {"value": result.errors, "limit": 0, "ok": result.errors == 0},
        "p99_last_over_first": {
            "value": round(result.p99_ratio, 3),
            "limit": P99_RATIO_LIMIT,
            "ok": result.p99_ratio <= P99_RATIO_LIMIT,
        },
        "rss_growth": {
            "value": round(result.rss_growth, 4),
            "limit": RSS_GROWTH_LIMIT,
            "ok": result.rss_growth <= RSS_GROWTH_LIMIT,
        },
    }
    return result


def machine_facts() -> Json:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass
class Series:
    rss: list[tuple[float, float]] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)
    load: list[tuple[float, float]] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)


async def _load(
    config: SoakConfig, server: ServerProcess, workload: Workload
) -> tuple[list[Sample], Series]:
    samples: list[Sample] = []
    series = Series()
    started = time.monotonic() + config.warmup_s
    until = started + config.duration_s
    clients = [Client(i, server.base_url, workload, config.hostile) for i in range(config.clients)]

    async def sample_rss() -> None:
        while time.monotonic() < until + config.rss_interval_s:
            at = time.monotonic() - started
            mb, cpu = server.rss_mb(), server.cpu_seconds()
            if mb is not None:
                series.rss.append((at, mb))
            if cpu is not None:
                series.cpu.append((at, cpu))
            series.load.append((at, os.getloadavg()[0]))
            await asyncio.sleep(config.rss_interval_s)

    sampler = asyncio.create_task(sample_rss())
    try:
        await asyncio.gather(*(c.run(started, until, samples) for c in clients))
    finally:
        await sampler
        await asyncio.gather(*(c.close() for c in clients))
        for client in clients:
            series.statuses.update(client.statuses)
    return samples, series


STATUS_LINE = re.compile(
    r'^fashion_search_http_requests_total\{[^}]*status="(\d+)"[^}]*\} ([0-9.e+]+)$', re.MULTILINE
)


def server_statuses(server: ServerProcess) -> dict[str, int]:
    """Requests by status as the server counted them (its /metrics)."""
    try:
        text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    counts: collections.Counter[str] = collections.Counter()
    for status, value in STATUS_LINE.findall(text):
        counts[status] += int(float(value))
    return dict(sorted(counts.items()))


def run_soak(config: SoakConfig) -> SoakResult:
    catalog = config.catalog or _default_catalog()
    config = SoakConfig(**{**asdict(config), "catalog": catalog})
    work = config.work_dir or Path(tempfile.mkdtemp(prefix="fs-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    workload = load_workload(catalog, config.limit)
    idle_timeout = config.body_idle_timeout_s
    if idle_timeout is None and config.hostile:
        idle_timeout = HOSTILE_BODY_IDLE_TIMEOUT_S
        config = SoakConfig(**{**asdict(config), "body_idle_timeout_s": idle_timeout})
    settings_env = (
        {}
        if idle_timeout is None
        else {
            "FASHION_SEARCH_BODY_IDLE_TIMEOUT_S": str(idle_timeout),
            "FASHION_SEARCH_HEADER_TIMEOUT_S": str(idle_timeout),
        }
    )
    server = start_server(work, catalog, config.encoder, config.limit, settings_env=settings_env)
    try:
        machine = machine_facts()
        samples, series = asyncio.run(_load(config, server, workload))
        machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        alive = server.process.poll() is None
        counted = server_statuses(server) if alive else {}
    finally:
        server.stop()
    result = judge(config, samples, series.rss, machine, series.cpu, series.load)
    result.statuses = {str(k): v for k, v in sorted(series.statuses.items())}
    result.server_statuses = counted
    result.internal_errors = sum(1 for sample in samples if INTERNAL in sample.outcome)
    result.checks["server_alive"] = {"value": alive, "limit": True, "ok": alive}
    result.checks["no_5xx"] = {
        "value": result.server_errors,
        "limit": 0,
        "ok": result.server_errors == 0,
    }
    result.checks["no_internal_graphql_errors"] = {
        "value": result.internal_errors,
        "limit": 0,
        "ok": result.internal_errors == 0,
    }
    return result


def _default_catalog() -> Path:
    from fashion_search.settings import Settings

    return Settings().demo_catalog_path


def print_result(result: SoakResult) -> None:
    table = Table(title="Soak: per interval", title_justify="left")
    columns = (
        "from s",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max RSS MB",
        "CPU ms/req",
        "load",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for b in result.buckets:
        table.add_row(
            f"{b.start_s:.0f}",
            str(b.requests),
            str(b.errors),
            f"{b.rps:.1f}",
            f"{b.p50_ms:.1f}",
            f"{b.p99_ms:.1f}",
            "-" if b.rss_mb is None else f"{b.rss_mb:.1f}",
            "-" if b.server_cpu_ms_per_request is None else f"{b.server_cpu_ms_per_request:.1f}",
            "-" if b.load_average is None else f"{b.load_average:.2f}",
        )
    console.print(table)
    ops = Table(title="Per operation", title_justify="left")
    for column in ("operation", "requests", "errors", "p50 ms", "p99 ms"):
        ops.add_column(column, justify="right" if column != "operation" else "left")
    ops.add_column("outcomes", justify="left")
    for name, row in result.operations.items():
        outcomes = ", ".join(f"{k}: {v}" for k, v in row.get("outcomes", {}).items())
        ops.add_row(
            name,
            str(row["requests"]),
            str(row["errors"]),
            f"{row['p50_ms']}",
            f"{row['p99_ms']}",
            outcomes,
        )
    console.print(ops)
    console.print(
        f"statuses seen by the clients: {result.statuses}; counted by the server: "
        f"{result.server_statuses}; 5xx: {result.server_errors}; GraphQL "
        f"INTERNAL_SERVER_ERROR: {result.internal_errors}",
        highlight=False,
    )
    checks = Table(title="Checks", title_justify="left")
    for column in ("check", "measured", "limit", "ok"):
        checks.add_column(column)
    for name, check in result.checks.items():
        checks.add_row(
            name, str(check["value"]), str(check["limit"]), "yes" if check["ok"] else "NO"
        )
    console.print(checks)
    console.print(
        f"RSS {result.rss_baseline_mb:.1f} MB -> {result.rss_final_mb:.1f} MB "
        f"({result.rss_growth * 100:+.1f} %), max {result.rss_max_mb:.1f} MB; "
        f"{result.requests} requests, {result.errors} errors; "
        + ("[bold green]PASSED[/]" if result.passed else "[bold red]FAILED[/]")
    )
    for example in result.error_examples:
        console.print(f"  error: {example}", highlight=False)


# -- command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command")
    p.add_argument("--duration", type=float, default=300.0, help="Measured seconds.")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--warmup", type=float, default=30.0, help="Seconds of load before measuring.")
    p.add_argument("--bucket", type=float, default=60.0, help="Seconds per reported interval.")
    p.add_argument("--encoder", default=SOAK_ENCODER)
    p.add_argument("--catalog", type=Path, default=None, help="Default: the demo catalog.")
    p.add_argument("--limit", type=int, default=None, help="Ingest at most this many products.")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Default: bench/results/soak.json (soak-hostile.json with --hostile).",
    )
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--hostile",
        action="store_true",
        help=f"Mix hostile requests (bench/hostile.py) into the traffic: every {HOSTILE_EVERY}th request of each client.",
    )
    p.add_argument(
        "--body-idle-timeout",
        type=float,
        default=None,
        help=f"The server's body idle timeout, s (default: its own; {HOSTILE_BODY_IDLE_TIMEOUT_S:g} with --hostile).",
    )
    server = sub.add_parser("serve", help="(internal) the server process")
    server.add_argument("--home", type=Path, required=True)
    server.add_argument("--catalog", type=Path, required=True)
    server.add_argument("--encoder", default=SOAK_ENCODER)
    server.add_argument("--limit", type=int, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        serve(args.home, args.catalog, args.encoder, args.limit)
        return 0
    config = SoakConfig(
        duration_s=args.duration,
        clients=args.clients,
        warmup_s=args.warmup,
        bucket_s=args.bucket,
        encoder=args.encoder,
        catalog=args.catalog,
        limit=args.limit,
        work_dir=args.work_dir,
        hostile=args.hostile,
        body_idle_timeout_s=args.body_idle_timeout,
    )
    console.print(
        f"Soak: {config.clients} clients, {config.warmup_s:g} s warm-up + "
        f"{config.duration_s:g} s measured, encoder {config.encoder}"
        + (", hostile requests mixed in" if config.hostile else "")
    )
    result = run_soak(config)
    print_result(result)
    if not args.no_write:
        out = args.out or (HOSTILE_RESULTS_PATH if config.hostile else RESULTS_PATH)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"Wrote {out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
