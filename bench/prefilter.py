"""The flat spaces' prefilters (``FASHION_SEARCH_FAISS_PREFILTER``: int8, float16, off) on
the latency bench's catalog, in-process: whether they answer alike, and what each costs.

- Answers: for each of the bench's 64 shopper texts, the search service's HYBRID and
  VISUAL pages (top 10: ids, order, scores and signals) and the raw lists of both vector
  spaces at depth 11 (VISUAL's page) and 200 (what fusion reads); for each of the latency
  bench's 32 uploads, the image space's lists. Every prefilter's answer is compared with
  the full float32 scan's ("off"): the share of identical answers and the largest score
  difference.
- Cost: each space's search at depth 200 and 11 and the HYBRID search service, the
  prefilters alternating per query (the order turning), so that all meet the same load;
  medians of wall time, each after an unrelated 64 MB read (a request's encoder run leaves
  the caches cold for the scan in a server; ``--warm`` skips it).

    PYTHONPATH=. .venv/bin/python -m bench.prefilter [--home DIR] [--rounds 3] [--warm]

Writes bench/results/prefilter.json (``--out`` to change).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.catalog import bench_catalog, catalog_bench_parser
from bench.common import Result, console, datasets_dir, write_result
from bench.latency import TOP_K, query_images, query_texts

PREFILTERS = ("int8", "int8, restricted search", "float16", "off")
"""``FASHION_SEARCH_FAISS_PREFILTER`` values, and the 8-bit pass with its candidates scored by
a flat search restricted to them (``faiss_index.RESCORE_WITH_KERNEL`` off: the public path)."""
DEPTHS = (TOP_K + 1, 200)
EVICT_FLOATS = 8_000_000
"""64 MB of float64s, read before each timed call: the L3 cache holds 32 MB."""


def _same(a: Sequence[tuple[str, float]], b: Sequence[tuple[str, float]]) -> tuple[bool, float]:
    """Whether two ranked lists have the same ids in the same order, and the largest score
    difference between them (inf when they differ)."""
    if [pid for pid, _ in a] != [pid for pid, _ in b]:
        return False, float("inf")
    gap = max((abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)), default=0.0)
    return gap == 0.0, gap


def _page(page: Any) -> list[tuple[str, float]]:
    return [(hit.product.id, hit.score) for hit in page.hits]


def _use(index: Any, mode: str) -> None:
    from stores.vectors import faiss_index

    index.prefilter = mode.split(",")[0]
    faiss_index.RESCORE_WITH_KERNEL = mode != "int8, restricted search"


async def measure(home: Path, rounds: int, warm: bool, datasets: Path) -> dict[str, Any]:
    from domain.model import SearchMode, SearchQuery, TextQuery, product_text_space
    from fashion_search.settings import Settings
    from fashion_search.wiring import build
    from stores.catalog.sqlite_catalog import SqliteCatalog
    from stores.vectors.faiss_index import FaissVectorIndex

    container = build(Settings(home=home, torch_threads=1))
    index, catalog, search = container.index, container.catalog, container.search
    assert isinstance(index, FaissVectorIndex)
    assert isinstance(catalog, SqliteCatalog)
    catalog.build_bm25_snapshot_sync()
    encoder = container.encoders.get(None)
    texts = query_texts()
    text_vectors = encoder.encode_texts(texts)
    image_vectors = encoder.encode_images(query_images(datasets))
    spaces = {"image space": encoder.id, "product-words space": product_text_space(encoder.id)}

    def lists(mode: str) -> dict[str, list[tuple[str, float]]]:
        _use(index, mode)
        out: dict[str, list[tuple[str, float]]] = {}
        for name, space in spaces.items():
            for i, vector in enumerate(text_vectors):
                for depth in DEPTHS:
                    out[f"{name}, text {i}, top {depth}"] = index.query_sync(space, vector, depth)
        for i, vector in enumerate(image_vectors):
            for depth in DEPTHS:
                out[f"image space, upload {i}, top {depth}"] = index.query_sync(
                    encoder.id, vector, depth
                )
        return out

    async def pages(mode: str) -> dict[str, list[tuple[str, float]]]:
        _use(index, mode)
        out: dict[str, list[tuple[str, float]]] = {}
        for text in texts:
            for search_mode in (SearchMode.HYBRID, SearchMode.VISUAL):
                query = SearchQuery(text=TextQuery(text), top_k=TOP_K, mode=search_mode)
                page = await search.search(query)
                out[f"{search_mode.value} page, {text!r}"] = _page(page)
        return out

    answers = {mode: {**lists(mode), **await pages(mode)} for mode in PREFILTERS}
    identity: dict[str, Any] = {}
    for mode in PREFILTERS[:-1]:
        compared = [_same(answers[mode][key], answers["off"][key]) for key in answers["off"]]
        identity[mode] = {
            "answers": len(compared),
            "identical": sum(same for same, _ in compared),
            "same_ids_and_order": sum(bool(np.isfinite(gap)) for _, gap in compared),
            "largest_score_difference": max(gap for _, gap in compared),
        }

    junk = np.ones(EVICT_FLOATS)
    timings: dict[str, dict[str, list[float]]] = {}

    async def timed(name: str, mode: str, call: Callable[[], object]) -> None:
        _use(index, mode)
        if not warm:
            junk.sum()
        started = time.perf_counter()
        outcome = call()
        if inspect.isawaitable(outcome):
            await outcome
        elapsed = (time.perf_counter() - started) * 1000
        timings.setdefault(name, {}).setdefault(mode, []).append(elapsed)

    turn, modes = 0, len(PREFILTERS)
    for _ in range(rounds):
        for text, vector in zip(texts, text_vectors, strict=True):
            turn += 1
            query = SearchQuery(text=TextQuery(text), top_k=TOP_K)
            for mode in PREFILTERS[turn % modes :] + PREFILTERS[: turn % modes]:
                for name, space in spaces.items():
                    for depth in DEPTHS:
                        await timed(
                            f"{name} top {depth}",
                            mode,
                            functools.partial(index.query_sync, space, vector, depth),
                        )
                await timed("search service HYBRID", mode, functools.partial(search.search, query))
    await container.aclose()
    return {
        "queries": {"texts": len(texts), "uploads": len(image_vectors)},
        "vectors": {name: index.count_sync(space) for name, space in spaces.items()},
        "identity_with_the_full_scan": identity,
        "wall_p50_ms": {
            name: {mode: round(statistics.median(v), 3) for mode, v in per_mode.items()}
            for name, per_mode in timings.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = catalog_bench_parser("bench.prefilter", __doc__, "prefilter.json")
    parser.add_argument("--rounds", type=int, default=3, help="Passes over the 64 texts.")
    parser.add_argument("--warm", action="store_true", help="No cache eviction before a call.")
    parser.add_argument("--datasets", type=Path, default=None)
    args = parser.parse_args(argv)
    bench = bench_catalog(args, "bench.prefilter", argv)
    if bench is None:
        return 1
    config = {"home": str(bench.home), "rounds": args.rounds, "command": bench.command}
    result = Result(name=args.out.stem, config=config)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result.data = asyncio.run(
        measure(bench.home, args.rounds, args.warm, datasets_dir(args.datasets))
    )
    for name, figures in result.data["wall_p50_ms"].items():
        console.print(f"{name:<32} " + "  ".join(f"{m} {v:.3f}" for m, v in figures.items()))
    console.print(result.data["identity_with_the_full_scan"])
    path = write_result(result, args.out.parent)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
