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

``--rounds N`` alternates N baseline ingests (each into a fresh home and an empty database)
with N measured ones (each of SMALL_MANIFEST products the catalog does not hold yet); the
worst of each is checked. The fill is long (minutes), so it can be done once, apart from the
timed runs: on a server you started (``--mongodb-uri``), ``--database NAME --keep
--fill-only`` fills and stops (run it under ``nice``); the same options without
``--fill-only`` then reuse that ledger and only time the ingests (run it under ``flock``).

Without ``--mongodb-uri`` an nx-27017 server is started for the run (in memory). Results go
to bench/results/ledger.json (ledger-ingest-start.json with ``--ingest-start``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
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
START_LIMIT_MB = 500.0
"""Decimal megabytes (476.8 MiB), as the issue says."""
LEDGER_COLLECTION = "ingest_ledger"
PRODUCTS_COLLECTION = "products"
BENCH_NOTES_COLLECTION = "bench_notes"


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
    """``fashion-search ingest MANIFEST`` as a subprocess: wall seconds and peak RSS (MiB).

    Linux carries the spawning process's high-water mark into the child's ``ru_maxrss``
    (through fork and exec), so the figure is only the child's while this process stays
    smaller (``bench_process_peak_rss_mib`` in the results says how big it got)."""
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


def ledger_rows(uri: str, database: str, encoder_id: str) -> int:
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    try:
        return client[database][LEDGER_COLLECTION].count_documents({"encoder": encoder_id})
    finally:
        client.close()


def catalog_products(uri: str, database: str) -> int:
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    try:
        return client[database][PRODUCTS_COLLECTION].count_documents({})
    finally:
        client.close()


def drop_database(uri: str, database: str) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    client.drop_database(database)
    client.close()


@dataclass(frozen=True)
class StartRun:
    """Where the measured ingests go: one MongoDB database (the filled ledger) and one home,
    kept between runs with ``--keep``; the baselines go to a fresh home and database each."""

    uri: str
    database: str
    work: Path
    rows: int

    def env(self, home: Path, database: str) -> dict[str, str]:
        return {
            **os.environ,
            "FASHION_SEARCH_HOME": str(home),
            "FASHION_SEARCH_MODELS_DIR": os.environ.get(
                "FASHION_SEARCH_MODELS_DIR", str(self.work.parent / "ledger-start-models")
            ),
            "MONGODB_URI": self.uri,
            "MONGODB_DB": database,
            "PYTHONUNBUFFERED": "1",
        }

    def baseline(self, zip_path: Path, round_no: int) -> tuple[float, float]:
        """The same ingest into a fresh home and an empty ledger."""
        database, home = f"{self.database}_empty", self.work / f"empty-home-{round_no}"
        drop_database(self.uri, database)
        shutil.rmtree(home, ignore_errors=True)
        manifest = small_manifest(self.work / "a", zip_path, 0)
        try:
            return timed_ingest(manifest, self.env(home, database), self.work / "baseline.log")
        finally:
            drop_database(self.uri, database)
            shutil.rmtree(home, ignore_errors=True)

    def measured(self, zip_path: Path, round_no: int) -> tuple[float, float]:
        """An ingest of SMALL_MANIFEST products the catalog does not hold yet (the next ones
        of the zip: a kept database is never given the same products twice)."""
        skip = SMALL_MANIFEST + catalog_products(self.uri, self.database)
        manifest = small_manifest(self.work / f"b{round_no}", zip_path, skip)
        env = self.env(self.work / "home", self.database)
        return timed_ingest(manifest, env, self.work / "start.log")


def prepare_ledger(run: StartRun, zip_path: Path, encoder_id: str) -> float | None:
    """The kept database's ledger filled to ``rows`` (seconds), or None when it already
    was (``--keep`` from an earlier run: no fill). The home is given SMALL_MANIFEST products
    first, so the measured ingests start on a home with vectors, as an operator's does."""
    client: MongoClient[dict[str, object]] = MongoClient(run.uri)
    notes = client[run.database][BENCH_NOTES_COLLECTION]
    try:
        if ledger_rows(run.uri, run.database, encoder_id) >= run.rows:
            console.print(f"  reusing the {run.rows:,}-row ledger of database {run.database}")
            return None
        shutil.rmtree(run.work, ignore_errors=True)
        env = run.env(run.work / "home", run.database)
        first = small_manifest(run.work / "a", zip_path, 0)
        # the models are exported here, outside the timed runs
        timed_ingest(first, env, run.work / "first.log")
        fill_s = fast_fill(run.uri, run.database, encoder_id, run.rows)
        notes.delete_many({})
        notes.insert_one({"_id": "fill", "seconds": fill_s})
        return fill_s
    finally:
        client.close()


def earlier_fill_s(uri: str, database: str) -> float | None:
    """How long the fill of a reused (``--keep``) database took, as its run recorded it."""
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    try:
        found = client[database][BENCH_NOTES_COLLECTION].find_one({"_id": "fill"})
    finally:
        client.close()
    return float(found["seconds"]) if found else None  # type: ignore[arg-type]


def measure_ingest_start(run: StartRun, rounds: int, fill_only: bool) -> Json:
    """The ledger filled (or reused), then ``rounds`` pairs of a baseline ingest (empty
    ledger) and the measured one (over the filled ledger)."""
    from fashion_search.settings import Settings
    from fashion_search.wiring import build_encoders

    zip_path = kaggle_zip(Settings().datasets_dir)
    encoder_id = build_encoders(Settings()).get(None).id
    fill_s = prepare_ledger(run, zip_path, encoder_id)
    reused = fill_s is None
    fill_s = earlier_fill_s(run.uri, run.database) if reused else fill_s
    data: Json = {
        "rows": run.rows,
        "encoder": encoder_id,
        "manifest_products": SMALL_MANIFEST,
        "ledger_reused": reused,
        "fill_s": None if fill_s is None else round(fill_s, 1),
    }
    if fill_only:
        return data
    baselines, starts = [], []
    for round_no in range(rounds):
        baselines.append(run.baseline(zip_path, round_no))
        starts.append(run.measured(zip_path, round_no))
        console.print(
            f"  round {round_no + 1}: baseline {baselines[-1][0]:.1f} s "
            f"{baselines[-1][1]:.0f} MiB; over {run.rows:,} ledger rows {starts[-1][0]:.1f} s "
            f"{starts[-1][1]:.0f} MiB"
        )
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return data | {
        "bench_process_peak_rss_mib": round(mib(own_peak), 1),
        "baseline_ingest_s": [round(s, 2) for s, _ in baselines],
        "baseline_peak_rss_mib": [round(m, 1) for _, m in baselines],
        "ingest_s": [round(s, 2) for s, _ in starts],
        "peak_rss_mib": [round(m, 1) for _, m in starts],
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
    parser.add_argument(
        "--database",
        default=None,
        help="MongoDB database of the ledger (default: a new one per run, dropped after it).",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="Keep --database and --work-dir: a later run with the same ones reuses the filled "
        "ledger (with --mongodb-uri; fill under nice, measure under flock).",
    )
    parser.add_argument(
        "--fill-only", action="store_true", help="With --ingest-start --keep: fill, then stop."
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="Baseline and measured ingests, alternated."
    )
    args = parser.parse_args()
    if (args.keep or args.fill_only) and (args.mongodb_uri is None or args.database is None):
        parser.error("--keep and --fill-only need --mongodb-uri and --database")
    database = args.database or f"bench_ledger_{int(time.time())}"
    name = "ledger-ingest-start" if args.ingest_start else "ledger"
    result = Result(name, {"rows": args.rows, "batch": BATCH, "argv": sys.argv[1:]})

    def run_on(uri: str) -> Json:
        if not args.ingest_start:
            return asyncio.run(measure(uri, args.rows, database))
        run = StartRun(uri, database, args.work_dir, args.rows)
        try:
            return measure_ingest_start(run, args.rounds, args.fill_only)
        finally:
            if not args.keep:
                drop_database(uri, database)

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
    console.print(result.data)
    if args.fill_only:
        return
    if args.ingest_start:
        add_start_checks(result, args.rows)
    write_result(result, args.results_dir)


def add_start_checks(result: Result, rows: int) -> None:
    """The worst of the rounds against the targets (500 MB: decimal megabytes)."""
    data = result.data
    peak_mb = max(data["peak_rss_mib"]) * 1024 * 1024 / 1e6
    result.checks = [
        info("baseline ingest (empty ledger)", max(data["baseline_ingest_s"]), "s"),
        info("its peak RSS", max(data["baseline_peak_rss_mib"]), "MiB"),
        at_most(f"ingest over {rows:,} ledger rows", max(data["ingest_s"]), START_LIMIT_S, "s"),
        at_most("its peak RSS", round(peak_mb, 1), START_LIMIT_MB, "MB"),
    ]
    if data["ledger_reused"]:
        result.notes.append(
            "The ledger was filled by an earlier run with --keep --fill-only (fill_s: its "
            "fill); this run reused it."
        )
    result.notes.append(
        "Worst of the rounds. The ingest times include the encoder's load and "
        f"{SMALL_MANIFEST} images encoded; peak RSS from wait4 (the process and its children)."
    )


if __name__ == "__main__":
    main()
