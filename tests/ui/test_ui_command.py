"""`fashion-search ui` runs `streamlit run ui/app.py` headless, with the API URL passed to the
app through the environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fashion_search.cli import app as cli
from fashion_search.commands.ui_commands import APP_PATH, streamlit_command


def option(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, argv
    return values[0]


def test_streamlit_command_runs_the_app_headless() -> None:
    argv, env = streamlit_command(port=8611, host="0.0.0.0", api_url="http://api:9000", environ={})
    assert argv[:5] == [sys.executable, "-m", "streamlit", "run", str(APP_PATH)]
    assert Path(__file__).resolve().parents[2] / "ui" / "app.py" == APP_PATH
    assert APP_PATH.is_file()
    assert option(argv, "server.headless") == "true"
    assert option(argv, "server.port") == "8611"
    assert option(argv, "server.address") == "0.0.0.0"
    assert option(argv, "browser.gatherUsageStats") == "false"
    assert env["FASHION_SEARCH_API_URL"] == "http://api:9000"


def test_api_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASHION_SEARCH_API_URL", "http://from-env:1234")
    _, env = streamlit_command()
    assert env["FASHION_SEARCH_API_URL"] == "http://from-env:1234"
    monkeypatch.delenv("FASHION_SEARCH_API_URL")
    _, env = streamlit_command(environ={"PATH": "/bin"})
    assert env["FASHION_SEARCH_API_URL"] == "http://127.0.0.1:8000"
    assert env["PATH"] == "/bin"


def test_cli_ui_hands_over_to_streamlit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append((path, argv, env))

    monkeypatch.setattr(os, "execve", fake_execve)  # the command looks it up at call time
    result = CliRunner().invoke(cli, ["ui", "--port", "8622", "--api-url", "http://api:7"])

    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8622" in result.output
    assert "http://api:7" in result.output
    [(path, argv, env)] = calls
    assert path == sys.executable
    assert argv[3:5] == ["run", str(APP_PATH)]
    assert option(argv, "server.port") == "8622"
    assert option(argv, "server.address") == "127.0.0.1"
    assert env["FASHION_SEARCH_API_URL"] == "http://api:7"
