"""FaissVectorIndex shared by several processes on one directory: readers pick up what a
writer flushed without reopening, nobody writes back a stale copy, torn log tails and
interrupted folds are harmless, and a SIGKILLed writer loses nothing it flushed.

Most cases use two index objects on one directory in this process: each keeps its own copy
in memory and takes its own ``flock`` (a lock per open file), exactly as two processes do.
The last test uses a real writer process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from stores.vectors.delta_log import Change
from stores.vectors.faiss_index import FaissVectorIndex
from tests.stores.contracts import ENC_A, ENC_B, random_units

REPO_ROOT = Path(__file__).resolve().parents[2]
DIM = 8


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def names(directory: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in directory.glob(pattern))


async def add(index: FaissVectorIndex, names: list[str], seed: int, encoder: str = ENC_A) -> None:
    await index.upsert(encoder, names, random_units(len(names), DIM, seed), [{}] * len(names))


async def test_a_reader_sees_a_writers_flushes_without_reopening(tmp_path: Path) -> None:
    writer = FaissVectorIndex(tmp_path)
    reader = FaissVectorIndex(tmp_path)
    await add(writer, ids("a", 10), seed=1)
    await writer.flush()
    assert await reader.count(ENC_A) == 10
    vectors = random_units(5, DIM, seed=2)
    await writer.upsert(ENC_A, ids("b", 5), vectors, [{"colour": "red"}] * 5)
    await writer.upsert(ENC_B, ["x"], random_units(1, DIM, seed=3), [{}])
    await writer.delete(["a0000"], ENC_A)
    assert await reader.count(ENC_A) == 10  # not flushed yet: not visible
    await writer.flush()
    assert await reader.count(ENC_A) == 14
    assert await reader.encoder_ids() == sorted([ENC_A, ENC_B])
    hits = await reader.query(ENC_A, vectors[2], 1)
    assert hits[0][0] == "b0002"
    assert "a0000" not in await reader.fetch(ENC_A, ["a0000"])
    # The query the search service tries first on the event loop: it declines while the
    # files are newer than the copy, and answers once the copy caught up.
    await add(writer, ["c0000"], seed=4)
    await writer.flush()
    assert reader.query_now(ENC_A, vectors[2], 1) is None
    assert await reader.count(ENC_A) == 15
    assert reader.query_now(ENC_A, vectors[2], 1) == hits


async def test_a_stale_copy_is_never_written_back(tmp_path: Path) -> None:
    """Issue 14, scenario 1 at the index level: a server worker loaded the index and added
    one product (flushed or not yet); an ingest in another process adds more; the worker
    closes. Closing writes only the worker's own change, on top of the ingest's."""
    for flushed in (True, False):
        directory = tmp_path / str(flushed)
        seeded = FaissVectorIndex(directory)
        await add(seeded, ids("old", 2), seed=0)
        await seeded.close()
        worker = FaissVectorIndex(directory)
        ingest = FaissVectorIndex(directory)
        assert await worker.count(ENC_A) == 2
        await add(worker, ["added"], seed=1)
        if flushed:
            await worker.flush()
        await add(ingest, ids("i", 30), seed=2)
        await ingest.close()
        await worker.close()
        assert await FaissVectorIndex(directory).count(ENC_A) == 33, flushed


async def test_unflushed_changes_of_two_writers_are_merged_not_overwritten(
    tmp_path: Path,
) -> None:
    """Without the home's write lock (e.g. a script), two copies with pending changes of
    the same space both end up on disk, in flush order, the later flush winning per id."""
    first = FaissVectorIndex(tmp_path)
    second = FaissVectorIndex(tmp_path)
    await add(first, ids("base", 4), seed=1)
    await first.flush()
    assert await second.count(ENC_A) == 4
    await add(first, ids("f", 3), seed=2)
    await add(second, ids("s", 2), seed=3)
    shared = random_units(2, DIM, seed=4)
    await first.upsert(ENC_A, ["both"], shared[:1], [{}])
    await second.upsert(ENC_A, ["both"], shared[1:], [{}])
    await second.delete(["base0000"], ENC_A)
    await first.flush()
    await second.flush()
    fresh = FaissVectorIndex(tmp_path)
    expected = set(ids("base", 4)[1:] + ids("f", 3) + ids("s", 2) + ["both"])
    assert set(await fresh.fetch(ENC_A, [*expected, "base0000"])) == expected
    assert await fresh.count(ENC_A) == len(expected)
    np.testing.assert_array_equal((await fresh.fetch(ENC_A, ["both"]))["both"], shared[1])
    # Both copies now answer what is on disk.
    assert await first.count(ENC_A) == await second.count(ENC_A) == len(expected)


async def test_folds_are_picked_up_and_leave_one_log(tmp_path: Path) -> None:
    """With a tiny fold threshold every few flushes write a new snapshot; a reader that
    loaded an older one follows, and old logs are removed."""
    writer = FaissVectorIndex(tmp_path, fold_min_bytes=0, fold_fraction=0.3)
    reader = FaissVectorIndex(tmp_path)
    total = 0
    epochs: set[str] = set()
    for batch in range(12):
        await add(writer, ids(f"b{batch:02d}-", 4), seed=batch)
        await writer.delete([f"b{batch - 1:02d}-0000"] if batch else [], ENC_A)
        await writer.flush()
        total += 4 - (1 if batch else 0)
        assert await reader.count(ENC_A) == total
        logs = names(tmp_path, "*.log")
        assert len(logs) == 1, logs
        epochs.add(logs[0])
    assert len(epochs) > 2  # it did fold, more than once
    assert await FaissVectorIndex(tmp_path).count(ENC_A) == total


async def test_a_torn_log_tail_is_ignored_then_cut_off(tmp_path: Path) -> None:
    """A writer killed mid-append leaves part of a record: loading ignores it (it was never
    acknowledged) and the next writer cuts it off before appending its own records."""
    index = FaissVectorIndex(tmp_path)
    await add(index, ids("a", 3), seed=1)
    await index.flush()
    await add(index, ids("b", 2), seed=2)
    await index.flush()
    log = tmp_path / names(tmp_path, "*.log")[0]
    good = log.read_bytes()
    torn = FaissVectorIndex(tmp_path)  # a copy made after the crash
    with log.open("ab") as handle:
        handle.write(good[: len(good) // 2])  # the first half of a record
    assert await torn.count(ENC_A) == 5
    await add(torn, ids("c", 2), seed=3)
    await torn.flush()
    assert log.read_bytes().startswith(good)
    reopened = FaissVectorIndex(tmp_path)
    assert set(await reopened.fetch(ENC_A, ids("a", 3) + ids("b", 2) + ids("c", 2))) == set(
        ids("a", 3) + ids("b", 2) + ids("c", 2)
    )
    assert await index.count(ENC_A) == 7  # and the first copy follows


async def test_records_of_a_writer_killed_before_its_bump_are_seen(tmp_path: Path) -> None:
    """A writer appended and fsynced a record, then died before bumping the generation:
    readers that are running see it at their next call, as a fresh process does."""
    writer = FaissVectorIndex(tmp_path)
    reader = FaissVectorIndex(tmp_path)
    await add(writer, ids("a", 3), seed=1)
    await writer.flush()
    assert await reader.count(ENC_A) == 3
    log = tmp_path / names(tmp_path, "*.log")[0]
    generation = (tmp_path / "generation").read_bytes()
    record = Change.upsert(["late"], random_units(1, DIM, seed=2), [{}]).encode()
    with log.open("ab") as handle:
        handle.write(record)
    assert (tmp_path / "generation").read_bytes() == generation
    assert await reader.count(ENC_A) == 4
    assert await FaissVectorIndex(tmp_path).count(ENC_A) == 4


async def test_a_fold_interrupted_before_the_snapshot_changes_nothing(tmp_path: Path) -> None:
    """A crash after the next epoch's empty log was created but before the new snapshot
    replaced the old one: the old snapshot and its log are still read, and the next fold
    reuses the stray log."""
    index = FaissVectorIndex(tmp_path, fold_min_bytes=0, fold_fraction=1000.0)
    await add(index, ids("a", 3), seed=1)
    await index.flush()
    await add(index, ids("b", 3), seed=2)
    await index.flush()
    snapshot = tmp_path / names(tmp_path, "*.npz")[0]
    stray = index._log_path(snapshot, 2)
    stray.write_bytes(b"")
    assert await FaissVectorIndex(tmp_path).count(ENC_A) == 6
    await index.compact()  # asks for a fold at the next flush
    await add(index, ids("c", 1), seed=3)
    await index.flush()
    assert names(tmp_path, "*.log") == [stray.name]
    assert await FaissVectorIndex(tmp_path).count(ENC_A) == 7


async def test_removing_every_vector_reaches_readers(tmp_path: Path) -> None:
    writer = FaissVectorIndex(tmp_path)
    reader = FaissVectorIndex(tmp_path)
    await add(writer, ids("a", 2), seed=1)
    await writer.flush()
    assert await reader.encoder_ids() == [ENC_A]
    await writer.delete(ids("a", 2))
    await writer.flush()
    assert names(tmp_path, "*.npz") == names(tmp_path, "*.log") == []
    assert await reader.encoder_ids() == []
    assert await reader.count() == 0


WRITER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from stores.vectors.faiss_index import FaissVectorIndex

    async def main(directory, batches, size):
        index = FaissVectorIndex(directory)
        rng = np.random.default_rng(7)
        for batch in range(batches):
            vectors = rng.standard_normal((size, 8)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            names = [f"w{batch:03d}-{i:02d}" for i in range(size)]
            await index.upsert("enc", names, vectors, [{}] * size)
            await index.flush()
            print(batch, flush=True)  # acknowledged: durable from here on
            if sys.stdin.readline().strip() != "go":
                return

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


@pytest.mark.slow
def test_a_writer_process_is_followed_and_its_flushes_survive_sigkill(tmp_path: Path) -> None:
    """A real writer process flushes batch after batch; this process reads after each
    acknowledgement (the writer waits for "go"), then kills the writer with SIGKILL in the
    middle of its next batch's work: everything acknowledged is there."""
    size, batches = 6, 8
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path), str(batches), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    reader = FaissVectorIndex(tmp_path)
    acknowledged = 0
    try:
        for batch in range(batches // 2):
            assert writer.stdout.readline().strip() == str(batch)
            acknowledged += size
            assert reader.count_sync("enc") == acknowledged
            writer.stdin.write("go\n")
            writer.stdin.flush()
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(30)
    after = FaissVectorIndex(tmp_path)
    present = after.count_sync("enc")
    assert present in (acknowledged, acknowledged + size)  # the batch in flight: all or none
    flushed = [f"w{b:03d}-{i:02d}" for b in range(batches // 2) for i in range(size)]
    assert set(after.fetch_sync("enc", flushed)) == set(flushed)
    assert reader.count_sync("enc") == present
