"""Issue 14, scenarios 1-3 on the embedded profile, with real processes on one data home:
a server with 2 workers while an ingest runs, two ingests at once, SIGKILL of the server's
process group after an acknowledged ``addProduct``. See tests/reliability/embedded_home.py
for the processes and the view of the stores."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from stores.locks import FileWriteLock
from tests.plugin_dist import write_plugin_distribution
from tests.reliability.embedded_home import (
    COUNT,
    ENCODER,
    PRODUCT,
    SIMILAR,
    Server,
    catalog_ids,
    ingest,
    read_home,
    running,
    start_ingest,
    write_catalog,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin_distribution(
        tmp_path_factory.mktemp("embedded-plugin"),
        "fs-embedded-home-plugin",
        {"crashtest": "tests.reliability.crash_plugin"},
    )


def photo(hm_demo: Path, index: int) -> bytes:
    return sorted((hm_demo / "images").glob("*.jpg"))[-1 - index].read_bytes()


def counts(answers: dict[int, dict[str, object]]) -> dict[int, int]:
    """indexedCount of the test encoder, per worker."""
    found = {}
    for worker, answer in answers.items():
        assert "errors" not in answer, answer
        encoders = answer["data"]["encoders"]  # type: ignore[index]
        found[worker] = next(e["indexedCount"] for e in encoders if e["id"] == ENCODER)
    return found


def assert_exactly(home: Path, expected: set[str]) -> None:
    state = read_home(home)
    assert set(state.products) == expected
    assert state.agreement_problems() == []


def test_an_ingest_while_serving_reaches_every_worker_and_the_disk(
    tmp_path: Path, plugin_path: Path, hm_demo: Path
) -> None:
    """Scenario 1: serve (2 workers), addProduct, an ingest in another process while it
    serves, a normal stop. Both workers answer the new products without a restart, and
    everything is on disk afterwards."""
    home = tmp_path / "home"
    first = write_catalog(hm_demo, tmp_path / "first", slice(0, 6))
    more = write_catalog(hm_demo, tmp_path / "more", slice(6, 26))
    code, output = ingest(home, plugin_path, first)
    assert code == 0, output
    expected = catalog_ids(first)
    server = Server(home, plugin_path, workers=2)
    with running(server):
        added = server.add_product("added-while-serving", "Added while serving", photo(hm_demo, 0))
        assert added.get("errors") is None, added
        expected.add("added-while-serving")
        assert set(counts(server.ask_every_worker(COUNT)).values()) == {len(expected)}

        code, output = ingest(home, plugin_path, more)
        assert code == 0, output
        expected |= catalog_ids(more)
        assert set(counts(server.ask_every_worker(COUNT)).values()) == {len(expected)}
        newest = sorted(catalog_ids(more))[-1]
        for answer in server.ask_every_worker(SIMILAR, id=newest).values():
            hits = answer["data"]["similarProducts"]["hits"]
            assert hits, answer
        for answer in server.ask_every_worker(PRODUCT, id="added-while-serving").values():
            assert answer["data"]["product"]["id"] == "added-while-serving"
        assert server.stop() == 0, server.text()
    assert_exactly(home, expected)
    code, output = ingest(home, plugin_path, more)  # nothing to repair
    assert code == 0, output
    assert_exactly(home, expected)


def test_two_ingests_at_once_both_complete(
    tmp_path: Path, plugin_path: Path, hm_demo: Path
) -> None:
    """Scenario 2: two ingests of two catalogs into one home at once. The test holds the
    home's lock until both have started, so their batches really interleave; both complete,
    nothing is lost, and a rerun has nothing to repair. A writer that cannot wait is refused
    with one line naming the holder."""
    home = tmp_path / "home"
    home.mkdir()
    one = write_catalog(hm_demo, tmp_path / "one", slice(0, 16))
    two = write_catalog(hm_demo, tmp_path / "two", slice(16, 32))
    lock = FileWriteLock(home / "writer.lock", wait_s=5)

    async def hold_until_both_started() -> None:
        async with lock.hold("test"):
            runs = [start_ingest(home, plugin_path, one), start_ingest(home, plugin_path, two)]
            for run in runs:  # each has read its catalog and waits for the lock
                assert run.stdout is not None
                while not (line := await asyncio.to_thread(run.stdout.readline)).startswith(
                    "Reading"
                ):
                    assert line, "the ingest ended before reading its catalog"
            refused, output = await asyncio.to_thread(
                ingest, home, plugin_path, one, {"FASHION_SEARCH_INGEST_WRITE_WAIT_S": "0.2"}
            )
            assert refused != 0
            message = [line for line in output.splitlines() if "Error" in line]
            assert len(message) == 1, output
            assert f"pid {os.getpid()} (test: " in message[0]
        outputs = [await asyncio.to_thread(run.communicate) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs

    asyncio.run(hold_until_both_started())
    expected = catalog_ids(one) | catalog_ids(two)
    assert_exactly(home, expected)
    for manifest in (one, two):
        code, output = ingest(home, plugin_path, manifest)
        assert code == 0, output
    assert_exactly(home, expected)


def test_an_acknowledged_add_survives_sigkill_of_the_server(
    tmp_path: Path, plugin_path: Path, hm_demo: Path
) -> None:
    """Scenario 3: addProduct answered, then SIGKILL of the server's whole process group:
    after a restart the product is searchable, and every worker answers the same count."""
    home = tmp_path / "home"
    first = write_catalog(hm_demo, tmp_path / "first", slice(0, 6))
    code, output = ingest(home, plugin_path, first)
    assert code == 0, output
    expected = catalog_ids(first) | {"added-then-killed"}
    server = Server(home, plugin_path, workers=2)
    with running(server):
        added = server.add_product("added-then-killed", "Added then killed", photo(hm_demo, 1))
        assert added.get("errors") is None, added
        server.kill()
    with running(Server(home, plugin_path, workers=2)) as restarted:
        assert set(counts(restarted.ask_every_worker(COUNT)).values()) == {len(expected)}
        for answer in restarted.ask_every_worker(SIMILAR, id="added-then-killed").values():
            assert answer["data"]["similarProducts"]["hits"], answer
        restarted.stop()
    assert_exactly(home, expected)
