"""`serve`'s directory for prometheus_client's multiprocess mode: fresh for each run, so
values of an earlier run never count (tests/reliability/test_serve_workers.py checks it on a
real 2-worker server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fashion_search.commands.api_commands import metrics_directory
from fashion_search.settings import METRICS_DIR_ENV


def test_a_temporary_directory_is_exported_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(METRICS_DIR_ENV, raising=False)
    with metrics_directory() as directory:
        assert os.environ[METRICS_DIR_ENV] == str(directory)
        assert directory.is_dir()
        assert list(directory.iterdir()) == []
        (directory / "counter_1.db").write_bytes(b"x")
    assert not directory.exists()
    assert METRICS_DIR_ENV not in os.environ


def test_a_configured_directory_is_emptied_of_metric_files_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configured = tmp_path / "metrics"
    configured.mkdir()
    (configured / "counter_123.db").write_bytes(b"stale")
    (configured / "histogram_456.db").write_bytes(b"stale")
    (configured / "README").write_text("not ours")
    monkeypatch.setenv(METRICS_DIR_ENV, str(configured))
    with metrics_directory() as directory:
        assert directory == configured
        assert sorted(p.name for p in directory.iterdir()) == ["README"]
    assert configured.is_dir()
    assert os.environ[METRICS_DIR_ENV] == str(configured)


def test_a_configured_directory_that_does_not_exist_is_created(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(METRICS_DIR_ENV, str(tmp_path / "new" / "metrics"))
    with metrics_directory() as directory:
        assert directory.is_dir()
