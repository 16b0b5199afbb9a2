"""Benchmark 1, query latency: a real `fashion-search serve` process over the ~21k-product
catalog, and this process as the client (httpx over loopback).

For each server configuration (worker processes, torch threads) and each query kind, in
this order: searchByText over GraphQL, POST /get_image_by_text, searchByImage over GraphQL
with an uploaded JPEG; first 1 client sending requests back to back, then 8 concurrent
clients. Every answer is checked (HTTP 200, no GraphQL errors, at least one hit); any
other outcome counts as an error.

In the same run, with the server idle, the encoder call alone and the FAISS query alone
are timed in this process on the same queries (same encoder, same index files), so the
end-to-end overhead ratio p50(end to end) / (p50(encode) + p50(index)) is visible.

``--baseline-tree DIR`` adds a server of another checkout (the revision an issue's "today"
figures were measured at), on the catalog that checkout's own code prepares in
``--baseline-work-dir``, beside this checkout's; the two take turns phase block by phase
block (``--rounds``), and the result gives each kind's 1-client p50 and 8-client q/s as a
ratio to the baseline's text search, round by round: targets set on another day's machine
become ratios measured under one load.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.catalog import TreeCatalog, catalog_home, prepare_catalog
from bench.common import (
    REPO_ROOT,
    Check,
    EncoderChoice,
    Json,
    Result,
    Server,
    Stats,
    at_least,
    at_most,
    console,
    hm_dev,
    info,
    mib,
    serve,
    standin_note,
    tree_cpu_seconds,
    tree_revision,
    tree_rss_bytes,
)

TOP_K = 10

SEARCH_FIELDS = (
    "encoder tookMs nextCursor hits { rank score product { id name imageUrl tags { key value } } }"
)
TEXT_QUERY = (
    "query SearchText($text: String!, $topK: Int!) "
    f"{{ searchByText(text: $text, topK: $topK) {{ {SEARCH_FIELDS} }} }}"
)
TEXT_VISUAL_QUERY = (
    "query SearchTextVisual($text: String!, $topK: Int!) "
    f"{{ searchByText(text: $text, topK: $topK, mode: VISUAL) {{ {SEARCH_FIELDS} }} }}"
)
"""The same text search ranked by the images only (what text search did before hybrid
search): the difference to ``TEXT_QUERY`` is what the lexical and semantic signals cost."""
IMAGE_QUERY = (
    "query SearchImage($image: Upload!, $topK: Int!) "
    f"{{ searchByImage(image: {{upload: $image}}, topK: $topK) {{ {SEARCH_FIELDS} }} }}"
)

_COLOURS = (
    "black",
    "white",
    "red",
    "navy blue",
    "beige",
    "light pink",
    "green",
    "grey",
    "yellow",
    "brown",
)
_ITEMS = (
    "dress", "leather jacket", "sneakers", "denim jeans", "t-shirt", "hoodie", "summer skirt",
    "wool sweater", "handbag", "ankle boots", "swimsuit", "checked shirt", "sports bra",
    "wrist watch", "sunglasses", "floral blouse",
)  # fmt: skip


def query_texts(n: int = 64) -> list[str]:
    """Varied shopper queries (colour + item), deterministic."""
    pairs = itertools.product(_COLOURS, _ITEMS)
    texts = [f"{colour} {item}" for colour, item in pairs]
    step = 7  # spread over colours and items
    return [texts[(i * step) % len(texts)] for i in range(min(n, len(texts)))]


def query_image_files(datasets: Path, n: int = 32) -> list[Path]:
    """Uploads: hm-dev product photos (240x360 JPEG, about 11 KB), every 150th article."""
    folder = hm_dev(datasets) / "images"
    files = sorted(folder.glob("*.jpg"))[::150][:n]
    if not files:
        raise RuntimeError(f"no JPEG files under {folder}")
    return files


def query_images(datasets: Path, n: int = 32) -> list[bytes]:
    return [f.read_bytes() for f in query_image_files(datasets, n)]


# -- the client --------------------------------------------------------------------------------

Call = Callable[[httpx.AsyncClient, int], Awaitable[float | None]]
"""Sends request ``i``; returns the server's own ``tookMs`` when the answer has one."""


class BadAnswer(Exception):
    pass


def _check_page(response: httpx.Response, field: str) -> float:
    if response.status_code != 200:
        raise BadAnswer(f"HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    if body.get("errors"):
        raise BadAnswer(f"GraphQL errors: {json.dumps(body['errors'])[:200]}")
    page = body["data"][field]
    if not page["hits"]:
        raise BadAnswer("no hits")
    return float(page["tookMs"])


def make_calls(texts: Sequence[str], images: Sequence[bytes]) -> dict[str, Call]:
    async def graphql_text(client: httpx.AsyncClient, i: int) -> float | None:
        payload = {"query": TEXT_QUERY, "variables": {"text": texts[i % len(texts)], "topK": TOP_K}}
        return _check_page(await client.post("/graphql", json=payload), "searchByText")

    async def graphql_text_visual(client: httpx.AsyncClient, i: int) -> float | None:
        text = texts[i % len(texts)]
        payload = {"query": TEXT_VISUAL_QUERY, "variables": {"text": text, "topK": TOP_K}}
        return _check_page(await client.post("/graphql", json=payload), "searchByText")

    async def rest_text(client: httpx.AsyncClient, i: int) -> float | None:
        response = await client.post("/get_image_by_text", json={"text": texts[i % len(texts)]})
        if response.status_code != 200:
            raise BadAnswer(f"HTTP {response.status_code}: {response.text[:200]}")
        if not response.json().get("id"):
            raise BadAnswer("no product in the answer")
        return None

    async def graphql_image(client: httpx.AsyncClient, i: int) -> float | None:
        operations = {"query": IMAGE_QUERY, "variables": {"image": None, "topK": TOP_K}}
        response = await client.post(
            "/graphql",
            data={"operations": json.dumps(operations), "map": '{"0": ["variables.image"]}'},
            files={"0": ("query.jpg", images[i % len(images)], "image/jpeg")},
        )
        return _check_page(response, "searchByImage")

    return {
        "graphql_text": graphql_text,
        "graphql_text_visual": graphql_text_visual,
        "rest_text": rest_text,
        "graphql_image": graphql_image,
    }


KIND_LABELS = {
    "graphql_text": "searchByText (GraphQL)",
    "graphql_text_visual": "searchByText mode VISUAL (GraphQL)",
    "rest_text": "POST /get_image_by_text",
    "graphql_image": "searchByImage upload (GraphQL)",
}


@dataclass
class Phase:
    kind: str
    clients: int
    stats: Stats
    server_took: Stats
    """The search service's own time (``tookMs``: encode + index + catalog), GraphQL only."""
    qps: float
    requests: int
    errors: int
    error_samples: list[str]
    wall_s: float
    server_cpu_ms: float | None = None
    """The server's CPU time (every worker process and thread) per recorded request."""
    client_cpu_ms: float | None = None
    """This process's CPU time (the load generator) per recorded request."""

    def to_json(self) -> Json:
        per_request = {"server": self.server_cpu_ms, "client": self.client_cpu_ms}
        return {
            "kind": self.kind,
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "wall_s": round(self.wall_s, 3),
            "qps": round(self.qps, 2),
            "latency_ms": self.stats.to_json(),
            "server_took_ms": self.server_took.to_json(),
            "cpu_ms_per_request": {k: _rounded(v) for k, v in per_request.items()},
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def run_phase(
    base_url: str,
    kind: str,
    call: Call,
    clients: int,
    requests: int,
    warmup: int,
    transport: httpx.AsyncBaseTransport | None = None,
    server_pid: int | None = None,
) -> Phase:
    """``warmup`` unrecorded requests (sequential, then concurrent), then ``requests`` spread
    over ``clients`` concurrent senders. ``transport``: for tests (an ASGI app in-process).
    ``server_pid``: the server whose CPU time the recorded requests cost is read
    (``Phase.server_cpu_ms``; the q/s of a phase moves with whatever else the machine runs,
    its CPU time per request much less)."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=60.0, limits=limits, transport=transport
    ) as client:
        latencies: list[float] = []
        took: list[float] = []
        errors: list[str] = []

        async def worker(counter: Iterator[int], total: int, record: bool) -> None:
            while (i := next(counter)) < total:
                started = time.perf_counter()
                try:
                    server_ms = await call(client, i)
                except (BadAnswer, httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    if record:
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                if record:
                    latencies.append((time.perf_counter() - started) * 1000)
                    if server_ms is not None:
                        took.append(server_ms)

        await asyncio.gather(*(worker(itertools.count(), warmup, False) for _ in range(1)))
        if clients > 1:  # warm every connection (and every worker process)
            shared = itertools.count()
            await asyncio.gather(*(worker(shared, warmup, False) for _ in range(clients)))
        shared = itertools.count()
        server_cpu = tree_cpu_seconds(server_pid) if server_pid is not None else None
        client_cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker(shared, requests, True) for _ in range(clients)))
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        if server_pid is not None and server_cpu is not None:
            server_cpu = tree_cpu_seconds(server_pid) - server_cpu
    answered = max(len(latencies), 1)
    return Phase(
        kind=kind,
        clients=clients,
        stats=Stats.of(latencies),
        server_took=Stats.of(took),
        qps=len(latencies) / wall if wall > 0 else 0.0,
        requests=requests,
        errors=len(errors),
        error_samples=errors[:5],
        wall_s=wall,
        server_cpu_ms=None if server_cpu is None else server_cpu * 1000 / answered,
        client_cpu_ms=client_cpu * 1000 / answered,
    )


# -- the server's own stage timings (/metrics) -------------------------------------------------

STAGE_METRICS = {
    "encode": "fashion_search_encode_duration_seconds",
    "index": "fashion_search_index_query_duration_seconds",
    "catalog": "fashion_search_catalog_fetch_duration_seconds",
}


def scrape_stages(base_url: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) per search stage, summed over encoders. With several worker
    processes each reports its own numbers, so this is only meaningful with one."""
    text = httpx.get(f"{base_url}/metrics", timeout=10.0).text
    totals = {stage: [0.0, 0.0] for stage in STAGE_METRICS}
    for line in text.splitlines():
        for stage, metric in STAGE_METRICS.items():
            for suffix, slot in (("_sum{", 0), ("_count{", 1)):
                if line.startswith(metric + suffix):
                    totals[stage][slot] += float(line.rsplit(" ", 1)[1])
    return {stage: (v[0], v[1]) for stage, v in totals.items()}


def stage_means_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> Json:
    means: Json = {}
    for stage in STAGE_METRICS:
        seconds = after[stage][0] - before[stage][0]
        count = after[stage][1] - before[stage][1]
        means[stage] = round(seconds / count * 1000, 3) if count else None
    return means


# -- the encoder and the index alone -----------------------------------------------------------


class StageTimer:
    """The encoder call alone and the FAISS query alone, in this process, on the same index
    files as the server: encode_texts / encode_images of one query, then
    FaissVectorIndex.query_sync for the top 11 (as the search service asks)."""

    def __init__(self, home: Path, encoder: EncoderChoice) -> None:
        from fashion_search.settings import Settings
        from fashion_search.wiring import build_encoders
        from stores.vectors.faiss_index import FaissVectorIndex

        settings = Settings(home=home, encoder=encoder.id)
        self.model = build_encoders(settings).get(encoder.id)
        self.index = FaissVectorIndex(
            settings.vectors_dir, hnsw_threshold=settings.faiss_hnsw_threshold
        )
        self.vectors_dir = settings.vectors_dir

    def measure(
        self, texts: Sequence[str], images: Sequence[bytes], repeats: int, torch_threads: int
    ) -> Json:
        """With ``torch_threads`` intra-op threads (0: one per core, torch's default), like
        the server configuration it is compared with."""
        import os

        import torch

        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        model, index, wanted = self.model, self.index, TOP_K + 1
        for i in range(5):  # load and warm up both towers and the index
            index.query_sync(model.id, model.encode_texts([texts[i % len(texts)]])[0], wanted)
            model.encode_images([images[i % len(images)]])

        text_ms: list[float] = []
        image_ms: list[float] = []
        index_ms: list[float] = []
        for i in range(repeats):
            t0 = time.perf_counter()
            vector = model.encode_texts([texts[i % len(texts)]])[0]
            t1 = time.perf_counter()
            hits = index.query_sync(model.id, vector, wanted)
            t2 = time.perf_counter()
            if not hits:
                raise RuntimeError(f"the index under {self.vectors_dir} has no {model.id} vectors")
            text_ms.append((t1 - t0) * 1000)
            index_ms.append((t2 - t1) * 1000)
        for i in range(repeats):
            t0 = time.perf_counter()
            vector = model.encode_images([images[i % len(images)]])[0]
            t1 = time.perf_counter()
            index.query_sync(model.id, vector, wanted)
            t2 = time.perf_counter()
            image_ms.append((t1 - t0) * 1000)
            index_ms.append((t2 - t1) * 1000)
        return {
            "torch_threads": torch.get_num_threads(),
            "encode_text_ms": Stats.of(text_ms).to_json(),
            "encode_image_ms": Stats.of(image_ms).to_json(),
            "index_query_ms": Stats.of(index_ms).to_json(),
            "index_vectors": index.count_sync(model.id),
            "index_kind": index.kind(model.id),
        }


# -- the benchmark -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    workers: int
    torch_threads: int

    @property
    def label(self) -> str:
        threads = "default" if self.torch_threads == 0 else str(self.torch_threads)
        return f"workers={self.workers}, torch threads={threads}"

    def env(self) -> dict[str, str]:
        return {"FASHION_SEARCH_TORCH_THREADS": str(self.torch_threads)}


def parse_configs(spec: str) -> list[ServerConfig]:
    """``1x0,2x1``: workers x torch threads (0 = torch's default), comma-separated."""
    configs: list[ServerConfig] = []
    for part in spec.split(","):
        workers, _, threads = part.strip().partition("x")
        configs.append(ServerConfig(int(workers), int(threads or 0)))
    return configs


BASELINE_KINDS = ("graphql_text",)
"""What a baseline checkout is asked by default: its text search (an older schema may lack
``mode``)."""
P50_RATIO_TARGET = 12 / 11.6
"""Issue 15: HYBRID text p50 <= 12 ms where the code it was filed at measured 11.6 ms."""
QPS_RATIO_TARGET = 1.0
ALTERNATING_WARMUP = 10
"""Issue 15: the 8-client throughput not below what the code it was filed at served."""


@dataclass(frozen=True)
class Side:
    """The code a run's servers execute: this checkout, or a baseline checkout on the
    catalog that checkout prepared."""

    name: str
    home: Path
    encoder: EncoderChoice
    kinds: Sequence[str]
    tree: Path | None = None
    """None: this checkout."""


def run(
    *,
    work_dir: Path,
    datasets: Path,
    encoder: EncoderChoice,
    configs: Sequence[ServerConfig],
    kaggle_limit: int | None = None,
    hm_limit: int | None = None,
    requests_1: int = 200,
    requests_8: int = 400,
    concurrency: int = 8,
    stage_repeats: int = 200,
    kinds: Sequence[str] = ("graphql_text", "rest_text", "graphql_image"),
    baseline: TreeCatalog | None = None,
    baseline_kinds: Sequence[str] = BASELINE_KINDS,
    rounds: int = 1,
) -> Result:
    """``baseline``: a server of another checkout (e.g. the revision an issue's "today"
    figures were measured at) runs beside this checkout's, and their phases take turns,
    ``rounds`` times in alternating order, so that both meet the same load; the result
    compares them round by round."""
    result = Result(
        name="latency",
        config={
            "encoder": encoder.to_json(),
            "servers": [c.label for c in configs],
            "kaggle_limit": kaggle_limit,
            "hm_limit": hm_limit,
            "requests_1_client": requests_1,
            "requests_concurrent": requests_8,
            "concurrency": concurrency,
            "stage_repeats": stage_repeats,
            "top_k": TOP_K,
            "uploads": "hm-dev photos, 240x360 JPEG (~11 KB)",
            "kinds": list(kinds),
            "rounds": rounds,
        },
        notes=standin_note(encoder),
    )
    home = catalog_home(work_dir, encoder, kaggle_limit, hm_limit)
    console.print(f"[bold]latency[/]: catalog in {home}")
    result.data["catalog"] = prepare_catalog(home, encoder, datasets, kaggle_limit, hm_limit)
    sides = [Side("this", home, encoder, kinds)]
    result.data["trees"] = {"this": tree_revision(REPO_ROOT)}
    if baseline is not None:
        sides.insert(
            0, Side("baseline", baseline.home, baseline.encoder, baseline_kinds, baseline.tree)
        )
        result.data["trees"]["baseline"] = tree_revision(baseline.tree)
        result.data["baseline"] = {
            "tree": str(baseline.tree),
            "home": str(baseline.home),
            "encoder": baseline.encoder.to_json(),
            "catalog": baseline.counts,
        }
    texts = query_texts()
    images = query_images(datasets)
    calls = make_calls(texts, images)
    timer: StageTimer | None = None
    runs: list[Json] = []
    phases = (requests_1, requests_8, concurrency)
    alternated: Json = {}
    for config in configs:
        with contextlib.ExitStack() as stack:
            servers = {side.name: start_server(stack, side, config, calls) for side in sides}
            console.print("  encoder and index alone (servers idle) ...")
            timer = timer or StageTimer(home, encoder)
            stages = timer.measure(texts, images, stage_repeats, config.torch_threads)
            for round_ in range(rounds):
                for side in sides if round_ % 2 == 0 else sides[::-1]:
                    label = _run_label(config, side, result.data["trees"], rounds, round_)
                    console.print(f"  server: {label}")
                    measured = time_phases(servers[side.name], side, config, calls, *phases)
                    if side.tree is None and round_ == 0:
                        measured["stages_alone"] = stages
                    runs.append({"server": label, "side": side.name, "round": round_, **measured})
            if len(sides) > 1:
                urls = {name: started.server.base_url for name, started in servers.items()}
                alternated[config.label] = asyncio.run(
                    one_client_alternating(urls, sides, calls, requests_1 * rounds)
                )
    result.data["runs"] = runs
    result.checks = latency_checks([r for r in runs if "stages_alone" in r], concurrency)
    if baseline is not None:
        result.data["against_baseline"] = baseline_ratios(runs, configs, concurrency)
        result.data["one_client_alternating"] = alternated
        result.checks += baseline_checks(result.data["against_baseline"], concurrency)
        result.checks += alternating_checks(alternated)
    return result


async def one_client_alternating(
    urls: dict[str, str],
    sides: Sequence[Side],
    calls: dict[str, Call],
    requests: int,
    transports: dict[str, httpx.AsyncBaseTransport] | None = None,
) -> Json:
    """Per kind of this checkout: one client asking the baseline (the same kind when it was
    asked it, else its text search) and this checkout in turn, request by request, so that
    a load changing within seconds meets both alike; each side's latency and the ratio of
    the p50s. ``transports``: for tests (apps in-process)."""
    baseline, this = sides
    out: Json = {}
    for kind in this.kinds:
        base_kind = kind if kind in baseline.kinds else "graphql_text"
        targets = ((baseline.name, base_kind), (this.name, kind))
        latencies: dict[str, list[float]] = {name: [] for name, _ in targets}
        errors = 0
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=urls[name],
                        timeout=60.0,
                        transport=(transports or {}).get(name),
                    )
                )
                for name, _ in targets
            }
            for i in range(ALTERNATING_WARMUP + requests):
                for name, target_kind in targets if i % 2 == 0 else targets[::-1]:
                    started = time.perf_counter()
                    try:
                        await calls[target_kind](clients[name], i)
                    except (BadAnswer, httpx.HTTPError, ValueError, KeyError, TypeError):
                        errors += 1
                        continue
                    if i >= ALTERNATING_WARMUP:
                        latencies[name].append((time.perf_counter() - started) * 1000)
        stats = {name: Stats.of(values) for name, values in latencies.items()}
        out[kind] = {
            "baseline_kind": base_kind,
            "latency_ms": {name: s.to_json() for name, s in stats.items()},
            "errors": errors,
            "p50_ratio": round(stats[this.name].p50 / stats[baseline.name].p50, 4),
        }
        console.print(
            f"    {KIND_LABELS[kind]:<32} 1 client, alternating with the baseline: p50 "
            f"{stats[this.name].p50:.1f} against {stats[baseline.name].p50:.1f} ms"
        )
    return out


def alternating_checks(alternated: Json) -> list[Check]:
    return [
        at_most(
            f"{KIND_LABELS[kind]} / baseline, 1 client p50, alternating [{server}]",
            figures["p50_ratio"],
            P50_RATIO_TARGET,
            "x",
        )
        for server, kinds in alternated.items()
        for kind, figures in kinds.items()
    ]


def _run_label(config: ServerConfig, side: Side, trees: Json, rounds: int, round_: int) -> str:
    label = config.label
    if side.tree is not None:
        label += f", baseline {trees['baseline']}"
    return label + (f", round {round_ + 1}" if rounds > 1 else "")


@dataclass
class Started:
    server: Server
    ready_s: float


def start_server(
    stack: contextlib.ExitStack, side: Side, config: ServerConfig, calls: dict[str, Call]
) -> Started:
    """A server of ``side``'s code, ready and warmed up, stopped when ``stack`` closes (the
    sides' servers stay up together, so that their rounds can alternate within seconds)."""
    server = stack.enter_context(
        serve(
            side.home,
            side.encoder,
            workers=config.workers,
            extra_env=config.env(),
            tree=side.tree,
            log_name=f"serve-{side.name}.log",
        )
    )
    ready_s = server.wait_ready()
    # one text search per worker starts each catalog's in-memory BM25 snapshot (built in the
    # background, seconds on the full catalog; FTS5 answers until then), so the timed
    # phases measure the steady state
    asyncio.run(
        run_phase(
            server.base_url, "graphql_text", calls["graphql_text"], config.workers,
            4 * config.workers, 0,
        )
    )  # fmt: skip
    return Started(server, ready_s)


def time_phases(
    started: Started,
    side: Side,
    config: ServerConfig,
    calls: dict[str, Call],
    requests_1: int,
    requests_8: int,
    concurrency: int,
) -> Json:
    """Each of ``side``'s kinds with 1 client, then ``concurrency`` clients."""
    server = started.server
    phases: list[Phase] = []
    in_server: list[Json] = []
    for kind in side.kinds:
        for clients, total in ((1, requests_1), (concurrency, requests_8)):
            scrape = config.workers == 1 and side.tree is None
            before = scrape_stages(server.base_url) if scrape else None
            phase = asyncio.run(
                run_phase(
                    server.base_url, kind, calls[kind], clients, total,
                    warmup=max(10, 2 * clients), server_pid=server.pid,
                )
            )  # fmt: skip
            console.print(
                f"    {KIND_LABELS[kind]:<32} {clients} client(s): p50 {phase.stats.p50:.1f} ms, "
                f"p99 {phase.stats.p99:.1f} ms, {phase.qps:.1f} q/s, "
                f"server CPU {phase.server_cpu_ms or 0:.1f} ms/request, errors {phase.errors}"
            )
            phases.append(phase)
            if before is not None:
                means = stage_means_ms(before, scrape_stages(server.base_url))
                in_server.append({"kind": kind, "clients": clients, "mean_ms": means})
    return {
        "workers": config.workers,
        "torch_threads": config.torch_threads,
        "ready_s": round(started.ready_s, 2),
        "server_rss_mib": round(mib(tree_rss_bytes(server.pid)), 1),
        "phases": [p.to_json() for p in phases],
        "in_server_stage_means": in_server,
    }


def baseline_ratios(
    runs: Sequence[Json], configs: Sequence[ServerConfig], concurrency: int
) -> Json:
    """Per server configuration and kind of this checkout: its 1-client p50 and
    ``concurrency``-client q/s over the baseline's (the same kind when the baseline was
    asked it, else its text search), per round (the two sides met the same load within a
    round) and their median."""
    out: Json = {}
    for config in configs:
        rows: dict[str, Json] = {}
        for round_ in sorted({int(r["round"]) for r in runs}):
            mine = [r for r in runs if r["round"] == round_ and r["workers"] == config.workers
                    and r["torch_threads"] == config.torch_threads]  # fmt: skip
            base = next((r for r in mine if r["side"] == "baseline"), None)
            this = next((r for r in mine if r["side"] == "this"), None)
            if base is None or this is None:
                continue
            for phase in this["phases"]:
                kind, clients = phase["kind"], phase["clients"]
                row = rows.setdefault(
                    kind, {"p50_ratio": [], "qps_ratio": [], "server_cpu_ratio": []}
                )
                same = _phase(base, kind, clients) or _phase(base, "graphql_text", clients)
                if same is None:
                    continue
                if clients == 1:
                    row["p50_ratio"].append(phase["latency_ms"]["p50"] / same["latency_ms"]["p50"])
                if clients == concurrency:
                    row["qps_ratio"].append(phase["qps"] / same["qps"])
                    cpu = _server_cpu_ratio(phase, same)
                    if cpu is not None:
                        row["server_cpu_ratio"].append(cpu)
        out[config.label] = {
            kind: {
                key: {"rounds": [round(v, 4) for v in values],
                      "median": round(float(np.median(values)), 4) if values else None}
                for key, values in row.items()
            }
            for kind, row in rows.items()
        }  # fmt: skip
    return out


def _server_cpu_ratio(phase: Json, baseline: Json) -> float | None:
    """This side's server CPU per request over the baseline's (below 1: less work)."""
    mine = phase.get("cpu_ms_per_request", {}).get("server")
    theirs = baseline.get("cpu_ms_per_request", {}).get("server")
    return mine / theirs if mine and theirs else None


def baseline_checks(ratios: Json, concurrency: int) -> list[Check]:
    """Issue 15's cost targets as ratios to the baseline measured in the same run."""
    checks: list[Check] = []
    for server, kinds in ratios.items():
        for kind, figures in kinds.items():
            p50, qps = figures["p50_ratio"]["median"], figures["qps_ratio"]["median"]
            name = f"{KIND_LABELS[kind]} / baseline"
            if p50 is not None:
                checks.append(
                    at_most(f"{name}, 1 client p50 [{server}]", p50, P50_RATIO_TARGET, "x")
                )
            if qps is not None:
                checks.append(
                    at_least(
                        f"{name}, {concurrency} clients q/s [{server}]", qps, QPS_RATIO_TARGET, "x"
                    )
                )
            cpu = figures.get("server_cpu_ratio", {}).get("median")
            if cpu is not None:
                checks.append(
                    info(
                        f"{name}, {concurrency} clients server CPU per request [{server}]", cpu, "x"
                    )
                )
    return checks


def _phase(run: Json, kind: str, clients: int) -> Json | None:
    for phase in run["phases"]:
        if phase["kind"] == kind and phase["clients"] == clients:
            found: Json = phase
            return found
    return None


def latency_checks(runs: Sequence[Json], concurrency: int) -> list[Check]:
    checks: list[Check] = []
    for run in runs:
        tag = f"[{run['server']}]"
        stages = run["stages_alone"]
        index_p50 = float(stages["index_query_ms"]["p50"])
        alone = {
            "graphql_text": float(stages["encode_text_ms"]["p50"]) + index_p50,
            "graphql_text_visual": float(stages["encode_text_ms"]["p50"]) + index_p50,
            "rest_text": float(stages["encode_text_ms"]["p50"]) + index_p50,
            "graphql_image": float(stages["encode_image_ms"]["p50"]) + index_p50,
        }
        threads = f"{stages['torch_threads']} torch thread(s)"
        checks.append(
            info(f"encode text alone p50 {tag}", alone["graphql_text"] - index_p50, "ms", threads)
        )
        checks.append(
            info(f"encode image alone p50 {tag}", alone["graphql_image"] - index_p50, "ms", threads)
        )
        checks.append(
            info(
                f"index query alone p50 {tag}",
                index_p50,
                "ms",
                f"{stages['index_kind']}, {stages['index_vectors']:,} vectors",
            )
        )
        text1 = _phase(run, "graphql_text", 1)
        if text1:
            checks.append(
                at_most(f"text GraphQL 1 client p50 {tag}", text1["latency_ms"]["p50"], 25, "ms")
            )
            checks.append(
                at_most(f"text GraphQL 1 client p99 {tag}", text1["latency_ms"]["p99"], 60, "ms")
            )
        image1 = _phase(run, "graphql_image", 1)
        if image1:
            checks.append(
                at_most(f"image upload 1 client p50 {tag}", image1["latency_ms"]["p50"], 45, "ms")
            )
        for kind in ("graphql_text", "graphql_text_visual", "rest_text", "graphql_image"):
            phase = _phase(run, kind, 1)
            if phase:
                ratio = phase["latency_ms"]["p50"] / alone[kind]
                checks.append(
                    at_most(
                        f"overhead {KIND_LABELS[kind]} {tag}",
                        ratio,
                        1.5,
                        "x",
                        f"e2e p50 / (encode p50 + index p50 = {alone[kind]:.1f} ms)",
                    )
                )
        text8 = _phase(run, "graphql_text", concurrency)
        if text8:
            checks.append(
                at_least(f"text GraphQL {concurrency} clients {tag}", text8["qps"], 60, "q/s")
            )
        for phase in run["phases"]:
            if phase["clients"] == concurrency and phase["kind"] != "graphql_text":
                checks.append(
                    info(
                        f"{KIND_LABELS[phase['kind']]} {concurrency} clients {tag}",
                        phase["qps"],
                        "q/s",
                        f"p50 {phase['latency_ms']['p50']:.1f} ms",
                    )
                )
        errors = sum(int(p["errors"]) for p in run["phases"])
        checks.append(at_most(f"errors, all phases {tag}", errors, 0, ""))
    return checks
