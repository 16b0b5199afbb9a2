"""`fashion-search serve` and `fashion-search export-schema`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from fashion_search.settings import METRICS_DIR_ENV

MAX_DEFAULT_WORKERS = 4
"""Each worker loads the encoders (about 1 GB): more cores than this get fewer workers than
cores unless ``--workers`` asks for more."""


WORKER_HEALTHCHECK_TIMEOUT_S = 60
"""uvicorn's supervisor kills a worker that does not answer its ping for this long. Its
default (5 s) kills workers still importing on a loaded machine (load 5-12 on 2 cores), over
and over; a worker that is really hung is still replaced, a minute later."""


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def serve_plan(workers: int | None, torch_threads: int | None) -> tuple[int, int | None]:
    """Worker processes and torch threads per worker: by default one worker per core (at
    most MAX_DEFAULT_WORKERS) and the cores shared out between them, so workers never
    oversubscribe the CPU (2 cores: 2 workers x 1 thread). ``torch_threads`` is the
    configured FASHION_SEARCH_TORCH_THREADS (None: not configured; 0: torch's default),
    returned as is when configured."""
    cpus = usable_cpus()
    workers = workers or min(cpus, MAX_DEFAULT_WORKERS)
    if torch_threads is None:
        torch_threads = max(1, cpus // workers)
    return workers, torch_threads


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """A fresh directory for prometheus_client's multiprocess mode, exported before uvicorn
    starts the workers: PROMETHEUS_MULTIPROC_DIR if set (emptied: values of an earlier run
    must not count), else a temporary directory removed on exit."""
    configured = os.environ.get(METRICS_DIR_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield directory
        return
    directory = Path(tempfile.mkdtemp(prefix="fashion-search-metrics-"))
    os.environ[METRICS_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(METRICS_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Worker processes, each with its own encoders (about 1 GB). Default: one per "
            f"CPU core, at most {MAX_DEFAULT_WORKERS}. Unless FASHION_SEARCH_TORCH_THREADS is "
            "set, each worker gets cores/workers encoder threads (ONNX Runtime's or torch's "
            "intra-op threads; 2 cores: 2 workers x 1 thread).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    worker_healthcheck_timeout: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds a worker may go without answering the supervisor's health check "
            "before it is replaced (starting workers on a loaded machine need more than "
            "uvicorn's 5 s).",
        ),
    ] = WORKER_HEALTHCHECK_TIMEOUT_S,
) -> None:
    """Serve the API: GraphQL (and GraphiQL) at /graphql, REST shims, /docs, /metrics."""
    import uvicorn

    from fashion_search.serving import HeaderDeadlineProtocol
    from fashion_search.settings import Settings
    from fashion_search.wiring import store_settings_problems

    settings = Settings()
    problems = store_settings_problems(settings)
    for store, problem in problems.items():
        typer.echo(f"Error: {store}: {problem}", err=True)
    if problems:
        raise typer.Exit(2)
    configured = settings.torch_threads if "torch_threads" in settings.model_fields_set else None
    workers, torch_threads = serve_plan(workers, configured)
    if configured is None:  # the workers read it from the environment they inherit
        os.environ["FASHION_SEARCH_TORCH_THREADS"] = str(torch_threads)
    threads = "the runtime's default" if torch_threads == 0 else str(torch_threads)
    runtime = "torch" if settings.encoder_runtime == "torch" else "ONNX Runtime"
    typer.echo(f"{workers} worker(s), {threads} encoder thread(s) each ({runtime})", err=True)
    with metrics_directory():
        uvicorn.run(
            "fashion_search.asgi:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            timeout_worker_healthcheck=worker_healthcheck_timeout,
            http=HeaderDeadlineProtocol,  # httptools, as uvicorn picks, with a header deadline
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
