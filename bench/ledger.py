"""How long an ingest takes to start over a large ledger on MongoDB (issue 14: "1M ledger rows
on nx-27017 start an ingest in under 30 s").

`python -m bench.ledger [--rows 1000000] [--mongodb-uri URI]` fills one encoder's ledger with
``rows`` entries (through MongoCatalog.mark_indexed), then measures, each through the
adapter with the default 5 s store timeout unless said otherwise:

* ``ingest_start_s``: what ingest does before its first batch is encoded: the stale-ledger
  check (a 20-entry ledger page, the index count, the sampled products' images) and the
  first batch's ledger entries (64 ids, one round trip);
* ``batch_ledger_ms``: one batch's ledger read (64 ids), the median of 20;
* ``walk_s``: the whole ledger walked in pages of 1000 (what ``ingest --verify`` does);
* ``whole_read_s``: the whole ledger in one call, as ingest read it before (with a 600 s
  timeout, since under the default 5 s it cannot finish at this size).

Without ``--mongodb-uri`` an nx-27017 server is started for the run (in memory). Results go
to bench/results/ledger.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from bench.common import RESULTS_DIR, Json, Result, console, write_result
from domain.indexer import iter_ledger
from domain.ledger_check import StoreNames, stale_ledger_reasons
from stores.catalog.mongodb import MongoCatalog
from tests.fakes import HashingEncoder, InMemoryImageStore, InMemoryVectorIndex

ENCODER = "bench-ledger"
BATCH = 64
FILL_CHUNK = 10_000


def product_id(i: int) -> str:
    return f"sku-{i:08d}"


async def fill(catalog: MongoCatalog, rows: int) -> float:
    started = time.perf_counter()
    for start in range(0, rows, FILL_CHUNK):
        chunk = {product_id(i): f"{i:064x}@w1" for i in range(start, min(rows, start + FILL_CHUNK))}
        await catalog.mark_indexed(ENCODER, chunk)
        if start % 100_000 == 0:
            console.print(f"  {start + len(chunk):,} / {rows:,} ledger rows")
    return time.perf_counter() - started


async def measure(uri: str, rows: int, database: str) -> Json:
    filler = MongoCatalog(uri, database, timeout_s=120.0)
    fill_s = await fill(filler, rows)
    await filler.close()

    catalog = MongoCatalog(uri, database, timeout_s=5.0)
    index = InMemoryVectorIndex()
    await index.upsert(ENCODER, ["x"], HashingEncoder(ENCODER).encode_texts(["x"]), [{}])
    names = StoreNames("bench index", "bench catalog", "bench images")
    first = [product_id(i) for i in range(rows // 2, rows // 2 + BATCH)]
    started = time.perf_counter()
    await stale_ledger_reasons(
        index, catalog, InMemoryImageStore(), [HashingEncoder(ENCODER)], names
    )
    await catalog.ledger_entries([ENCODER], first)
    await catalog.get_many(first)
    start_s = time.perf_counter() - started

    timings = []
    for k in range(20):
        ids = [product_id((k * 7919 * BATCH + j) % rows) for j in range(BATCH)]
        began = time.perf_counter()
        found = await catalog.ledger_entries([ENCODER], ids)
        timings.append((time.perf_counter() - began) * 1000)
        assert len(found[ENCODER]) == BATCH
    began = time.perf_counter()
    walked = 0
    async for page in iter_ledger(catalog, ENCODER):
        walked += len(page)
    walk_s = time.perf_counter() - began
    assert walked == rows
    await catalog.close()

    whole = MongoCatalog(uri, database, timeout_s=600.0)
    began = time.perf_counter()
    everything = await whole.indexed_hashes(ENCODER)
    whole_s = time.perf_counter() - began
    assert len(everything) == rows
    await whole.drop()
    await whole.close()
    return {
        "rows": rows,
        "fill_s": round(fill_s, 1),
        "ingest_start_s": round(start_s, 3),
        "batch_ledger_ms": round(statistics.median(timings), 1),
        "walk_s": round(walk_s, 1),
        "whole_read_s": round(whole_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=1_000_000)
    parser.add_argument("--mongodb-uri", default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    database = f"bench_ledger_{int(time.time())}"
    result = Result("ledger", {"rows": args.rows, "batch": BATCH})
    if args.mongodb_uri is not None:
        result.data = asyncio.run(measure(args.mongodb_uri, args.rows, database))
        result.config["server"] = "given"
    else:
        from tests.stores.servers import MongoServer

        server = MongoServer().start()
        try:
            result.data = asyncio.run(measure(server.uri, args.rows, database))
        finally:
            server.cleanup()
        result.config["server"] = "nx-27017 (in memory)"
    console.print(result.data)
    write_result(result, args.results_dir)


if __name__ == "__main__":
    main()
