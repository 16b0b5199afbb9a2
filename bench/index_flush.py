"""Benchmark: what a durable ``FaissVectorIndex.flush()`` costs per ingest batch and per
mutation at catalog sizes of 20k-100k vectors, and what a reader pays to pick the change up.

Since issue 14 every ingest batch and every mutation flushes before it is acknowledged (it
must survive SIGKILL), so the flush has to cost about the size of the change, not of the
index. Per size N (fresh directory, N unit vectors of ``dim`` flushed first):

* ``batch``: upsert ``batch`` vectors + ``flush()`` (an ingest batch), ``rounds`` times;
* ``mutation``: upsert 1 vector + ``flush()`` (``addProduct``), ``rounds`` times;
* ``reader``: a second index on the same directory (a serving worker) answers ``count()``
  after each batch flush, i.e. re-syncs with the files.

Durable (fsync) as the app runs it. Usage::

    python -m bench.index_flush [--sizes 20000,90000] [--dim 256] [--batch 64] [--rounds 20]

Writes bench/results/index_flush.json (``--name`` to change). Sizes stay below the default
HNSW threshold (100k): crossing it rebuilds the space as HNSW, minutes of one-off work that
is not a flush cost.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import Json, Result, Stats, console, info, write_result

ENCODER_ID = "bench-flush"


def _units(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    out: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _timed(rounds: int, step: Callable[[int], None]) -> Stats:
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        step(i)
        samples.append((time.perf_counter() - started) * 1000)
    return Stats.of(samples)


def measure(size: int, dim: int, batch: int, rounds: int, work: Path) -> Json:
    from stores.vectors.faiss_index import FaissVectorIndex

    rng = np.random.default_rng(size)
    directory = work / f"n{size}"
    writer = FaissVectorIndex(directory)
    for start in range(0, size, 5000):
        n = min(5000, size - start)
        names = [f"p{i:07d}" for i in range(start, start + n)]
        writer.upsert_sync(ENCODER_ID, names, _units(rng, n, dim), [{}] * n)
    writer.flush_sync()
    reader = FaissVectorIndex(directory)
    assert reader.count_sync(ENCODER_ID) == size
    added = [size]

    def ingest_batch(i: int) -> None:
        names = [f"b{i:04d}-{j:03d}" for j in range(batch)]
        writer.upsert_sync(ENCODER_ID, names, _units(rng, batch, dim), [{}] * batch)
        writer.flush_sync()
        added[0] += batch

    picked_up = [0]

    def reader_pickup(i: int) -> None:
        picked_up[0] += reader.count_sync(ENCODER_ID) == added[0]

    batch_ms: list[float] = []
    reader_ms: list[float] = []
    for i in range(rounds):
        started = time.perf_counter()
        ingest_batch(i)
        batch_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        reader_pickup(i)
        reader_ms.append((time.perf_counter() - started) * 1000)

    def mutation(i: int) -> None:
        writer.upsert_sync(ENCODER_ID, [f"m{i:04d}"], _units(rng, 1, dim), [{}])
        writer.flush_sync()

    mutation_stats = _timed(rounds, mutation)
    return {
        "size": size,
        "batch_flush_ms": Stats.of(batch_ms).to_json(),
        "mutation_flush_ms": mutation_stats.to_json(),
        "reader_pickup_ms": Stats.of(reader_ms).to_json(),
        "reader_saw_every_batch": picked_up[0] == rounds,
        "files_bytes": sum(p.stat().st_size for p in directory.iterdir()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,90000")
    parser.add_argument("--name", default="index_flush", help="Result file name.")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    result = Result(
        args.name,
        {"sizes": sizes, "dim": args.dim, "batch": args.batch, "rounds": args.rounds},
    )
    with tempfile.TemporaryDirectory(prefix="fs-bench-flush-") as work:
        for size in sizes:
            row = measure(size, args.dim, args.batch, args.rounds, Path(work))
            result.data[str(size)] = row
            console.print(f"n={size} reader saw every batch: {row['reader_saw_every_batch']}")
            for key in ("batch_flush_ms", "mutation_flush_ms", "reader_pickup_ms"):
                stats = row[key]
                result.checks.append(info(f"{key} p50 at {size}", stats["p50"], "ms"))
                console.print(
                    f"n={size} {key}: p50 {stats['p50']:.2f} ms, p95 {stats['p95']:.2f}, mean {stats['mean']:.2f}"
                )
    result.notes.append("2 shared cores, loaded by other work: compare runs made side by side")
    path = write_result(result)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
