"""Where a HYBRID text search's time goes, stage by stage, in-process on the latency bench's
catalog (``python -m bench latency`` builds it: the Kaggle zip and hm-dev, about 21k
products): the GraphQL request through the ASGI app (no network), the same request with the
search answered from a page computed beforehand (the GraphQL layer alone), the search
service alone, and each stage alone on the same query (the text encoding, the image-space
FAISS search, the product-text FAISS search, the lexical top 200, the exact-name check, the
fusion, the page's products from SQLite, facet counts over the top 200), medians of wall and
CPU time over the bench's shopper texts, interleaved per query so every stage sees the same
load. The stages' order turns by one at each query: a stage that always ran after the same
one would inherit its caches (the encoder's weights and a vector space fill the L3 cache),
which made the first stage of the list look slower than the same work later in it.

    PYTHONPATH=. .venv/bin/python -m bench.hybrid_stages [--home DIR] [--rounds 4] [--profile]

Writes bench/results/hybrid_stages.json (``--out`` to change). ``--profile`` prints a
cProfile of the GraphQL HYBRID requests, sorted by own time.
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench.api_overhead import call
from bench.catalog import bench_catalog, catalog_bench_parser
from bench.common import Result, console, write_result
from bench.latency import SEARCH_FIELDS, TOP_K, query_texts

WARMUP = 20

HYBRID_QUERY = (
    "query SearchText($text: String!, $topK: Int!) "
    f"{{ searchByText(text: $text, topK: $topK) {{ {SEARCH_FIELDS} }} }}"
)
VISUAL_QUERY = (
    "query SearchTextVisual($text: String!, $topK: Int!) "
    f"{{ searchByText(text: $text, topK: $topK, mode: VISUAL) {{ {SEARCH_FIELDS} }} }}"
)

Stage = Callable[[str], Awaitable[object]]


def answered_search(real: Any, pages: dict[str, Any]) -> Any:
    """A SearchService over the same stores whose ``search`` returns the page computed
    beforehand for the query's text: requests through it cost the GraphQL layer only."""
    from domain.model import SearchPage, SearchQuery
    from domain.services import SearchService

    class AnsweredSearch(SearchService):
        async def search(self, query: SearchQuery) -> SearchPage:
            assert query.text is not None
            page: SearchPage = pages[query.text.text]
            return page

    return AnsweredSearch(real._encoders, real._index, real._catalog, real._images)


def _median_ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


async def measure(home: Path, rounds: int, profile: bool, encoder_id: str) -> dict[str, Any]:
    from api import ApiConfig, create_app
    from domain.fusion import FUSION_DEPTH, Ranked, fuse
    from domain.model import SearchMode, SearchQuery, TextQuery, product_text_space
    from domain.services import EXACT_CANDIDATES, SearchService
    from fashion_search.asgi import api_services
    from fashion_search.settings import Settings
    from fashion_search.wiring import build
    from stores.catalog.sqlite_catalog import SqliteCatalog
    from stores.vectors.faiss_index import FaissVectorIndex

    settings = Settings(home=home, encoder=encoder_id, torch_threads=1)
    container = build(settings)
    app = create_app(api_services(container), ApiConfig(warm_up_encoder=False))
    search: SearchService = container.search
    pages: dict[str, Any] = {}
    answered = answered_search(search, pages)
    layer_app = create_app(
        dataclasses.replace(api_services(container), search=answered),
        ApiConfig(warm_up_encoder=False),
    )
    catalog, index = container.catalog, container.index
    assert isinstance(catalog, SqliteCatalog)
    assert isinstance(index, FaissVectorIndex)
    catalog.build_bm25_snapshot_sync()
    encoder = container.encoders.get(None)
    texts = query_texts()
    wanted = TOP_K + 1
    text_space = product_text_space(encoder.id)

    def body(query: str, text: str) -> bytes:
        variables = {"text": text, "topK": TOP_K}
        return json.dumps({"query": query, "variables": variables}).encode()

    async def graphql(query: str, text: str, through: Any = app) -> None:
        status, answer = await call(through, "/graphql", body(query, text))
        assert status == 200, answer[:300]
        assert b'"errors"' not in answer, answer[:300]

    # each stage alone, on the inputs the search gives it
    vector_of: dict[str, Any] = {}
    lists_of: dict[str, Ranked] = {}
    page_of: dict[str, list[str]] = {}

    async def encode(text: str) -> object:
        vector_of[text] = encoder.encode_texts([text])[0]
        return vector_of[text]

    async def visual(text: str) -> object:
        return index.query_sync(encoder.id, vector_of[text], FUSION_DEPTH)

    async def visual_page(text: str) -> object:
        return index.query_sync(encoder.id, vector_of[text], wanted)

    async def semantic(text: str) -> object:
        return index.query_sync(text_space, vector_of[text], FUSION_DEPTH)

    async def lexical(text: str) -> object:
        return catalog.search_text_sync(text, FUSION_DEPTH)

    async def lists(text: str) -> object:  # untimed inputs of the next stages
        lexical_hits = catalog.search_text_sync(text, FUSION_DEPTH)
        lists_of[text] = Ranked(
            visual=index.query_sync(encoder.id, vector_of[text], FUSION_DEPTH),
            semantic=index.query_sync(text_space, vector_of[text], FUSION_DEPTH),
            lexical=lexical_hits,
        )
        fused = fuse(lists_of[text], search.fusion, limit=wanted)
        page_of[text] = [h.product_id for h in fused.hits[:TOP_K]]
        return None

    async def exact(text: str) -> object:
        return SearchService._exact(text, lists_of[text].lexical[:EXACT_CANDIDATES])

    async def fusion(text: str) -> object:
        return fuse(lists_of[text], search.fusion, limit=wanted)

    async def page_products(text: str) -> object:
        return await catalog.get_many(page_of[text])

    async def facets(text: str) -> object:
        page = await search.search(SearchQuery(text=TextQuery(text), top_k=TOP_K))
        started = time.perf_counter()
        counts = await search.facet_counts(page)
        return time.perf_counter() - started, counts  # the search itself is not timed

    async def facets_loaded(text: str) -> object:  # the path without TagCounts
        page = await search.search(SearchQuery(text=TextQuery(text), top_k=TOP_K))
        started = time.perf_counter()
        counts: dict[str, dict[str, int]] = {}
        for product in (await catalog.get_many(page.ranked_ids)).values():
            for key, value in product.tags.items():
                per_value = counts.setdefault(key, {})
                per_value[value] = per_value.get(value, 0) + 1
        return time.perf_counter() - started, counts

    async def service_hybrid(text: str) -> object:
        return await search.search(SearchQuery(text=TextQuery(text), top_k=TOP_K))

    async def service_visual(text: str) -> object:
        query = SearchQuery(text=TextQuery(text), top_k=TOP_K, mode=SearchMode.VISUAL)
        return await search.search(query)

    async def graphql_hybrid(text: str) -> object:
        await graphql(HYBRID_QUERY, text)
        return None

    async def graphql_visual(text: str) -> object:
        await graphql(VISUAL_QUERY, text)
        return None

    async def graphql_layer(text: str) -> object:
        await graphql(HYBRID_QUERY, text, layer_app)
        return None

    stages: dict[str, Stage] = {
        "graphql HYBRID (request in-process)": graphql_hybrid,
        "graphql VISUAL (request in-process)": graphql_visual,
        "graphql layer alone (HYBRID request, search answered beforehand)": graphql_layer,
        "service HYBRID (search alone)": service_hybrid,
        "service VISUAL (search alone)": service_visual,
        "encode text": encode,
        "visual FAISS top 200": visual,
        "visual FAISS top 11 (VISUAL's page)": visual_page,
        "semantic FAISS top 200": semantic,
        "lexical top 200 (BM25 snapshot)": lexical,
        "exact-name check": exact,
        "fusion (3 lists, page hits, order)": fusion,
        "page products (SQLite get_many of 10)": page_products,
        "facet counts over the top 200 (not in the bench query)": facets,
        "facet counts, the 200 products loaded and counted": facets_loaded,
    }
    for text in texts:  # each stage's inputs, untimed
        await encode(text)
        await lists(text)
        pages[text] = await service_hybrid(text)
    for i in range(WARMUP):
        for run in stages.values():
            await run(texts[i % len(texts)])
    wall: dict[str, list[float]] = {name: [] for name in stages}
    cpu: dict[str, list[float]] = {name: [] for name in stages}
    names = list(stages)
    for round_ in range(rounds):
        for i, text in enumerate(texts):
            first = (round_ * len(texts) + i) % len(names)  # the order turns (see above)
            for name in names[first:] + names[:first]:
                run = stages[name]
                started, started_cpu = time.perf_counter(), time.process_time()
                outcome = await run(text)
                elapsed = time.perf_counter() - started
                elapsed_cpu = time.process_time() - started_cpu
                if name.startswith("facet"):
                    assert isinstance(outcome, tuple)
                    elapsed = elapsed_cpu = outcome[0]  # CPU: the counting is all CPU here
                wall[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(rounds):
            for text in texts:
                await graphql_hybrid(text)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(45)
    spaces = {space: index.count_sync(space) for space in index.encoder_ids_sync()}
    await container.aclose()
    return {
        "queries": len(texts) * rounds,
        "vectors": spaces,
        "stages": {
            name: {"wall_p50_ms": _median_ms(wall[name]), "cpu_p50_ms": _median_ms(cpu[name])}
            for name in stages
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = catalog_bench_parser("bench.hybrid_stages", __doc__, "hybrid_stages.json")
    parser.add_argument("--rounds", type=int, default=4, help="Passes over the 64 texts.")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    bench = bench_catalog(args, "bench.hybrid_stages", argv)
    if bench is None:
        return 1
    config = {"home": str(bench.home), "rounds": args.rounds, "command": bench.command}
    result = Result(name=args.out.stem, config=config)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result.data = asyncio.run(measure(bench.home, args.rounds, args.profile, bench.encoder.id))
    for name, figures in result.data["stages"].items():
        console.print(
            f"{name:<58} {figures['wall_p50_ms']:8.3f} ms wall {figures['cpu_p50_ms']:8.3f} ms CPU"
        )
    path = write_result(result, args.out.parent)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
