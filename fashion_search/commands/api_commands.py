"""`fashion-search serve` and `fashion-search export-schema`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (each loads the encoder).")
    ] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the API: GraphQL (and GraphiQL) at /graphql, REST shims, /docs, /metrics."""
    import uvicorn

    uvicorn.run(
        "fashion_search.asgi:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


def export_schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print the GraphQL schema (SDL); schema.graphql at the repo root is this output."""
    from api import schema_sdl

    sdl = schema_sdl()
    if output is None:
        typer.echo(sdl, nl=False)
    else:
        output.write_text(sdl, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("serve")(serve)
    app.command("export-schema")(export_schema)
