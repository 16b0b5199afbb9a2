"""`fashion-search serve` without options uses every core without oversubscribing it: one
worker per core (at most MAX_DEFAULT_WORKERS), the cores shared out as torch threads, and a
configured FASHION_SEARCH_TORCH_THREADS (environment or .env) is left alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from fashion_search.cli import app
from fashion_search.commands import api_commands
from fashion_search.commands.api_commands import MAX_DEFAULT_WORKERS, serve_plan


@pytest.mark.parametrize(
    ("cpus", "workers", "threads", "expected"),
    [
        (2, None, None, (2, 1)),  # this machine: 2 workers x 1 thread
        (1, None, None, (1, 1)),
        (8, None, None, (MAX_DEFAULT_WORKERS, 2)),
        (2, 1, None, (1, 2)),  # one worker gets both cores
        (2, 3, None, (3, 1)),  # more workers than cores: still at least one thread
        (2, None, 0, (2, 0)),  # configured (0 = torch's default): kept
        (4, 2, 3, (2, 3)),
    ],
)
def test_serve_plan(
    monkeypatch: pytest.MonkeyPatch,
    cpus: int,
    workers: int | None,
    threads: int | None,
    expected: tuple[int, int],
) -> None:
    monkeypatch.setattr(api_commands, "usable_cpus", lambda: cpus)
    assert serve_plan(workers, threads) == expected


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(api_commands, "usable_cpus", lambda: 2)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.delenv("FASHION_SEARCH_TORCH_THREADS", raising=False)
    return calls


def test_serve_defaults_to_a_worker_per_core_with_one_thread_each(
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    """(The fixture's monkeypatch restores FASHION_SEARCH_TORCH_THREADS afterwards.)"""
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    assert uvicorn_calls[0]["workers"] == 2
    assert os.environ["FASHION_SEARCH_TORCH_THREADS"] == "1"  # inherited by the workers


def test_serve_keeps_configured_torch_threads(
    uvicorn_calls: list[dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("FASHION_SEARCH_TORCH_THREADS=3\n")
    result = CliRunner().invoke(app, ["serve", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert uvicorn_calls[0]["workers"] == 1
    assert "FASHION_SEARCH_TORCH_THREADS" not in os.environ  # the .env value stays in charge
    assert "3 encoder thread(s) each (ONNX Runtime)" in result.output
