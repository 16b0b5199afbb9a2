"""Shared fixtures. Datasets are read from ../shared/datasets, overridable with
FASHION_SEARCH_DATASETS_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
