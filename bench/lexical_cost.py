"""What the lexical signal and the fusion add to a text search: ``search_text`` (top 200) on
the whole Kaggle catalog's words (14,888 products, no images needed), ranked by FTS5 and by
the in-memory BM25 snapshot (the default once built; the two interleaved per query, so both
see the same load), and ``fuse`` of three top-200 lists (hits made for a page of 10 and
the next one's first, ids for all, as a search does), medians over a set of shopper queries.

    PYTHONPATH=. .venv/bin/python -m bench.lexical_cost

Writes bench/results/lexical_cost.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from domain.fusion import FUSION_DEPTH, Ranked, fuse
from domain.model import Product
from fashion_search.settings import Settings
from ingest.readers import open_source
from stores.catalog.sqlite_catalog import SqliteCatalog

RESULTS = Path(__file__).resolve().parent / "results" / "lexical_cost.json"
QUERIES = [
    "black trousers",
    "lace dress",
    "t-shirt",
    "navy blue tshirts",
    "basics men black trousers",
    "white sneakers",
    "asdfgh",
    "summer dress",
    "red kurta",
    "running shoes",
]
ROUNDS = 20
PAGE = 10


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _ms95(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=20)[-1] * 1000, 3)


async def main() -> None:
    zip_path = Settings().datasets_dir / "kaggle-fashion-small.zip"
    with open_source(zip_path) as source:
        products = [
            Product(id=i.id, name=i.name, description=i.description, tags=i.tags)
            for i in source
            if i.id
        ]
    with tempfile.TemporaryDirectory() as tmp:
        catalog = SqliteCatalog(Path(tmp) / "catalog.sqlite3")
        started = time.perf_counter()
        catalog.upsert_many_sync(products)
        upsert_s = time.perf_counter() - started
        started = time.perf_counter()
        catalog.build_bm25_snapshot_sync()
        snapshot_s = time.perf_counter() - started
        snapshot = catalog._bm25
        catalog._build_bm25_soon = lambda: None  # type: ignore[method-assign]  # no rebuilds
        lexical_times: list[float] = []
        lexical_cpu: list[float] = []
        fts5_times: list[float] = []
        fuse_times: list[float] = []
        fuse_cpu: list[float] = []
        rng = np.random.default_rng(0)
        ids = [p.id for p in products]
        for _ in range(ROUNDS):
            for query in QUERIES:
                catalog._bm25 = None  # FTS5
                started = time.perf_counter()
                catalog.search_text_sync(query, FUSION_DEPTH)
                fts5_times.append(time.perf_counter() - started)
                catalog._bm25 = snapshot
                started, cpu = time.perf_counter(), time.thread_time()
                hits = catalog.search_text_sync(query, FUSION_DEPTH)
                lexical_cpu.append(time.thread_time() - cpu)
                lexical_times.append(time.perf_counter() - started)
                picked = rng.choice(len(ids), size=2 * FUSION_DEPTH, replace=False)
                visual = [
                    (ids[i], float(s))
                    for i, s in zip(
                        picked[:FUSION_DEPTH], np.sort(rng.random(FUSION_DEPTH))[::-1], strict=True
                    )
                ]
                semantic = [
                    (ids[i], float(s))
                    for i, s in zip(
                        picked[FUSION_DEPTH:], np.sort(rng.random(FUSION_DEPTH))[::-1], strict=True
                    )
                ]
                started, cpu = time.perf_counter(), time.thread_time()
                fuse(Ranked(visual=visual, semantic=semantic, lexical=hits), limit=PAGE + 1)
                fuse_cpu.append(time.thread_time() - cpu)
                fuse_times.append(time.perf_counter() - started)
        catalog.close_sync()
    result = {
        "catalog": str(zip_path.name),
        "products": len(products),
        "queries": QUERIES,
        "rounds": ROUNDS,
        "search_text_top200_p50_ms": _ms(lexical_times),
        "search_text_top200_p95_ms": _ms95(lexical_times),
        "search_text_top200_cpu_p95_ms": _ms95(lexical_cpu),
        "search_text_top200_fts5_p50_ms": _ms(fts5_times),
        "search_text_top200_fts5_p95_ms": _ms95(fts5_times),
        "bm25_snapshot_build_s": round(snapshot_s, 2),
        "fuse_3x200_p50_ms": _ms(fuse_times),
        "bm25_plus_fuse_p50_ms": round(_ms(lexical_times) + _ms(fuse_times), 3),
        "bm25_plus_fuse_cpu_p50_ms": round(_ms(lexical_cpu) + _ms(fuse_cpu), 3),
        "upsert_all_words_s": round(upsert_s, 2),
        "note": "2-core machine shared with other work while measured (wall p95 is the "
        "scheduler's: compare the CPU-time p95)",
        "load_average": list(os.getloadavg()),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
