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

`python -m bench.ledger --ingest-start` measures instead what an operator sees (issue 17): a
real ``fashion-search ingest`` of a small manifest (SMALL_MANIFEST Kaggle products, the
default encoder) into a MongoDB catalog whose ledger holds ``rows`` entries, as a subprocess:
its wall time and peak RSS (``wait4``), beside the same ingest of another small manifest into
the same home before the ledger was filled (the baseline: same encoder load, same stores).
The ledger is filled quickly by ``insert_many`` of the adapter's own ledger documents in
FAST_FILL_CHUNK batches (``mark_indexed``'s upserts run at about 1,500 rows/s on nx-27017).

Without ``--mongodb-uri`` an nx-27017 server is started for the run (in memory). Results go
to bench/results/ledger.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from pymongo import MongoClient

from bench.common import (
    RESULTS_DIR,
    Json,
    Result,
    at_most,
    cli_argv,
    console,
    info,
    kaggle_zip,
    mib,
    write_result,
)
from domain.indexer import iter_ledger
from domain.ledger_check import StoreNames, stale_ledger_reasons
from ingest.readers import open_source
from stores.catalog.mongodb import MongoCatalog, _ledger_id
from tests.fakes import HashingEncoder, InMemoryImageStore, InMemoryVectorIndex

ENCODER = "bench-ledger"
BATCH = 64
FILL_CHUNK = 10_000
FAST_FILL_CHUNK = 50_000
SMALL_MANIFEST = 64
START_LIMIT_S = 30.0
START_LIMIT_MIB = 500.0
LEDGER_COLLECTION = "ingest_ledger"


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


def small_manifest(folder: Path, zip_path: Path, skip: int) -> Path:
    """SMALL_MANIFEST Kaggle products (after the first ``skip``) as a CSV manifest with its
    images beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id,image,name"]
    with open_source(zip_path) as source:
        for item in itertools.islice(source, skip, skip + SMALL_MANIFEST):
            image = folder / f"{item.id}.jpg"
            image.write_bytes(item.image.read(10 * 1024 * 1024))  # type: ignore[union-attr]
            lines.append(f"{item.id},{image.name},{item.name.replace(',', ' ')}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def timed_ingest(manifest: Path, env: dict[str, str], log: Path) -> tuple[float, float]:
    """``fashion-search ingest MANIFEST`` as a subprocess: wall seconds and peak RSS (MiB)."""
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            cli_argv("ingest", str(manifest)), env=env, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"ingest failed ({process.returncode}): {log.read_text()[-2000:]}")
    return wall, mib(usage.ru_maxrss * 1024)


def fast_fill(uri: str, database: str, encoder_id: str, rows: int) -> float:
    """``rows`` ledger documents, shaped as MongoCatalog writes them, in big batches."""
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    ledger = client[database][LEDGER_COLLECTION]
    started = time.perf_counter()
    for start in range(0, rows, FAST_FILL_CHUNK):
        ledger.insert_many(
            [
                {
                    "_id": _ledger_id(encoder_id, product_id(i)),
                    "encoder": encoder_id,
                    "product": product_id(i),
                    "hash": f"{i:064x}",
                }
                for i in range(start, min(rows, start + FAST_FILL_CHUNK))
            ],
            ordered=False,
        )
        console.print(f"  {min(rows, start + FAST_FILL_CHUNK):,} / {rows:,} ledger rows")
    seconds = time.perf_counter() - started
    assert ledger.count_documents({"encoder": encoder_id}) >= rows
    client.close()
    return seconds


def measure_ingest_start(uri: str, rows: int, database: str, work: Path) -> Json:
    """The baseline ingest, the ledger filled to ``rows``, then the measured ingest."""
    from fashion_search.settings import Settings
    from fashion_search.wiring import build_encoders

    shutil.rmtree(work, ignore_errors=True)
    zip_path = kaggle_zip(Settings().datasets_dir)
    env = {
        **os.environ,
        "FASHION_SEARCH_HOME": str(work / "home"),
        "FASHION_SEARCH_MODELS_DIR": str(work.parent / "ledger-start-models"),
        "MONGODB_URI": uri,
        "MONGODB_DB": database,
        "PYTHONUNBUFFERED": "1",
    }
    encoder_id = build_encoders(Settings()).get(None).id
    first = small_manifest(work / "a", zip_path, 0)
    # warm-up into another database: the models are exported once, outside the timed runs
    timed_ingest(first, {**env, "MONGODB_DB": f"{database}_warmup"}, work / "warmup.log")
    baseline_s, baseline_mib = timed_ingest(first, env, work / "baseline.log")
    console.print(f"  baseline ingest: {baseline_s:.1f} s, peak RSS {baseline_mib:.0f} MiB")
    fill_s = fast_fill(uri, database, encoder_id, rows)
    start_s, start_mib = timed_ingest(
        small_manifest(work / "b", zip_path, SMALL_MANIFEST), env, work / "start.log"
    )
    console.print(f"  ingest over {rows:,} ledger rows: {start_s:.1f} s, {start_mib:.0f} MiB")
    return {
        "rows": rows,
        "encoder": encoder_id,
        "manifest_products": SMALL_MANIFEST,
        "fill_s": round(fill_s, 1),
        "baseline_ingest_s": round(baseline_s, 2),
        "baseline_peak_rss_mib": round(baseline_mib, 1),
        "ingest_s": round(start_s, 2),
        "peak_rss_mib": round(start_mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=1_000_000)
    parser.add_argument("--mongodb-uri", default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--ingest-start",
        action="store_true",
        help="Time a real ingest of a small manifest over the filled ledger (issue 17).",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fs-bench/ledger-start"))
    args = parser.parse_args()
    database = f"bench_ledger_{int(time.time())}"
    name = "ledger-ingest-start" if args.ingest_start else "ledger"
    result = Result(name, {"rows": args.rows, "batch": BATCH})

    def run_on(uri: str) -> Json:
        if args.ingest_start:
            return measure_ingest_start(uri, args.rows, database, args.work_dir)
        return asyncio.run(measure(uri, args.rows, database))

    if args.mongodb_uri is not None:
        result.data = run_on(args.mongodb_uri)
        result.config["server"] = "given"
    else:
        from tests.stores.servers import MongoServer

        server = MongoServer().start()
        try:
            result.data = run_on(server.uri)
        finally:
            server.cleanup()
        result.config["server"] = "nx-27017 (in memory)"
    if args.ingest_start:
        data = result.data
        result.checks = [
            info("baseline ingest (empty ledger)", data["baseline_ingest_s"], "s"),
            at_most(f"ingest over {args.rows:,} ledger rows", data["ingest_s"], START_LIMIT_S, "s"),
            at_most("its peak RSS", data["peak_rss_mib"], START_LIMIT_MIB, "MiB"),
        ]
        result.notes.append(
            "Shared 2-core machine loaded by other work (see the load average); the ingest "
            f"times include the encoder's load and {SMALL_MANIFEST} images encoded."
        )
    console.print(result.data)
    write_result(result, args.results_dir)


if __name__ == "__main__":
    main()
