"""Shared fixtures. Datasets are read from ../shared/datasets, overridable with
FASHION_SEARCH_DATASETS_DIR."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import subprocess
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from _pytest.faulthandler import fault_handler_stderr_fd_key

REPO_ROOT = Path(__file__).resolve().parent.parent

# Exported ONNX models are made once (about a minute) and shared by every test and the
# processes they start, whatever data directory each uses (FASHION_SEARCH_MODELS_DIR wins
# over FASHION_SEARCH_HOME/models); exports are named by what they were made from.
MODELS_DIR = Path(
    os.environ.setdefault(
        "FASHION_SEARCH_MODELS_DIR", str(REPO_ROOT / ".fashion-search" / "models")
    )
)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    path = Path(
        os.environ.get("FASHION_SEARCH_DATASETS_DIR", REPO_ROOT.parent / "shared" / "datasets")
    )
    if not path.is_dir():
        pytest.fail(f"datasets not found at {path}: set FASHION_SEARCH_DATASETS_DIR")
    return path


@pytest.fixture(scope="session")
def hm_demo(datasets_dir: Path) -> Path:
    return datasets_dir / "hm-demo"


@pytest.fixture(scope="session")
def hm_dev(datasets_dir: Path) -> Path:
    return datasets_dir / "hm-dev"


@pytest.fixture(scope="session")
def kaggle_zip(datasets_dir: Path) -> Path:
    return datasets_dir / "kaggle-fashion-small.zip"


@pytest.fixture(scope="session", autouse=True)
def exported_default_encoder() -> None:
    """Export the default encoder's ONNX models before any test (or server a test starts)
    uses them, so that no request waits for an export; a no-op once they exist."""
    from encoders.fashion_lite.encoder import FashionLiteEncoder

    encoder = FashionLiteEncoder(models_dir=str(MODELS_DIR))
    if not all(model.exists() for model in encoder.onnx_models()):
        encoder.export_onnx()


UNAWAITED_COROUTINES_FAIL_UNDER = (REPO_ROOT / "tests" / "domain", REPO_ROOT / "tests" / "api")
"""Where SearchService and the API run in-process: a coroutine created and never awaited
there (a signal's query made but not gathered) fails the test instead of warning at
garbage collection. The warning reaches pytest as an unraisable exception, hence both
filters."""
_UNAWAITED_FILTERS = (
    "error:coroutine .* was never awaited:RuntimeWarning",
    "error:Exception ignored in. <coroutine object:pytest.PytestUnraisableExceptionWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        where = Path(str(item.path)).resolve()
        if any(where.is_relative_to(folder) for folder in UNAWAITED_COROUTINES_FAIL_UNDER):
            for spec in _UNAWAITED_FILTERS:
                item.add_marker(pytest.mark.filterwarnings(spec))


MIXED_KAGGLE_PRODUCTS = 400
"""Kaggle products (the first, in the zip's order) beside hm-demo in the mixed catalog."""


@pytest.fixture(scope="session")
def mixed_catalog_home(
    tmp_path_factory: pytest.TempPathFactory, hm_demo: Path, kaggle_zip: Path
) -> Path:
    """A shop's first catalog, two styles in one: hm-demo (300 H&M products, terse names)
    and the first MIXED_KAGGLE_PRODUCTS of the Kaggle zip (descriptive names), ingested by
    `fashion-search ingest` with the default encoder into one data directory. Shared by the
    tests that judge real rankings by their labels; they only read it."""
    home = tmp_path_factory.mktemp("mixed-home")
    env = {**os.environ, "FASHION_SEARCH_HOME": str(home)}
    env.pop("FASHION_SEARCH_ENCODER", None)
    for source in ([str(hm_demo)], [str(kaggle_zip), "--limit", str(MIXED_KAGGLE_PRODUCTS)]):
        done = subprocess.run(
            [sys.executable, "-m", "fashion_search.cli", "ingest", *source],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return home


HANG_GRACE_S = 120.0
"""How long a test may run past its pytest-timeout before the run is ended (see below)."""


def _end_hung_run(fd: int, name: str, seconds: float) -> None:
    """Write every thread's stack and every pending asyncio task's to ``fd``, and exit."""
    os.write(fd, f"\n{name} still running after {seconds:g} s: ending the run\n".encode())
    faulthandler.dump_traceback(file=fd, all_threads=True)
    for task in list(getattr(asyncio.tasks, "_all_tasks", ())):  # best effort, from a thread
        if not task.done():
            os.write(fd, f"pending {task!r}\n{''.join(_awaiting(task))}".encode())
    os._exit(1)


def _awaiting(task: asyncio.Task[object]) -> list[str]:
    """Where a task waits: each coroutine of its await chain, outermost first."""
    where: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is not None:
            where.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return where


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """A hung test ends the run as a failure instead of stalling CI. pytest-timeout's signal
    fails a test once; a teardown that then hangs (an event loop waiting for a task that
    ignores its cancellation) is not interrupted again, nor by SIGINT. So if setup, call and
    teardown together outlive the test's timeout by HANG_GRACE_S, the stacks of every thread
    and pending task are written to stderr and the process exits (status 1). (A thread, not
    faulthandler.dump_traceback_later: pytest cancels that as soon as a test fails.)"""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        timeout = float(marker.args[0])
    else:
        timeout = float(item.config.getoption("timeout") or item.config.getini("timeout") or 0)
    if timeout <= 0:
        return (yield)
    seconds = timeout + HANG_GRACE_S
    stderr = item.config.stash[fault_handler_stderr_fd_key]
    watchdog = threading.Timer(seconds, _end_hung_run, (stderr, item.nodeid, seconds))
    watchdog.daemon = True
    watchdog.start()
    try:
        return (yield)
    finally:
        watchdog.cancel()
