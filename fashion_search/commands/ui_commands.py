"""`fashion-search ui`: the shopper UI (Streamlit), talking to the API over GraphQL."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import typer

import ui
from fashion_search.settings import Settings

APP_PATH = Path(ui.__file__).resolve().parent / "app.py"
THEME = {
    "theme.base": "light",
    "theme.primaryColor": "#b5485d",
    "theme.backgroundColor": "#fffdfb",
    "theme.secondaryBackgroundColor": "#f6f1ed",
    "theme.textColor": "#2b2523",
}


def streamlit_command(
    port: int = 8501,
    host: str = "127.0.0.1",
    api_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the UI headless against `api_url`
    (default: FASHION_SEARCH_API_URL / settings)."""
    env = dict(os.environ if environ is None else environ)
    env["FASHION_SEARCH_API_URL"] = api_url or Settings().api_url
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.headless=true",
        f"--server.port={port}",
        f"--server.address={host}",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
        "--client.toolbarMode=minimal",
        *(f"--{key}={value}" for key, value in THEME.items()),
    ]
    return argv, env


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command("ui")
    def run_ui(
        port: int = typer.Option(8501, "--port", help="Port the UI listens on."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address the UI listens on."),
        api_url: str | None = typer.Option(
            None,
            "--api-url",
            help="API the UI talks to (default: FASHION_SEARCH_API_URL, else "
            "http://127.0.0.1:8000).",
        ),
    ) -> None:
        """Start the shopper UI (Streamlit) against a running API."""
        argv, env = streamlit_command(port=port, host=host, api_url=api_url)
        typer.echo(f"UI:  http://{host}:{port}  (API: {env['FASHION_SEARCH_API_URL']})")
        sys.stdout.flush()
        os.execve(argv[0], argv, env)  # streamlit takes over this process (and its signals)
