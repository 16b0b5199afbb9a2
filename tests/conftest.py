"""Shared fixtures. Datasets are read from ../shared/datasets, overridable with
FASHION_SEARCH_DATASETS_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
