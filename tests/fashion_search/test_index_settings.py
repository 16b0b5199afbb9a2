"""The FAISS index as the composition root builds it from settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashion_search.settings import Settings
from fashion_search.wiring import build_index
from stores.vectors.faiss_index import FaissVectorIndex


def test_hnsw_spaces_store_float16_by_default(tmp_path: Path) -> None:
    index = build_index(Settings(home=tmp_path))
    assert isinstance(index, FaissVectorIndex)
    assert index.hnsw_storage == "float16"
    assert index.hnsw_threshold == 100_000


def test_hnsw_storage_and_threshold_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASHION_SEARCH_FAISS_HNSW_STORAGE", "float32")
    monkeypatch.setenv("FASHION_SEARCH_FAISS_HNSW_THRESHOLD", "5000")
    index = build_index(Settings(home=tmp_path))
    assert isinstance(index, FaissVectorIndex)
    assert (index.hnsw_storage, index.hnsw_threshold) == ("float32", 5000)


def test_an_unknown_storage_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHION_SEARCH_FAISS_HNSW_STORAGE", "int4")
    with pytest.raises(ValueError, match="faiss_hnsw_storage"):
        Settings()
