"""Issue 14, scenarios 1-3 on the embedded profile, with real processes on one data home:
a server with 2 workers while an ingest runs, two ingests at once, SIGKILL of the server's
process group after an acknowledged ``addProduct``. See tests/reliability/embedded_home.py
for the processes and the view of the stores."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from stores.locks import FileWriteLock
from tests.plugin_dist import write_plugin_distribution
from tests.reliability.crash_plugin import CRASH_ENV
from tests.reliability.embedded_home import (
    COUNT,
    ENCODER,
    PRODUCT,
    RUN_BOUND_S,
    SIMILAR,
    Server,
    catalog_ids,
    child_env,
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


# -- randomized: concurrent ingests, mutations, reads and SIGKILLs ---------------------------

STEPS = 10
SEED = int(os.environ.get("FASHION_SEARCH_TEST_SEED", "20261206"))
CATALOGS = 4
CATALOG_SIZE = 8
INGEST_CRASH_POINTS = (
    "images.put",
    "index.upsert",
    "catalog.upsert_many",
    "index.flush",
    "catalog.mark_indexed",
)


@dataclass
class Expectations:
    """What the stores must hold in the end: ``present`` ids were acknowledged (an ingest
    that exited 0, an answered addProduct) and not deleted since; ``absent`` ids were
    acknowledged as deleted, or refused (WRITER_BUSY: nothing written). Other ids are
    uncertain (a killed writer) and only need to agree across the stores."""

    present: set[str] = field(default_factory=set)
    absent: set[str] = field(default_factory=set)

    def acknowledged(self, ids: set[str]) -> None:
        self.present |= ids
        self.absent -= ids

    def deleted(self, pid: str) -> None:
        self.present.discard(pid)
        self.absent.add(pid)

    def uncertain(self, ids: set[str]) -> None:
        self.present -= ids
        self.absent -= ids


@dataclass
class Run:
    process: subprocess.Popen[str]
    ids: set[str]
    killed: bool


def test_random_concurrent_writers_readers_and_sigkills_lose_nothing_acknowledged(
    tmp_path: Path, plugin_path: Path, hm_demo: Path
) -> None:
    """A seeded random sequence of steps on one home served by 2 workers: ingests in the
    background (some SIGKILLed by the crash plugin at a random store call), addProduct and
    deleteProduct while they run, reads of every worker's count, SIGKILLs of the server's
    process group (some with an addProduct in flight). Afterwards every acknowledged write
    is there and no acknowledged delete came back; after ``ingest --verify`` and a rerun of
    the catalogs, catalog, ledger, vectors and images agree exactly."""
    rng = random.Random(SEED)
    home = tmp_path / "home"
    manifests = [
        write_catalog(hm_demo, tmp_path / f"c{i}", slice(i * CATALOG_SIZE, (i + 1) * CATALOG_SIZE))
        for i in range(CATALOGS)
    ]
    expect = Expectations()
    code, output = ingest(home, plugin_path, manifests[0])
    assert code == 0, output
    expect.acknowledged(catalog_ids(manifests[0]))
    server = Server(home, plugin_path, workers=2).start()
    log: list[str] = [f"seed {SEED}"]
    try:
        for step in range(STEPS):
            run = start_random_ingest(rng, home, plugin_path, manifests, log)
            busy = run.ids if run is not None else set()
            for _ in range(rng.randint(1, 3)):
                random_mutation(rng, server, hm_demo, expect, busy, step, log)
            if rng.random() < 0.25:
                server = kill_server_maybe_mid_add(rng, server, hm_demo, expect, step, log)
            if run is not None:
                output, _ = run.process.communicate(timeout=RUN_BOUND_S)
                if run.process.returncode == 0:  # it re-adds what was deleted before it
                    expect.acknowledged(run.ids)
                else:
                    assert run.killed, output
                    expect.uncertain(run.ids - expect.present)
            answers = counts(server.ask_every_worker(COUNT))
            assert len(set(answers.values())) == 1, (answers, log)
            # Not stale: what a fresh process reads. (A SIGKILLed ingest batch may leave
            # product rows without vectors until a rerun or --verify repairs them.)
            assert set(answers.values()) == {read_home(home).vector_count}, log
        assert server.stop() == 0, server.text()
    finally:
        print("\n".join(log))  # the steps, shown when the test fails
        if server.process is not None and server.process.poll() is None:
            server.kill()
    check_expectations(home, expect, log)
    code, output = verify(home, plugin_path)
    assert code == 0, output
    for manifest in manifests:  # finish what killed ingests left, as an operator would
        code, output = ingest(home, plugin_path, manifest)
        assert code == 0, output
    state = read_home(home)
    assert state.agreement_problems() == [], log
    assert expect.present <= set(state.products), log


def start_random_ingest(
    rng: random.Random, home: Path, plugin_path: Path, manifests: list[Path], log: list[str]
) -> Run | None:
    if rng.random() < 0.3:
        return None
    manifest = rng.choice(manifests)
    extra = {}
    if rng.random() < 0.4:
        extra[CRASH_ENV] = f"{rng.choice(INGEST_CRASH_POINTS)}:{rng.randint(1, 2)}"
    log.append(f"ingest {manifest.parent.name} {extra}")
    process = start_ingest(home, plugin_path, manifest, extra)
    return Run(process, catalog_ids(manifest), bool(extra))


def random_mutation(
    rng: random.Random,
    server: Server,
    hm_demo: Path,
    expect: Expectations,
    busy: set[str],
    step: int,
    log: list[str],
) -> None:
    deletable = sorted(expect.present - busy)
    if deletable and rng.random() < 0.4:
        pid = rng.choice(deletable)
        answer = server.delete_product(pid)
        log.append(f"delete {pid}: {answer}")
        if answer.get("errors"):
            assert error_code(answer) == "WRITER_BUSY", answer
        else:
            expect.deleted(pid)
        return
    pid = f"r{step:02d}-{rng.randrange(10_000):04d}"
    answer = server.add_product(pid, f"Random {pid}", photo(hm_demo, rng.randrange(40)))
    log.append(f"add {pid}: {answer}")
    if answer.get("errors"):
        assert error_code(answer) == "WRITER_BUSY", answer
        expect.deleted(pid)  # refused: nothing was written
    else:
        expect.acknowledged({pid})


def kill_server_maybe_mid_add(
    rng: random.Random,
    server: Server,
    hm_demo: Path,
    expect: Expectations,
    step: int,
    log: list[str],
) -> Server:
    """SIGKILL the server's process group, with an addProduct in flight half of the time
    (acknowledged only if its answer arrived), then start it again."""
    in_flight: list[tuple[str, dict[str, Any] | None]] = []
    sender = None
    if rng.random() < 0.5:
        pid = f"k{step:02d}-{rng.randrange(10_000):04d}"

        def send() -> None:
            try:
                in_flight.append((pid, server.add_product(pid, "In flight", photo(hm_demo, 3))))
            except (httpx.HTTPError, ValueError):
                in_flight.append((pid, None))

        sender = threading.Thread(target=send)
        sender.start()
    server.kill()
    if sender is not None:
        sender.join(120)
        pid, answer = in_flight[0]
        log.append(f"kill with add {pid} in flight: {answer}")
        if answer is not None and not answer.get("errors"):
            expect.acknowledged({pid})
        else:
            expect.uncertain({pid})
    else:
        log.append("kill")
    return Server(server.home, server.plugin_path, workers=2).start()


def error_code(answer: dict[str, Any]) -> str:
    return str(answer["errors"][0].get("extensions", {}).get("code"))


def verify(home: Path, plugin_path: Path) -> tuple[int, str]:
    argv = [sys.executable, "-m", "fashion_search.cli", "ingest", "--verify"]
    argv += ["--encoder", ENCODER]
    done = subprocess.run(
        argv,
        cwd=home.parent,
        env=child_env(home, plugin_path),
        capture_output=True,
        text=True,
        timeout=RUN_BOUND_S,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def check_expectations(home: Path, expect: Expectations, log: list[str]) -> None:
    """Before any repair: every acknowledged write is there (catalog, ledger, vectors, its
    image), no acknowledged delete came back."""
    state = read_home(home, probe_ids=sorted(expect.absent))
    missing = {
        pid
        for pid in expect.present
        if pid not in state.products or pid not in state.ledger or pid not in state.vector_ids
    }
    assert missing == set(), (sorted(missing), log)
    back = expect.absent & (set(state.products) | set(state.ledger) | state.vector_ids)
    assert back == set(), (sorted(back), log)
    assert state.referenced_files <= state.image_files, log
