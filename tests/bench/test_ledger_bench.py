"""bench.ledger --ingest-start at a toy size: a ledger filled once with --keep --fill-only is
reused by the timed run, which ingests products the catalog does not hold yet. No timing or
memory figure is asserted here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pymongo import MongoClient

from bench import ledger
from tests.stores.servers import MongoServer, mongo_server

ROWS = 300

__all__ = ["mongo_server"]


def run_bench(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["bench.ledger", "--ingest-start", *args])
    ledger.main()


@pytest.mark.slow
def test_a_kept_ledger_is_filled_once_and_reused(
    mongo_server: MongoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    database = "bench_ledger_test_keep"
    common = ["--rows", str(ROWS), "--mongodb-uri", mongo_server.uri, "--database", database]
    common += ["--keep", "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path)]
    run_bench(monkeypatch, *common, "--fill-only")
    assert not (tmp_path / "ledger-ingest-start.json").exists()  # filling measures nothing

    run_bench(monkeypatch, *common, "--rounds", "1")
    result = json.loads((tmp_path / "ledger-ingest-start.json").read_text())
    data = result["data"]
    assert data["ledger_reused"] is True
    assert data["fill_s"] is not None
    assert len(data["peak_rss_mib"]) == len(data["baseline_peak_rss_mib"]) == 1
    assert {c["unit"] for c in result["checks"]} >= {"s", "MB"}
    client: MongoClient[dict[str, object]] = MongoClient(mongo_server.uri)
    try:
        ledger_docs = client[database][ledger.LEDGER_COLLECTION]
        products = client[database][ledger.PRODUCTS_COLLECTION]
        # the first SMALL_MANIFEST products before the fill, then as many new ones measured
        assert products.count_documents({}) == 2 * ledger.SMALL_MANIFEST
        assert ledger_docs.count_documents({}) == ROWS + 2 * ledger.SMALL_MANIFEST
        assert f"{database}_empty" not in client.list_database_names()  # the baseline's
    finally:
        client.drop_database(database)
        client.close()
