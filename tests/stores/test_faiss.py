"""FaissVectorIndex: the VectorIndex contract, plus what only the embedded index does:
persistence, the exact -> HNSW switch and its recall, deletes under HNSW, filtered HNSW
queries, concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from domain.errors import BadInput
from domain.model import ProductFilter
from domain.ports import SpaceQuery, Vectors
from stores.vectors import faiss_index
from stores.vectors.faiss_index import (
    PREFILTER_MIN_ROWS,
    FaissVectorIndex,
    Prefilter,
    _cut,
    _prefiltered,
    _prefiltered_int8,
)
from tests.stores.contracts import ENC_A, ENC_B, VectorIndexContract, random_units


class TestFaissVectorIndex(VectorIndexContract):
    @pytest.fixture
    async def vector_index(self, tmp_path: Path) -> AsyncIterator[FaissVectorIndex]:
        index = FaissVectorIndex(tmp_path / "vectors", hnsw_threshold=1000, durable=False)
        yield index
        await index.close()


class TestFaissVectorIndexAsHnsw(VectorIndexContract):
    """The same contract with every space in HNSW mode (threshold 1) and exact filtering
    turned off, so the HNSW paths (tombstones, selectors, fallbacks) answer it."""

    @pytest.fixture
    async def vector_index(self, tmp_path: Path) -> AsyncIterator[FaissVectorIndex]:
        index = FaissVectorIndex(
            tmp_path / "vectors", hnsw_threshold=1, exact_filter_limit=0, durable=False
        )
        yield index
        await index.close()


# -- helpers -------------------------------------------------------------------------------


def clustered(n: int, dim: int, seed: int, clusters: int = 40) -> Vectors:
    """Unit vectors around a few cluster centres with a low-dimensional spread, the shape of
    real embeddings (near-duplicate products, dense categories)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    basis = rng.standard_normal((8, dim)).astype(np.float32) / np.sqrt(8)
    labels = rng.integers(0, clusters, n)
    x = (
        centres[labels]
        + 0.8 * rng.standard_normal((n, 8)).astype(np.float32) @ basis
        + 0.25 * rng.standard_normal((n, dim)).astype(np.float32)
    )
    out: Vectors = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def exact_top(vectors: Vectors, ids: list[str], query: Vectors, k: int) -> list[str]:
    scores = vectors @ query
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def tags_for(i: int) -> dict[str, str]:
    return {"colour": ("black", "red", "blue", "white")[i % 4], "bucket": str(i % 100)}


async def fill(
    index: FaissVectorIndex, encoder_id: str, vectors: Vectors, batch: int = 500
) -> list[str]:
    ids = [f"p{i:05d}" for i in range(len(vectors))]
    for start in range(0, len(vectors), batch):
        stop = start + batch
        await index.upsert(
            encoder_id,
            ids[start:stop],
            vectors[start:stop],
            [tags_for(i) for i in range(start, min(stop, len(vectors)))],
        )
    return ids


# -- persistence ---------------------------------------------------------------------------


async def test_flush_and_reopen_restores_everything(tmp_path: Path) -> None:
    directory = tmp_path / "vectors"
    index = FaissVectorIndex(directory, hnsw_threshold=100)
    a = random_units(50, 16, seed=1)
    b = random_units(5, 8, seed=2)
    ids_a = await fill(index, ENC_A, a)
    await index.upsert(ENC_B, ["x", "y", "z", "u", "v"], b, [{"k": "1"}] * 5)
    await index.delete(["p00003"], ENC_A)
    await index.flush()
    snapshots = sorted(p.name for p in directory.glob("*.npz"))
    logs = sorted(p.name for p in directory.glob("*.log"))
    assert len(snapshots) == 2, snapshots  # one per encoder, names safe for ':' '/' '@'
    assert [name.removesuffix(".npz") + ".1.log" for name in snapshots] == logs
    assert all(":" not in f and "@" not in f for f in snapshots + logs)

    reopened = FaissVectorIndex(directory, hnsw_threshold=100)
    assert sorted(await reopened.encoder_ids()) == sorted([ENC_A, ENC_B])
    assert await reopened.count(ENC_A) == 49
    assert await reopened.count(ENC_B) == 5
    fetched = await reopened.fetch(ENC_A, ["p00000", "p00003"])
    assert set(fetched) == {"p00000"}
    np.testing.assert_array_equal(fetched["p00000"], a[0])
    blue = ProductFilter({"colour": "blue"})  # every fourth product, p00006 among them
    before = await index.query(ENC_A, a[6], 5, blue)
    after = await reopened.query(ENC_A, a[6], 5, blue)
    assert after == before
    assert len(after) == 5
    assert after[0][0] == ids_a[6]
    assert after[0][1] == pytest.approx(1.0, abs=1e-5)
    only = await reopened.query(ENC_B, b[0], 1, ProductFilter({"k": "1"}))
    assert [pid for pid, _ in only] == ["x"]
    assert only[0][1] == pytest.approx(1.0, abs=1e-5)
    await reopened.close()
    await index.close()


async def test_unflushed_changes_are_not_on_disk_and_close_flushes(tmp_path: Path) -> None:
    directory = tmp_path / "vectors"
    index = FaissVectorIndex(directory)
    await index.upsert(ENC_A, ["a"], random_units(1, 8, seed=3), [{}])
    assert await FaissVectorIndex(directory).count() == 0
    await index.close()
    assert await FaissVectorIndex(directory).count() == 1


async def test_deleting_every_vector_removes_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "vectors"
    index = FaissVectorIndex(directory)
    await index.upsert(ENC_A, ["a"], random_units(1, 8, seed=3), [{}])
    await index.flush()
    assert len(list(directory.glob("*.npz"))) == 1
    await index.delete(["a"])
    await index.flush()
    assert list(directory.glob("*.npz")) == []
    assert await FaissVectorIndex(directory).encoder_ids() == []


async def test_writes_are_atomic_and_stray_temp_files_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "vectors"
    index = FaissVectorIndex(directory)
    await index.upsert(ENC_A, ["a", "b"], random_units(2, 8, seed=4), [{}, {}])
    await index.flush()
    # A crash mid-write leaves a temporary file next to the good one: it is never read.
    # (Its name carries the pid of a writer that is gone: no pid is that large.)
    (directory / ".half-written.npz.999999999-ab.tmp").write_bytes(b"garbage")
    (directory / "notes.txt").write_text("not an index")
    reopened = FaissVectorIndex(directory)
    assert await reopened.count(ENC_A) == 2
    assert not (directory / ".half-written.npz.999999999-ab.tmp").exists()
    assert [name for name in os.listdir(directory) if name.endswith(".tmp")] == []
    assert (directory / "notes.txt").exists()


async def test_corrupt_file_gives_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "vectors"
    directory.mkdir()
    (directory / "broken-0123.npz").write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match=r"broken-0123\.npz"):
        await FaissVectorIndex(directory).count()


async def test_flush_appends_the_changes_of_changed_encoders_only(tmp_path: Path) -> None:
    directory = tmp_path / "vectors"
    index = FaissVectorIndex(directory)
    await index.upsert(ENC_A, ["a"], random_units(1, 8, seed=5), [{}])
    await index.upsert(ENC_B, ["b"], random_units(1, 8, seed=6), [{}])
    await index.flush()

    def files() -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_size) for p in directory.iterdir()}

    before = files()
    await index.upsert(ENC_B, ["c"], random_units(1, 8, seed=7), [{}])
    await index.flush()
    after = files()
    changed = sorted(name for name in after if after[name] != before.get(name))
    log_b = index._log_path(index._path(ENC_B), 1).name
    # The snapshots stay; one record was appended to B's log (and the generation moved on).
    assert changed == sorted([log_b, "generation"])
    assert after[log_b][0] == before[log_b][0]
    assert await FaissVectorIndex(directory).count(ENC_B) == 2


# -- validation ----------------------------------------------------------------------------


async def test_bad_vectors_are_rejected(tmp_path: Path) -> None:
    index = FaissVectorIndex(tmp_path)
    await index.upsert(ENC_A, ["a"], random_units(1, 8, seed=1), [{}])
    with pytest.raises(BadInput, match="8-d"):
        await index.upsert(ENC_A, ["b"], random_units(1, 4, seed=1), [{}])
    with pytest.raises(BadInput, match="8-d"):
        await index.query(ENC_A, random_units(1, 4, seed=1)[0], 3)
    nan = random_units(1, 8, seed=1)
    nan[0, 0] = np.nan
    with pytest.raises(BadInput):
        await index.upsert(ENC_A, ["c"], nan, [{}])
    with pytest.raises(BadInput):
        await index.upsert(ENC_A, [""], random_units(1, 8, seed=1), [{}])
    # A [1, d] query works as well as a [d] one.
    one = random_units(1, 8, seed=1)
    assert (await index.query(ENC_A, one, 1))[0][0] == "a"
    assert await index.count() == 1


# -- exact -> HNSW -------------------------------------------------------------------------


@pytest.mark.slow
async def test_switches_to_hnsw_past_the_threshold_with_high_recall(tmp_path: Path) -> None:
    dim, n = 48, 5000
    vectors = clustered(n + 200, dim, seed=11)
    data, queries = vectors[:n], vectors[n:]
    index = FaissVectorIndex(tmp_path / "vectors", hnsw_threshold=2000, durable=False)

    ids = await fill(index, ENC_A, data[:2000])
    assert index.kind(ENC_A) == "flat"
    # Below the threshold the index is exact.
    for q in queries[:20]:
        got = [pid for pid, _ in await index.query(ENC_A, q, 10)]
        assert got == exact_top(data[:2000], ids, q, 10)

    ids = await fill(index, ENC_A, data)
    assert index.kind(ENC_A) == "hnsw"
    assert await index.count(ENC_A) == n

    recalls = []
    for q in queries:
        found = {pid for pid, _ in await index.query(ENC_A, q, 10)}
        recalls.append(len(found & set(exact_top(data, ids, q, 10))) / 10)
    assert float(np.mean(recalls)) >= 0.95

    # Scores stay cosine similarities.
    best = await index.query(ENC_A, data[123], 1)
    assert best[0][0] == "p00123"
    assert best[0][1] == pytest.approx(1.0, abs=1e-4)

    # The HNSW space persists as HNSW and answers the same after reopening.
    await index.flush()
    reopened = FaissVectorIndex(tmp_path / "vectors", hnsw_threshold=2000)
    assert reopened.kind(ENC_A) == "hnsw"
    assert await reopened.query(ENC_A, queries[0], 10) == await index.query(ENC_A, queries[0], 10)


@pytest.mark.slow
async def test_delete_and_overwrite_under_hnsw(tmp_path: Path) -> None:
    dim, n = 32, 3000
    data = clustered(n, dim, seed=12)
    index = FaissVectorIndex(tmp_path, hnsw_threshold=1000, durable=False)
    ids = await fill(index, ENC_A, data)
    assert index.kind(ENC_A) == "hnsw"

    # Deleted ids never come back, even when they are the best match.
    gone = ids[:100]
    await index.delete(gone)
    assert await index.count(ENC_A) == n - 100
    for i in range(0, 100, 10):
        results = await index.query(ENC_A, data[i], 10)
        assert len(results) == 10
        assert not {pid for pid, _ in results} & set(gone)
    assert await index.fetch(ENC_A, gone[:3]) == {}

    # Overwriting moves the vector: the old position no longer finds it first.
    moved = data[2000]
    await index.upsert(ENC_A, [ids[500]], moved[None, :], [{"colour": "green"}])
    assert (await index.query(ENC_A, moved, 2))[0][1] == pytest.approx(1.0, abs=1e-4)
    top = await index.query(ENC_A, moved, 2)
    assert {pid for pid, _ in top} == {ids[500], ids[2000]}
    old_top = await index.query(ENC_A, data[500], 1)
    assert old_top[0][0] != ids[500]

    # Enough deletes compact the space; below the threshold it becomes exact again.
    await index.delete(ids[100:2500])
    assert await index.count(ENC_A) == 500
    assert index.kind(ENC_A) == "flat"
    survivors = ids[2500:]
    results = await index.query(ENC_A, data[2600], 500)
    assert sorted(pid for pid, _ in results) == sorted(survivors)


@pytest.mark.slow
async def test_selective_filter_under_hnsw_still_returns_top_k(tmp_path: Path) -> None:
    dim, n = 32, 4000
    data = clustered(n, dim, seed=13)
    # exact_filter_limit=0 forces the HNSW-with-selector path and its fallback.
    for limit in (0, 20_000):
        index = FaissVectorIndex(
            tmp_path / str(limit), hnsw_threshold=1000, exact_filter_limit=limit, durable=False
        )
        ids = await fill(index, ENC_A, data)
        assert index.kind(ENC_A) == "hnsw"
        rare = ProductFilter({"bucket": "7"})  # 40 of 4000 products
        allowed = [i for i in range(n) if tags_for(i)["bucket"] == "7"]
        query = data[3]  # far from most of the allowed rows
        results = await index.query(ENC_A, query, 10, rare)
        assert len(results) == 10
        want = exact_top(data[allowed], [ids[i] for i in allowed], query, 10)
        assert [pid for pid, _ in results] == want
        many = await index.query(ENC_A, query, 100, rare)
        assert len(many) == 40
        combined = ProductFilter(equals={"colour": "red"}, any_of={"bucket": ("1", "5", "9")})
        got = await index.query(ENC_A, query, 200, combined)
        assert len(got) == 120
        assert all(tags_for(int(pid[1:]))["colour"] == "red" for pid, _ in got)


# -- concurrency ---------------------------------------------------------------------------


async def test_concurrent_upserts_queries_and_flushes(tmp_path: Path) -> None:
    index = FaissVectorIndex(tmp_path, hnsw_threshold=300, durable=False)
    dim = 16
    data = clustered(1200, dim, seed=14)

    async def writer(part: int) -> None:
        for start in range(part * 300, (part + 1) * 300, 50):
            await index.upsert(
                ENC_A,
                [f"p{i:05d}" for i in range(start, start + 50)],
                data[start : start + 50],
                [tags_for(i) for i in range(start, start + 50)],
            )

    async def reader() -> None:
        for i in range(40):
            results = await index.query(ENC_A, data[i], 5, ProductFilter({"colour": "red"}))
            assert all(tags_for(int(pid[1:]))["colour"] == "red" for pid, _ in results)
            assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)

    async def flusher() -> None:
        for _ in range(5):
            await index.flush()
            await asyncio.sleep(0)

    async def deleter() -> None:
        for i in range(0, 1200, 7):
            await index.delete([f"p{i:05d}"], ENC_A)
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(p) for p in range(4)), reader(), reader(), flusher())
    assert await index.count(ENC_A) == 1200
    assert index.kind(ENC_A) == "hnsw"
    await asyncio.gather(deleter(), reader())
    remaining = 1200 - len(range(0, 1200, 7))
    await index.close()
    reopened = FaissVectorIndex(tmp_path, hnsw_threshold=300)
    assert await reopened.count(ENC_A) == remaining
    hits = await reopened.query(ENC_A, data[8], 1)
    assert hits[0][0] == "p00008"


@contextlib.contextmanager
def held_by_another_thread(index: FaissVectorIndex) -> Iterator[None]:
    """The index's lock held by another thread (as an upsert or a flush holds it)."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with index._lock:
            held.set()
            done.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        yield
    finally:
        done.set()
        holder.join()


async def test_query_now_answers_like_query_or_not_at_all(tmp_path: Path) -> None:
    index = FaissVectorIndex(tmp_path)
    vectors = random_units(200, 16, seed=3)
    tags = [{"colour": "red" if i % 3 else "blue"} for i in range(200)]
    await index.upsert(ENC_A, [f"p{i}" for i in range(200)], vectors, tags)
    await index.flush()
    blue = ProductFilter(equals={"colour": "blue"})
    for q in range(5):
        for flt in (None, blue):
            assert index.query_now(ENC_A, vectors[q], 7, flt) == await index.query(
                ENC_A, vectors[q], 7, flt
            )
    assert index.query_now("nobody", vectors[0], 7) == []
    with pytest.raises(BadInput):
        index.query_now(ENC_A, vectors[:2], 7)

    # another thread holds the index (an upsert, a flush): None at once, never a wait
    with held_by_another_thread(index):
        assert index.query_now(ENC_A, vectors[0], 7) is None
    # not loaded from disk yet: that is a worker thread's job
    reopened = FaissVectorIndex(tmp_path)
    assert reopened.query_now(ENC_A, vectors[0], 7) is None
    assert [p for p, _ in await reopened.query(ENC_A, vectors[0], 1)] == ["p0"]
    assert reopened.query_now(ENC_A, vectors[0], 1) == await reopened.query(ENC_A, vectors[0], 1)


async def test_fetch_now_returns_what_fetch_does_or_nothing_at_all(tmp_path: Path) -> None:
    index = FaissVectorIndex(tmp_path)
    vectors = random_units(50, 16, seed=4)
    await index.upsert(ENC_A, [f"p{i}" for i in range(50)], vectors, [{}] * 50)
    await index.flush()
    asked = ["p3", "missing", "p0", "p49"]
    now = index.fetch_now(ENC_A, asked)
    assert now is not None
    fetched = await index.fetch(ENC_A, asked)
    assert list(now) == list(fetched) == ["p3", "p0", "p49"]
    assert all(np.array_equal(now[p], fetched[p]) for p in now)
    assert index.fetch_now("nobody", asked) == {}
    with held_by_another_thread(index):
        assert index.fetch_now(ENC_A, asked) is None
    reopened = FaissVectorIndex(tmp_path)
    assert reopened.fetch_now(ENC_A, asked) is None  # not loaded yet: a worker thread's job
    assert list(await reopened.fetch(ENC_A, asked)) == ["p3", "p0", "p49"]
    assert reopened.fetch_now(ENC_A, ["p0"]) is not None


async def test_query_several_answers_like_one_query_per_space(tmp_path: Path) -> None:
    index = FaissVectorIndex(tmp_path)
    ids = [f"p{i}" for i in range(300)]
    images, words = random_units(300, 16, seed=5), random_units(300, 16, seed=6)
    tags = [{"colour": "red" if i % 3 else "blue"} for i in range(300)]
    await index.upsert(ENC_A, ids, images, tags)
    await index.upsert(ENC_B, ids, words, tags)
    await index.delete(["p1", "p2"], ENC_A)  # tombstones in one space only
    await index.flush()
    blue = ProductFilter(equals={"colour": "blue"})
    for q in range(6):
        queries = [
            SpaceQuery(ENC_A, words[q], 40, blue if q % 2 else None),
            SpaceQuery(ENC_B, words[q], 25, None),
            SpaceQuery("nobody", words[q], 5, None),
        ]
        one_by_one = [await index.query(*query) for query in queries]
        assert await index.query_several(queries) == one_by_one
        assert index.query_several_now(queries) == one_by_one  # the others side by side
        assert index.query_several_now(queries[:1]) == one_by_one[:1]
        twice = [queries[0], queries[0]]  # one space is never searched by two threads
        assert index.query_several_now(twice) == [one_by_one[0]] * 2

    # a bad query raises once the other space's search is over, and the index stays usable
    short = random_units(1, 8, seed=7)[0]  # not the spaces' dimension
    for bad in (
        [SpaceQuery(ENC_B, words[0], 5), SpaceQuery(ENC_A, short, 5)],
        [
            SpaceQuery(ENC_A, short, 5),
            SpaceQuery(ENC_B, words[0], 5),
        ],
    ):
        with pytest.raises(BadInput):
            index.query_several_now(bad)
    assert index.query_several_now([SpaceQuery(ENC_A, words[0], 3)]) is not None

    # busy (another thread holds the index) or not loaded: None at once, never a wait
    with held_by_another_thread(index):
        assert index.query_several_now([SpaceQuery(ENC_A, words[0], 3)]) is None
    await index.close()
    assert index._side is None
    assert FaissVectorIndex(tmp_path).query_several_now([SpaceQuery(ENC_A, words[0], 3)]) is None


@pytest.mark.parametrize("rows", [300, PREFILTER_MIN_ROWS + 100])
async def test_any_top_k_is_the_start_of_a_larger_one_even_among_equal_scores(
    tmp_path: Path, rows: int
) -> None:
    """Products sharing a photo score the same. FAISS picks among equal scores at the cut
    by its heap's order, which changes with k, so the pages of a search (each asks down to
    its own depth) repeated one such product and skipped another."""
    data = random_units(rows, 64, seed=5)
    data[[50, 120, 121, 200, 260]] = data[7]
    index = FaissVectorIndex(tmp_path, durable=False)
    await fill(index, ENC_A, data)
    query = 0.6 * data[7] + data[3]
    query /= np.linalg.norm(query)
    full = await index.query(ENC_A, query, 60)
    tied = [i for i, (pid, _) in enumerate(full) if pid in {"p00007", "p00050", "p00260"}]
    assert len(tied) == 3
    assert tied[-1] < 20  # the tied products lie among the first pages
    for k in range(1, 25):
        assert await index.query(ENC_A, query, k) == full[:k], k
    await index.close()


@pytest.mark.parametrize(
    ("prefilter", "kernel"), [("int8", True), ("int8", False), ("float16", False)]
)
async def test_a_prefilter_answers_exactly_like_the_float32_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefilter: Prefilter, kernel: bool
) -> None:
    """``kernel``: the 8-bit pass's candidates scored by FAISS's kernel on their rows, or
    by a flat search restricted to them (the public path)."""
    monkeypatch.setattr(faiss_index, "RESCORE_WITH_KERNEL", kernel)
    n, dim = PREFILTER_MIN_ROWS + 1600, 24
    rng = np.random.default_rng(11)
    # clustered rows (close scores), exact duplicates (ties) and a few far larger rows
    centres = random_units(12, dim, seed=12)
    data = centres[rng.integers(0, 12, n)] + 0.15 * rng.standard_normal((n, dim))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    data[100:160] = data[0:60]
    data[3000:3010] *= 3.0
    tags = [{"colour": ("red", "blue", "green")[i % 3]} for i in range(n)]
    index = FaissVectorIndex(tmp_path, compact_dead_fraction=0.1, prefilter=prefilter)
    first_pass = _prefiltered_int8 if prefilter == "int8" else _prefiltered
    ids = [f"p{i}" for i in range(n)]
    await index.upsert(ENC_A, ids[:-1600], data[:-1600], tags[:-1600])
    await index.delete([f"p{i}" for i in range(0, 400, 9)], ENC_A)
    queries = [data[0], data[105], data[3001], *random_units(6, dim, seed=13), *data[200:206]]
    filters = [None, ProductFilter(equals={"colour": "red"})]

    async def same_answers() -> int:
        """Both paths agree on every query; how many the prefilter answered."""
        answered = 0
        for vector in queries:
            for flt in filters:
                for k in (1, 7, 200, 1500):
                    index.prefilter = "off"
                    plain = await index.query(ENC_A, vector, k, flt)
                    index.prefilter = prefilter
                    assert await index.query(ENC_A, vector, k, flt) == plain, (k, flt)
                    with index._lock:
                        space = index._refresh()[ENC_A]
                        mask = space.selection(flt)
                        available = space.n_live if mask is None else int(mask.sum())
                        query = vector.reshape(1, -1).astype(np.float32)
                        answered += first_pass(space, query, k, mask, available) is not None
        return answered

    assert await same_answers() > 0
    # rows appended after the copy was made (a few: scored beside it; many: a new copy),
    # then a compaction (a new flat index)
    await index.upsert(ENC_A, ids[-1600:-1500], data[-1600:-1500], tags[-1600:-1500])
    assert await same_answers() > 0
    if prefilter == "int8":
        space = index._refresh()[ENC_A]
        assert space.eight is not None
        assert space.eight.covered < space.n_rows
    await index.upsert(ENC_A, ids[-1500:], data[-1500:], tags[-1500:])
    await index.upsert(ENC_A, ["p7"], data[8:9], tags[7:8])  # a row moved: old one tombstoned
    assert await same_answers() > 0
    await index.delete([f"p{i}" for i in range(400, 1100)], ENC_A)  # past the dead fraction
    assert await same_answers() > 0
    space = index._refresh()[ENC_A]
    copy = space.eight if prefilter == "int8" else space.half
    assert copy is not None
    assert copy.source is space.index


@pytest.mark.parametrize("k", [1, 11, 201, 1500])
def test_the_8bit_pass_cut_never_exceeds_the_kth_largest_lower_bound(k: int) -> None:
    rng = np.random.default_rng(k)
    for trial in range(40):
        lower = rng.standard_normal(20_000)
        if trial % 4 == 1:  # a filter: most rows out
            lower[rng.random(20_000) < 0.97] = -np.inf
        if trial % 4 == 2:  # sorted: the best rows together, as a catalog's sections are
            lower.sort()
        if trial % 4 == 3:  # many ties
            lower = np.round(lower, 1)
        kth = np.sort(lower)[-k]
        cut = _cut(lower, k)
        assert cut <= kth
        assert np.count_nonzero(lower >= cut) >= k
        if trial % 4 == 0 and k < 1500:  # the sample's guess keeps the candidates few
            assert np.count_nonzero(lower >= cut) <= max(6 * k, 250)


async def test_a_faiss_whose_kernel_scores_otherwise_leaves_the_restricted_search_to_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_units(PREFILTER_MIN_ROWS + 500, 32, seed=21)
    index = FaissVectorIndex(tmp_path, durable=False)
    await fill(index, ENC_A, data)
    query = data[9] + 0.3 * data[4]
    query /= np.linalg.norm(query)
    index.prefilter = "off"
    expected = await index.query(ENC_A, query, 50)
    index.prefilter = "int8"
    real = faiss_index.faiss.fvec_inner_products_by_idx
    calls = 0

    def drifting(ip: object, x: object, y: object, ids: object, d: int, nx: int, ny: int) -> None:
        nonlocal calls
        calls += 1
        real(ip, x, y, ids, d, nx, ny)
        faiss_index.faiss.rev_swig_ptr(ip, ny)[:] += np.float32(1e-6)  # another rounding

    monkeypatch.setattr(faiss_index.faiss, "fvec_inner_products_by_idx", drifting)
    for _ in range(2):
        assert await index.query(ENC_A, query, 50) == expected  # the restricted search's
        assert calls == 1  # the check, once
    space = index._refresh()[ENC_A]
    assert space.kernel_checked == (space.index, False)
    await index.close()
