"""`fashion-search demo` (what `make demo` runs) refuses a busy port before doing any work,
names it and says how to pick another (the Makefile's PORT / UI_PORT)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fashion_search.cli import app
from fashion_search.commands.catalog_commands import port_is_free


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on, for the length of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(("which", "variable"), [("--ui-port", "UI_PORT"), ("--port", "PORT")])
def test_a_busy_port_is_named_with_the_variable_that_moves_it(
    busy_port: int, which: str, variable: str, tmp_path: Path, hm_demo: Path
) -> None:
    home = tmp_path / "home"
    env = {"FASHION_SEARCH_HOME": str(home), "FASHION_SEARCH_DEMO_CATALOG": str(hm_demo)}
    ports = {"--port": str(free_port()), "--ui-port": str(free_port()), which: str(busy_port)}
    args = ["demo", *(part for item in ports.items() for part in item)]
    result = CliRunner().invoke(app, args, env=env)
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert (
        f"port {busy_port} for the {'UI' if variable == 'UI_PORT' else 'API'} is in use" in output
    )
    assert f"make demo {variable}=" in output
    suggested = int(output.split(f"make demo {variable}=")[1].split("`")[0])
    assert suggested != busy_port
    assert port_is_free("127.0.0.1", suggested)
    assert "Ready" not in output
    assert not home.exists() or not any(home.rglob("*.faiss"))  # refused before ingesting


def test_port_is_free_sees_a_listener(busy_port: int) -> None:
    assert not port_is_free("127.0.0.1", busy_port)
