"""What the API layers add to a search, in-process and in CPU time: the ASGI app (middleware,
routing, GraphQL or the REST shim, serialisation) driven directly, without a network or an
HTTP client, over the real embedded stores (FAISS, SQLite, local images) holding hm-dev's
products with random vectors, and a stub encoder that costs nothing. The search service
alone (encode + index + catalog) is timed in the same run; the difference is the overhead
of the layers above it.

    python -m bench.api_overhead [--products 6000] [--requests 400] [--profile]

CPU time is the process's (``time.process_time``: the event loop plus the worker threads
the stores run in), median per request. ``--profile`` prints a cProfile of the GraphQL
requests, sorted by own time."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import csv
import json
import pstats
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import datasets_dir, hm_dev
from bench.latency import SEARCH_FIELDS, TOP_K, query_texts
from domain.model import EncoderInfo, Modality, Product, SearchQuery, TextQuery
from domain.ports import Encoder, Vectors

DIM = 256
TEXT_QUERY = (
    "query SearchText($text: String!, $topK: Int!) "
    f"{{ searchByText(text: $text, topK: $topK) {{ {SEARCH_FIELDS} }} }}"
)


class StubEncoder:
    """A fixed pseudo-random unit vector per text: costs microseconds."""

    id = "stub"
    dim = DIM
    modalities = frozenset({Modality.TEXT, Modality.IMAGE})

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(DIM) for t in texts]
        matrix = np.stack(rows).astype(np.float32)
        normalised: Vectors = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        return normalised

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        return self.encode_texts([str(len(b)) for b in images])


class StubProvider:
    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.default_id = encoder.id

    def get(self, encoder_id: str | None = None) -> Encoder:
        return self.encoder

    def available(self) -> list[EncoderInfo]:
        return [EncoderInfo(self.encoder.id, self.encoder.dim, self.encoder.modalities)]


def real_encoder(threads: int) -> Encoder:
    """The default encoder (fashion-lite) at ``threads`` torch threads, loaded and warm."""
    from fashion_search.settings import Settings
    from fashion_search.wiring import build_encoders

    encoder = build_encoders(Settings(torch_threads=threads)).get(None)
    for text in query_texts():
        encoder.encode_texts([text])
    return encoder


def load_products(limit: int) -> list[Product]:
    path = hm_dev(datasets_dir(None)) / "products.csv"
    products: list[Product] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            tags = {
                k: v
                for k, v in row.items()
                if k not in ("id", "image", "name", "description") and v
            }
            products.append(
                Product(
                    id=row["id"],
                    name=row["name"],
                    description=row["description"] or None,
                    tags=tags,
                    image_keys=(f"{row['id']}-0123456789abcdef0123.jpg",),
                )
            )
            if len(products) >= limit:
                break
    return products


Send = Callable[[dict[str, Any]], Awaitable[None]]


async def call(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST through the ASGI app, as uvicorn would drive it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"accept", b"*/*"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def measure(
    products: int,
    requests: int,
    profile: bool,
    sort: str = "tottime",
    encoder: Encoder | None = None,
) -> dict[str, tuple[float, float]]:
    """Median (CPU ms, wall ms) per request of the service alone, GraphQL and REST."""
    from api import ApiConfig, ApiServices, create_app
    from domain.services import CatalogService, SearchService
    from encoders.images import decode_image
    from stores.catalog.sqlite_catalog import SqliteCatalog
    from stores.images.local import LocalImageStore
    from stores.vectors.faiss_index import FaissVectorIndex

    with tempfile.TemporaryDirectory(prefix="api-overhead-") as tmp:
        home = Path(tmp)
        encoder = encoder or StubEncoder()
        provider = StubProvider(encoder)
        index = FaissVectorIndex(home / "vectors")
        catalog = SqliteCatalog(home / "catalog.sqlite3")
        images = LocalImageStore(home / "images", base_url="/images")
        items = load_products(products)
        await catalog.upsert_many(items)
        shape = (len(items), encoder.dim)
        vectors = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        await index.upsert(encoder.id, [p.id for p in items], vectors, [p.tags for p in items])
        await index.flush()
        search = SearchService(provider, index, catalog, images)
        services = ApiServices(
            search=search,
            catalog=CatalogService(provider, index, catalog, images),
            encoders=provider,
            index=index,
            catalog_store=catalog,
            images=images,
            image_decoder=decode_image,
        )
        app = create_app(services, ApiConfig(serve_images=True, warm_up_encoder=False))
        texts = query_texts()

        def graphql(i: int) -> bytes:
            variables = {"text": texts[i % len(texts)], "topK": TOP_K}
            return json.dumps({"query": TEXT_QUERY, "variables": variables}).encode()

        def rest(i: int) -> bytes:
            return json.dumps({"text": texts[i % len(texts)]}).encode()

        async def service(i: int) -> None:
            page = await search.search(
                SearchQuery(text=TextQuery(texts[i % len(texts)]), top_k=TOP_K)
            )
            assert page.hits

        async def graphql_call(i: int) -> None:
            status, body = await call(app, "/graphql", graphql(i))
            answer = json.loads(body)
            assert status == 200, body[:300]
            assert not answer.get("errors"), body[:300]
            assert len(answer["data"]["searchByText"]["hits"]) == TOP_K

        async def rest_call(i: int) -> None:
            status, body = await call(app, "/get_image_by_text", rest(i))
            assert status == 200, body[:300]
            assert json.loads(body)["id"], body[:300]

        async def cpu_ms(run: Callable[[int], Awaitable[None]]) -> list[tuple[float, float]]:
            for i in range(20):
                await run(i)
            times = []
            for i in range(requests):
                started, started_wall = time.process_time(), time.perf_counter()
                await run(i)
                cpu = (time.process_time() - started) * 1000
                times.append((cpu, (time.perf_counter() - started_wall) * 1000))
            return times

        results: dict[str, list[tuple[float, float]]] = {"service": [], "graphql": [], "rest": []}
        runs = {"service": service, "graphql": graphql_call, "rest": rest_call}
        for _ in range(3):  # interleaved rounds: a drifting machine load hits all alike
            for name, run in runs.items():
                results[name] += await cpu_ms(run)
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(requests):
                await graphql_call(i)
            profiler.disable()
            pstats.Stats(profiler).sort_stats(sort).print_stats(60)
        await catalog.close()
        await index.close()
    return {
        name: (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times))
        for name, times in results.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_overhead", description=__doc__)
    parser.add_argument("--products", type=int, default=6000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--real-encoder",
        type=int,
        metavar="THREADS",
        default=None,
        help="Use the default encoder (fashion-lite) at this many torch threads instead of "
        "the stub (its texts cost milliseconds; wall times then show the thread hand-offs).",
    )
    args = parser.parse_args(argv)
    encoder = real_encoder(args.real_encoder) if args.real_encoder is not None else None
    medians = asyncio.run(measure(args.products, args.requests, args.profile, encoder=encoder))
    cpu, wall = medians["service"]
    kind = "stub" if encoder is None else encoder.id
    print(
        f"search service alone ({kind} encoder, FAISS, SQLite): {cpu:.3f} ms CPU, {wall:.3f} ms wall"
    )
    for name in ("graphql", "rest"):
        total_cpu, total_wall = medians[name]
        print(
            f"{name:<8} request: {total_cpu:.3f} ms CPU, {total_wall:.3f} ms wall; above the "
            f"service: {total_cpu - cpu:.3f} ms CPU, {total_wall - wall:.3f} ms wall"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
