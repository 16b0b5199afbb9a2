"""FaissVectorIndex with ``hnsw_storage="float16"``: HNSW spaces keep their vectors as IEEE
halves (half the bytes); everything else behaves as with float32 storage, within float16
rounding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from domain.model import ProductFilter
from stores.vectors.faiss_index import FaissVectorIndex
from tests.stores.contracts import ENC_A
from tests.stores.test_faiss import clustered, exact_top, fill, tags_for

HALF_TOL = 2e-3  # float16 rounding of unit-vector components and of their dot products


def storage_of(index: FaissVectorIndex, encoder_id: str) -> Any:
    space = index._refresh()[encoder_id]
    return faiss.downcast_index(space.index.storage) if space.kind == "hnsw" else space.index


def test_rejects_an_unknown_storage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hnsw_storage"):
        FaissVectorIndex(tmp_path, hnsw_storage="int8")  # type: ignore[arg-type]


async def test_hnsw_space_stores_half_floats_and_answers_like_float32(tmp_path: Path) -> None:
    dim, n = 32, 1500
    data = clustered(n + 50, dim, seed=21)
    vectors, queries = data[:n], data[n:]
    index = FaissVectorIndex(tmp_path, hnsw_threshold=1000, hnsw_storage="float16")
    ids = await fill(index, ENC_A, vectors)
    assert index.kind(ENC_A) == "hnsw"
    storage = storage_of(index, ENC_A)
    assert isinstance(storage, faiss.IndexScalarQuantizer)
    assert storage.code_size == 2 * dim

    recalls = []
    for q in queries:
        results = await index.query(ENC_A, q, 10)
        assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)
        found = {pid for pid, _ in results}
        recalls.append(len(found & set(exact_top(vectors, ids, q, 10))) / 10)
    assert float(np.mean(recalls)) >= 0.95

    best = await index.query(ENC_A, vectors[7], 1)
    assert best[0][0] == ids[7]
    assert best[0][1] == pytest.approx(1.0, abs=HALF_TOL)

    fetched = await index.fetch(ENC_A, [ids[3], "missing", ids[9]])
    assert set(fetched) == {ids[3], ids[9]}
    assert fetched[ids[3]].dtype == np.float32
    np.testing.assert_allclose(fetched[ids[3]], vectors[3], atol=HALF_TOL)
    np.testing.assert_allclose(fetched[ids[9]], vectors[9], atol=HALF_TOL)


async def test_filters_deletes_and_compaction_under_float16(tmp_path: Path) -> None:
    dim, n = 24, 2400
    vectors = clustered(n, dim, seed=22)
    for limit in (0, 20_000):  # HNSW with a selector (and its fallback), or exact filtering
        index = FaissVectorIndex(
            tmp_path / str(limit),
            hnsw_threshold=1000,
            exact_filter_limit=limit,
            hnsw_storage="float16",
            durable=False,
        )
        ids = await fill(index, ENC_A, vectors)
        rare = ProductFilter({"bucket": "7"})
        allowed = [i for i in range(n) if tags_for(i)["bucket"] == "7"]
        results = await index.query(ENC_A, vectors[3], 10, rare)
        assert len(results) == 10
        want = exact_top(vectors[allowed], [ids[i] for i in allowed], vectors[3], 10)
        assert len({pid for pid, _ in results} & set(want)) >= 9  # float16 may swap a near tie

    # Deleting most rows compacts the space (rebuilt from the stored halves) back to exact.
    await index.delete(ids[: n - 600])
    assert index.kind(ENC_A) == "flat"
    survivors = await index.query(ENC_A, vectors[n - 1], 600)
    assert sorted(pid for pid, _ in survivors) == sorted(ids[n - 600 :])
    assert survivors[0][0] == ids[n - 1]
    assert survivors[0][1] == pytest.approx(1.0, abs=HALF_TOL)


async def test_float16_space_persists_and_float32_files_still_load(tmp_path: Path) -> None:
    dim, n = 16, 1300
    vectors = clustered(n, dim, seed=23)
    old = FaissVectorIndex(tmp_path, hnsw_threshold=1000)  # float32 HNSW on disk
    ids = await fill(old, ENC_A, vectors)
    await old.close()

    index = FaissVectorIndex(tmp_path, hnsw_threshold=1000, hnsw_storage="float16")
    assert isinstance(storage_of(index, ENC_A), faiss.IndexFlat)  # kept until a rebuild
    assert (await index.query(ENC_A, vectors[5], 1))[0][0] == ids[5]
    await index.compact(ENC_A)
    assert isinstance(storage_of(index, ENC_A), faiss.IndexScalarQuantizer)
    before = await index.query(ENC_A, vectors[11], 10)
    await index.close()

    reopened = FaissVectorIndex(tmp_path, hnsw_threshold=1000, hnsw_storage="float16")
    assert reopened.kind(ENC_A) == "hnsw"
    assert isinstance(storage_of(reopened, ENC_A), faiss.IndexScalarQuantizer)
    assert await reopened.query(ENC_A, vectors[11], 10) == before
