"""The home's writer lock as the composition root builds it from settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashion_search.settings import Settings
from fashion_search.wiring import build_write_lock
from stores.locks import FileWriteLock, NullWriteLock


def test_an_embedded_home_gets_a_file_lock_with_the_configured_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASHION_SEARCH_WRITE_WAIT_S", "2.5")
    monkeypatch.setenv("FASHION_SEARCH_INGEST_WRITE_WAIT_S", "60")
    lock = build_write_lock(Settings(home=tmp_path))
    assert isinstance(lock, FileWriteLock)
    assert lock.path == tmp_path / "writer.lock"
    assert (lock.wait_for("addProduct"), lock.wait_for("ingest")) == (2.5, 60)


def test_one_embedded_store_is_enough_for_the_file_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAISS in the home with the catalog and images elsewhere still needs the lock."""
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1")
    monkeypatch.setenv("S3_BUCKET", "shop")
    assert isinstance(build_write_lock(Settings(home=tmp_path)), FileWriteLock)


def test_production_stores_get_a_lock_that_holds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINECONE_API_KEY", "key")
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1")
    monkeypatch.setenv("S3_BUCKET", "shop")
    assert isinstance(build_write_lock(Settings(home=tmp_path)), NullWriteLock)
