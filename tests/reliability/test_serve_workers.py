"""The real ``fashion-search serve --workers 2`` on a loaded machine (issue 16): started beside
a CPU hog (two busy processes, bounded in time and killed at the end), with the ``crashtest``
encoder plugin so that no model is loaded.

* It becomes ready, and once ready ``/readyz`` answers 200 to every probe (a worker still
  warming up never answers, so readiness does not flip between 200 and 503).
* A worker that does not answer the supervisor for longer than uvicorn's default health check
  (5 s, frozen with SIGSTOP: what a starved, still-importing worker looks like) is not killed.
* ``/metrics`` is the whole server's: consecutive scrapes of a counter never go down, and the
  count of requests equals the requests sent, whichever worker answered each.
* The multiprocess metrics directory is emptied on start (a stale file is gone).

The hog runs until the server is ready and stable (the cold start is what load breaks); the
other tests run without it.

Nothing here asserts elapsed time: the deadlines only bound how long a broken server could
hang the test."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.plugin_dist import write_plugin_distribution
from tests.stores.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO_ROOT = Path(__file__).resolve().parents[2]
START_BOUND_S = 240.0
"""How long the loaded server may take to become ready before the test gives up."""
HOG_BOUND_S = 600
"""The CPU hog stops by itself after this long even if the test dies."""
PROBES = 40
FREEZE_S = 8.0
"""Longer than uvicorn's default worker health check (5 s)."""
HEALTHZ = re.compile(
    r'^fashion_search_http_requests_total\{method="GET",route="/healthz",status="200"\} '
    r"([0-9.e+]+)$",
    re.MULTILINE,
)


@dataclass
class Serving:
    process: subprocess.Popen[bytes]
    base: str
    log: Path
    metrics_dir: Path
    hogs: list[subprocess.Popen[bytes]]

    def stop_hogs(self) -> None:
        for hog in self.hogs:
            hog.kill()
            hog.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> set[int]:
        """Pids of the uvicorn workers (spawned children of the serve process)."""
        found = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"spawn_main" in cmdline:
                        found.add(int(pid))
        return found


def cpu_hog(count: int) -> list[subprocess.Popen[bytes]]:
    code = (
        f"import time\nend = time.monotonic() + {HOG_BOUND_S}\nwhile time.monotonic() < end: pass"
    )
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    root = tmp_path_factory.mktemp("serve-workers")
    plugin_path = write_plugin_distribution(
        root / "plugin", "fs-serve-workers-plugin", {"crashtest": "tests.reliability.crash_plugin"}
    )
    metrics_dir = root / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale values of an earlier run")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FASHION_SEARCH_", "PINECONE_", "MONGODB_", "S3_"))
    }
    env.update(
        {
            "FASHION_SEARCH_HOME": str(root / "home"),
            "FASHION_SEARCH_ENCODER": "crashtest:serve",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONPATH": os.pathsep.join([str(plugin_path), str(REPO_ROOT)]),
            "PYTHONUNBUFFERED": "1",
        }
    )
    port = free_port()
    log = root / "serve.log"
    hogs = cpu_hog(2)
    argv = [sys.executable, "-m", "fashion_search.cli", "serve", "--workers", "2"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    serving = Serving(process, f"http://127.0.0.1:{port}", log, metrics_dir, hogs)
    try:
        yield serving
    finally:
        stop(process)
        serving.stop_hogs()


def wait_ready(serving: Serving) -> httpx.Response:
    deadline = time.monotonic() + START_BOUND_S
    while True:
        assert serving.process.poll() is None, serving.text()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{serving.base}/readyz", timeout=30)
            if response.status_code == 200:
                return response
        assert time.monotonic() < deadline, f"never ready:\n{serving.text()[-3000:]}"
        time.sleep(0.2)  # polling for readiness; nothing is ordered by it


def test_ready_beside_a_cpu_hog_and_stable_once_ready(serving: Serving) -> None:
    first = wait_ready(serving)
    assert first.json()["status"] == "ready"
    answers = [httpx.get(f"{serving.base}/readyz", timeout=30).status_code for _ in range(PROBES)]
    assert answers == [200] * PROBES
    assert len(serving.workers()) == 2
    log = serving.text()
    assert "died" not in log, log[-3000:]
    assert not (serving.metrics_dir / "counter_999999.db").exists()  # emptied on start
    serving.stop_hogs()  # the load mattered for the cold start; the other tests need none


def test_a_starved_worker_is_not_killed_by_the_health_check(serving: Serving) -> None:
    wait_ready(serving)
    workers = serving.workers()
    assert len(workers) == 2
    frozen = min(workers)
    os.kill(frozen, signal.SIGSTOP)
    try:
        time.sleep(FREEZE_S)  # the fault's duration, not a measurement
    finally:
        os.kill(frozen, signal.SIGCONT)
    wait_ready(serving)
    assert serving.workers() == workers
    assert "died" not in serving.text()
    answers = [httpx.get(f"{serving.base}/readyz", timeout=30).status_code for _ in range(PROBES)]
    assert answers == [200] * PROBES


def scrape_healthz(serving: Serving) -> float:
    text = httpx.get(f"{serving.base}/metrics", timeout=30).text
    match = HEALTHZ.search(text)
    return float(match.group(1)) if match else 0.0


def test_metrics_are_the_whole_servers(serving: Serving) -> None:
    wait_ready(serving)
    start = scrape_healthz(serving)
    scrapes = []
    for _ in range(PROBES):
        # a new connection each time: the kernel hands them to either worker
        assert httpx.get(f"{serving.base}/healthz", timeout=30).status_code == 200
        scrapes.append(scrape_healthz(serving))
    assert scrapes == sorted(scrapes), scrapes  # never goes down
    assert scrapes[-1] - start == PROBES  # every request counted, whichever worker took it
    files = {p.name for p in serving.metrics_dir.glob("*.db")}
    pids = {int(m) for name in files for m in re.findall(r"_(\d+)\.db$", name)}
    assert pids <= serving.workers(), (files, serving.workers())
    assert len(pids) == 2, files  # both workers write to the shared directory
