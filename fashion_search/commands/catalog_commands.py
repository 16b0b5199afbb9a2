"""`fashion-search ingest`, `search` and `demo`: getting a catalog in and asking it questions
before (and without) the API."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from domain.errors import FashionSearchError
from domain.indexer import iter_ledger
from domain.ledger_check import (
    KINDS,
    MISSING_IMAGE,
    UNREFERENCED_IMAGE,
    CheckReport,
    LedgerCheck,
    stale_ledger_reasons,
)
from domain.model import (
    PRODUCT_TEXT_SPACE_SUFFIX,
    ImageQuery,
    MatchQuality,
    ProductFilter,
    SearchPage,
    SearchQuery,
    TextQuery,
)
from domain.ports import Encoder, indexed_by_current_version
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build, check_index_fits, describe_stores, s3_access
from ingest.pipeline import DEFAULT_BATCH_SIZE, IngestOptions
from ingest.ray_engine import RayOptions, ray_engine
from ingest.readers import Source, open_source
from ingest.report import (
    IngestProgress,
    IngestSummary,
    default_report_path,
    failures_by_reason,
    report_document,
    write_report,
)

console = Console()
errors = Console(stderr=True)

T = TypeVar("T")


class Engine(StrEnum):
    """Where ``ingest`` runs its reading and encoding (the writes are the same)."""

    LOCAL = "local"
    RAY = "ray"


KEY_TAGS = (
    "type",
    "colour",
    "audience",
    "product_type",
    "articleType",
    "baseColour",
    "colour_master",
    "section",
    "gender",
    "masterCategory",
    "subCategory",
    "product_group",
    "folder",
)
"""Tags worth a column in search results, in this order (the canonical keys first); others
follow if there is room."""
SHOWN_TAGS = 3
SHOWN_FAILURES = 10


def make_container(settings: Settings) -> Container:
    """The composition root, behind a seam tests may replace."""
    return build(settings)


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]Error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with the product's own errors shown as one clear line (no traceback)."""
    try:
        return asyncio.run(coroutine)
    except FashionSearchError as exc:
        raise fail(str(exc)) from None


# -- ingest ----------------------------------------------------------------------------------


class RateColumn(ProgressColumn):
    """Items per second, averaged by Rich over the last updates."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} items/s" if speed else "-- items/s", style="progress.data.speed")


@contextmanager
def ingest_progress(description: str) -> Iterator[Callable[[IngestProgress], None]]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[outcome]}"),
        console=console,
        transient=False,
    )
    task = progress.add_task(description, total=None, outcome="")

    def update(p: IngestProgress) -> None:
        outcome = f"new {p.indexed:,} · unchanged {p.skipped:,} · failed {p.failed:,}"
        if p.updated:
            outcome += f" · updated {p.updated:,}"
        progress.update(task, completed=p.done, total=p.total, outcome=outcome)

    with progress:
        yield update


async def run_ingest(
    container: Container,
    source: Source,
    encoders: Sequence[Encoder],
    options: IngestOptions,
    on_ray: RayOptions | None = None,
) -> IngestSummary:
    """Ingest with the local engine, or on Ray when ``on_ray`` is given (same writes and
    report)."""
    total = await asyncio.to_thread(source.count)
    if on_ray is None:
        with ingest_progress("Ingesting") as on_progress:
            pipeline = container.ingest_pipeline(encoders, options, on_progress)
            return await pipeline.run(source, total)
    with ray_engine(on_ray, container.ray_encoder_factory(encoders)) as engine:
        console.print(f"Ray Data: {on_ray.workers} encoder actor(s)", highlight=False)
        with ingest_progress("Ingesting on Ray") as on_progress:
            ray_pipeline = container.ingest_pipeline(encoders, options, on_progress, engine)
            return await ray_pipeline.run(source, total)


def resolve_encoders(container: Container, encoder_ids: Sequence[str] | None) -> list[Encoder]:
    """Encoders by id (the configured default when none is given); unknown ids raise."""
    encoders: list[Encoder] = []
    wanted: list[str | None] = list(encoder_ids) if encoder_ids else [None]
    for encoder_id in wanted:
        encoder = container.encoders.get(encoder_id)
        if all(e.id != encoder.id for e in encoders):
            encoders.append(encoder)
    return encoders


def print_summary(summary: IngestSummary, report: Path) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("encoders", ", ".join(summary.encoders))
    table.add_row("seen", f"{summary.seen:,}")
    table.add_row("indexed (new or changed image)", f"{summary.indexed:,}")
    if summary.updated:
        table.add_row("updated (name, description or tags)", f"{summary.updated:,}")
    table.add_row("skipped (unchanged)", f"{summary.skipped_unchanged:,}")
    table.add_row("failed", f"{summary.failed:,}")
    table.add_row("wall time", f"{summary.seconds:,.1f} s")
    table.add_row("images/s", f"{summary.images_per_s:,.1f}")
    console.print(table)
    if summary.failures:
        by_reason = ", ".join(f"{k}: {v}" for k, v in failures_by_reason(summary.failures).items())
        failed = Table(title=f"Failed items ({by_reason})", title_justify="left")
        failed.add_column("id")
        failed.add_column("reason")
        failed.add_column("image", overflow="fold")
        failed.add_column("message", overflow="fold")
        for item in summary.failures[:SHOWN_FAILURES]:
            failed.add_row(item.id or "-", item.reason.value, item.image, item.message)
        console.print(failed)
        more = len(summary.failures) - SHOWN_FAILURES
        if more > 0:
            console.print(f"... and {more:,} more.")
    console.print(f"Report: {report}", highlight=False)


async def ingest_path(
    settings: Settings,
    path: Path | str,
    encoder_ids: Sequence[str] | None,
    options: IngestOptions,
    report: Path | None,
    verify: bool = False,
    on_ray: RayOptions | None = None,
) -> tuple[IngestSummary, Path]:
    started = datetime.now(UTC)
    with open_source(path, s3_access(settings)) as source:
        container = make_container(settings)
        try:
            encoders = resolve_encoders(container, encoder_ids)
            await check_index_fits(container.index, encoders)
            if verify:
                await verify_and_repair(container, encoders)
            elif not options.reindex:
                options = await trust_or_reindex(container, encoders, options)
            console.print(
                f"Reading [bold]{source.location}[/] ({source.layout} layout) into "
                f"[bold]{describe_stores(settings).names}[/] with {', '.join(e.id for e in encoders)}",
                highlight=False,
            )
            summary = await run_ingest(container, source, encoders, options, on_ray)
        finally:
            await container.aclose()
        document = report_document(
            summary,
            source=source.location,
            layout=source.layout,
            started_at=started,
            options={
                "batch_size": options.batch_size,
                "limit": options.limit,
                "max_image_bytes": options.max_image_bytes,
                "reindex": options.reindex,
                "engine": "local" if on_ray is None else "ray",
                "workers": None if on_ray is None else on_ray.workers,
            },
        )
    written = write_report(report or default_report_path(settings.home, started), document)
    return summary, written


async def trust_or_reindex(
    container: Container, encoders: Sequence[Encoder], options: IngestOptions
) -> IngestOptions:
    """The common case of a ledger that cannot be trusted (a new or emptied index or bucket
    behind an existing ledger): say so and encode everything again."""
    names = describe_stores(container.settings).names
    reasons = await stale_ledger_reasons(
        container.index, container.catalog, container.images, encoders, names
    )
    if not reasons:
        return options
    for reason in reasons:
        console.print(f"[yellow]Note:[/] {reason}.", highlight=False)
    console.print("Ignoring the ledger: every product is encoded and written again.")
    return replace(options, reindex=True)


async def verify_and_repair(container: Container, encoders: Sequence[Encoder]) -> None:
    """``ingest --verify``: compare the ledger with the stores, report each kind of
    disagreement, then repair what can be repaired from the stored images."""
    names = describe_stores(container.settings).names
    console.print(f"Checking the ledger against {names}", highlight=False)
    check = LedgerCheck(container.index, container.catalog, container.images, container.indexer)
    found = await check.run(encoders)
    print_check(found)
    if found.clean:
        console.print(f"All {found.products:,} products agree with the ledger.")
        return
    repaired = await check.repair(found, encoders)
    console.print(
        f"Repaired: {repaired.reencoded:,} products encoded again from their stored images, "
        f"{repaired.forgotten:,} ledger entries dropped (an ingest of the source redoes "
        "products whose image is missing).",
        highlight=False,
    )
    for pid, why in list(repaired.failed.items())[:SHOWN_FAILURES]:
        console.print(f"  not repaired: {pid}: {why}", highlight=False)
    if found.unreferenced_images:
        console.print(
            f"Left in place: {found.unreferenced_images:,} image objects no product points at "
            f"(e.g. {', '.join(found.unreferenced_examples[:3])}); one may belong to a write "
            "in progress, so none is deleted: remove them from the image store once no ingest "
            "or server writes.",
            highlight=False,
        )


def print_check(found: CheckReport) -> None:
    table = Table(title=f"Ledger check ({found.products:,} products)", title_justify="left")
    table.add_column("encoder")
    table.add_column("disagreement")
    table.add_column("count", justify="right")
    table.add_column("examples", overflow="fold")
    for encoder_id, findings in found.by_encoder.items():
        for kind, label in KINDS.items():
            n = findings.count(kind)
            examples = ", ".join(findings.ids.get(kind, [])[:3])
            table.add_row(encoder_id, label, f"{n:,}", examples)
    table.add_row(
        "-", MISSING_IMAGE, f"{len(found.missing_images):,}", ", ".join(found.missing_images[:3])
    )
    table.add_row(
        "-",
        UNREFERENCED_IMAGE,
        f"{found.unreferenced_images:,}",
        ", ".join(found.unreferenced_examples[:3]),
    )
    console.print(table)


async def encoders_to_verify(
    container: Container, encoder_ids: Sequence[str] | None
) -> list[Encoder]:
    """The encoders asked for; by default every encoder with vectors here that this machine
    can load (others are named and skipped), or the default one in an empty home."""
    if encoder_ids:
        return resolve_encoders(container, encoder_ids)
    encoders: list[Encoder] = []
    for encoder_id in await container.index.encoder_ids():
        if encoder_id.endswith(PRODUCT_TEXT_SPACE_SUFFIX):  # follows its encoder's products
            continue
        try:
            encoders.append(container.encoders.get(encoder_id))
        except FashionSearchError:  # not an encoder here (another space, a missing plugin)
            console.print(f"Not checking {encoder_id}: no such encoder here.", highlight=False)
    return encoders or resolve_encoders(container, None)


async def verify_only(settings: Settings, encoder_ids: Sequence[str] | None) -> None:
    container = make_container(settings)
    try:
        await verify_and_repair(container, await encoders_to_verify(container, encoder_ids))
    finally:
        await container.aclose()


def ingest_command(
    path: Annotated[
        str | None,
        typer.Argument(
            help="A Kaggle styles.csv + images/ folder or zip, a CSV/JSONL manifest (or a folder "
            "with products.csv / manifest.jsonl; local or s3://bucket/key, its images local, "
            "http(s) or s3://, read with S3_ENDPOINT_URL and the AWS settings), or a folder "
            "of images. Optional with --verify.",
            show_default=False,
        ),
    ] = None,
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            "--encoder",
            "-e",
            help="Encoder id (repeat for several; default: FASHION_SEARCH_ENCODER).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=0, help="Ingest at most this many items."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")
    ] = DEFAULT_BATCH_SIZE,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Where to write the JSON report (default: $FASHION_SEARCH_HOME/reports/).",
            show_default=False,
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="First compare the ledger with the vector index, catalog and images, report "
            "each disagreement and re-encode what is missing from the stored images.",
        ),
    ] = False,
    reindex: Annotated[
        bool,
        typer.Option("--reindex", help="Ignore the ledger: encode and write every item again."),
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="local: this process. ray: a Ray cluster (RAY_ADDRESS or --ray-address; a "
            "local Ray on this machine's cores when neither is set); needs "
            "pip install 'fashion-search[ray]'.",
        ),
    ] = Engine.LOCAL,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="The Ray cluster for --engine ray (default: RAY_ADDRESS).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, help="Encoder actors for --engine ray (1 CPU each)."),
    ] = 1,
) -> None:
    """Ingest a catalog: images are encoded, stored and indexed; unchanged items are skipped,
    bad images are listed and written to the report, never fatal."""
    settings = Settings()
    if path is None:
        if not verify:
            raise fail("give the catalog to ingest (PATH), or --verify to check the stores", 2)
        run_async(verify_only(settings, encoder))
        return
    options = IngestOptions(
        batch_size=batch_size,
        limit=limit,
        max_image_bytes=settings.max_image_bytes,
        reindex=reindex,
    )
    if engine is Engine.LOCAL and (ray_address is not None or workers != 1):
        raise fail("--workers and --ray-address are options of --engine ray", 2)
    on_ray = RayOptions(ray_address, workers) if engine is Engine.RAY else None
    summary, written = run_async(
        ingest_path(settings, path, encoder, options, report, verify, on_ray)
    )
    print_summary(summary, written)


# -- search ----------------------------------------------------------------------------------


def parse_filters(values: Sequence[str] | None) -> ProductFilter | None:
    """``key=value`` pairs; a key given several times matches any of its values."""
    if not values:
        return None
    grouped: dict[str, list[str]] = {}
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key.strip() or not wanted.strip():
            raise typer.BadParameter(f"expected key=value, got {value!r}", param_hint="--filter")
        grouped.setdefault(key.strip(), []).append(wanted.strip())
    equals = {k: v[0] for k, v in grouped.items() if len(v) == 1}
    any_of = {k: tuple(v) for k, v in grouped.items() if len(v) > 1}
    return ProductFilter(equals=equals, any_of=any_of)


def key_tags(tags: Mapping[str, str], limit: int = SHOWN_TAGS) -> str:
    ordered = [k for k in KEY_TAGS if k in tags] + [k for k in tags if k not in KEY_TAGS]
    values = dict.fromkeys(tags[k] for k in ordered)  # each value once (baseColour = colour)
    return ", ".join(list(values)[:limit])


def results_table(page: SearchPage, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    table.add_column("name")
    table.add_column("tags")
    for hit in page.hits:
        table.add_row(
            str(hit.rank),
            hit.product.id,
            f"{hit.score:.3f}",
            hit.product.name,
            key_tags(hit.product.tags),
        )
    return table


async def run_search(settings: Settings, query: SearchQuery) -> SearchPage:
    container = make_container(settings)
    try:
        encoder = container.encoders.get(query.encoder_id)
        if await container.index.count(encoder.id) == 0:
            raise fail(
                f"nothing is indexed for encoder {encoder.id!r} in "
                f"{describe_stores(settings).names.vectors}: run `fashion-search ingest PATH` first"
            )
        return await container.search.search(query)
    finally:
        await container.aclose()


def search_command(
    text: Annotated[
        str | None, typer.Argument(help="What to look for, e.g. 'red dress'.", show_default=False)
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(
            "--image",
            "-i",
            help="Find products that look like this image (with TEXT: the text modifies it).",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many results (1-100).")] = 10,
    encoder: Annotated[
        str | None,
        typer.Option("--encoder", "-e", help="Encoder id (default: FASHION_SEARCH_ENCODER)."),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            "-f",
            help="Only products with this tag, as key=value (repeatable; one key several "
            "times means any of the values).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Search the catalog by text, by image, or both, and print the best matches."""
    settings = Settings()
    if text is None and image is None:
        raise fail("give a search text, --image PATH, or both", code=2)
    image_query = None
    if image is not None:
        if not image.is_file():
            raise fail(f"no such image file: {image}")
        if image.stat().st_size > settings.max_image_bytes:
            raise fail(f"{image} is larger than {settings.max_image_bytes:,} bytes")
        image_query = ImageQuery(data=image.read_bytes())
    try:
        query = SearchQuery(
            text=TextQuery(text) if text is not None else None,
            image=image_query,
            filter=parse_filters(filters),
            top_k=top_k,
            encoder_id=encoder,
        )
    except FashionSearchError as exc:
        raise fail(str(exc), code=2) from None
    page = run_async(run_search(settings, query))
    what = " + ".join(x for x in (repr(text) if text else "", str(image or "")) if x)
    title = f"{what} · {page.encoder_id} · {page.took_ms:.0f} ms"
    if not page.hits:
        console.print(f"No results for {what}.", highlight=False)
        return
    if page.match_quality is MatchQuality.NONE:
        console.print(
            "No close matches: the products below are only the nearest there are.",
            highlight=False,
        )
    console.print(results_table(page, title))


# -- demo ------------------------------------------------------------------------------------


async def ledger_is_current(container: Container, encoder: Encoder) -> bool:
    """Whether every ledger entry of the encoder was made with its current weights (read in
    pages: bounded memory whatever the catalog's size)."""
    async for page in iter_ledger(container.catalog, encoder.id):
        if not all(indexed_by_current_version(encoder, entry) for entry in page.values()):
            return False
    return True


async def ensure_demo_catalog(settings: Settings, catalog: Path) -> IngestSummary | None:
    """Ingest the demo catalog when the default encoder's index is empty, or holds vectors
    made with other weights of the encoder (a new heads file), which are encoded again."""
    container = make_container(settings)
    try:
        encoder = container.encoders.get(None)
        if await container.index.count(encoder.id) > 0:
            if await ledger_is_current(container, encoder):
                count = await container.catalog.count()
                console.print(f"Index already holds {count:,} products ({settings.home}).")
                return None
            console.print(
                f"The {encoder.id} index was built with other weights of the encoder: encoding "
                f"the demo catalog {catalog} again (ingest other catalogs again too)"
            )
        else:
            console.print(f"Empty index: ingesting the demo catalog {catalog}")
        with open_source(catalog) as source:
            options = IngestOptions(max_image_bytes=settings.max_image_bytes)
            options = await trust_or_reindex(container, [encoder], options)
            summary = await run_ingest(container, source, [encoder], options)
            document = report_document(summary, source.location, source.layout)
    finally:
        await container.aclose()
    print_summary(summary, write_report(default_report_path(settings.home), document))
    return summary


def cli_command(name: str, options: Mapping[str, str]) -> list[str]:
    """``python -m fashion_search.cli NAME --opt value ...`` with this interpreter."""
    argv = [sys.executable, "-m", "fashion_search.cli", name]
    for flag, value in options.items():
        argv += [flag, value]
    return argv


def command_options(root: object, name: str) -> set[str] | None:
    """The option flags of a sub-command of the CLI's (click) group, or None when it does not
    exist."""
    commands: Mapping[str, object] = getattr(root, "commands", {})
    command = commands.get(name)
    if command is None:
        return None
    return {flag for param in getattr(command, "params", []) for flag in getattr(param, "opts", [])}


def spawn(argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """A child in its own session: a Ctrl-C in the terminal reaches only this process, which
    then stops each child exactly once (a second SIGINT makes servers skip their shutdown)."""
    return subprocess.Popen(argv, env=dict(env), start_new_session=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.3)
    return False


def stop_processes(processes: Sequence[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """SIGINT first (each shuts down cleanly), then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        alive = [p for _, p in processes if p.poll() is None]
        if not alive:
            return
        for process in alive:
            process.send_signal(sig)
        deadline = time.monotonic() + grace
        for process in alive:
            with suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))


DEMO_PORT_TRIES = 20
"""How many ports after a busy one `demo` looks at to suggest a free one."""


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (the same bind the servers do)."""
    family = socket.AF_INET6 if ":" in connect_host(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "127.0.0.1", port))
        except OSError:
            return False
    return True


def next_free_port(host: str, port: int, tries: int = DEMO_PORT_TRIES) -> int | None:
    return next((p for p in range(port + 1, port + 1 + tries) if port_is_free(host, p)), None)


def busy_port_hint(what: str, port: int, variable: str, host: str) -> str:
    """Which port is taken and how to choose another (make variable and CLI option)."""
    free = next_free_port(host, port)
    option = "--port" if variable == "PORT" else "--ui-port"
    suggestion = free if free is not None else port + 1
    return (
        f"port {port} for the {what} is in use (another demo or server?). Pick another: "
        f"`make demo {variable}={suggestion}` (or `fashion-search demo {option} {suggestion}`)"
    )


def check_ports_free(host: str, ports: Sequence[tuple[str, int, str]]) -> None:
    """Refuse to start when a port is busy, before any ingest or child process."""
    for what, port, variable in ports:
        if not port_is_free(host, port):
            raise fail(busy_port_hint(what, port, variable, host))


def demo(
    root: Callable[[], object],
    host: str,
    port: int,
    ui_port: int,
    no_ui: bool,
) -> None:
    settings = Settings()
    catalog = settings.demo_catalog_path
    if not catalog.exists():
        raise fail(
            f"demo catalog not found at {catalog}: set FASHION_SEARCH_DEMO_CATALOG "
            "(or FASHION_SEARCH_DATASETS_DIR)"
        )
    cli = root()
    wanted_ports = [("API", port, "PORT")]
    if not no_ui and command_options(cli, "ui") is not None:
        wanted_ports.append(("UI", ui_port, "UI_PORT"))
    check_ports_free(host, wanted_ports)
    run_async(ensure_demo_catalog(settings, catalog))

    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    api_url = f"http://{connect_host(host)}:{port}"
    env = {**os.environ, "FASHION_SEARCH_API_URL": api_url}
    serve_flags = command_options(cli, "serve")
    if serve_flags is None:
        console.print("[yellow]The API (`fashion-search serve`) is not part of this build.[/]")
    else:
        argv = cli_command("serve", {"--host": host, "--port": str(port)})
        processes.append(("API", spawn(argv, env)))
    ui_flags = command_options(cli, "ui")
    if not no_ui and ui_flags is not None:
        wanted = {"--port": str(ui_port), "--host": host, "--api-url": api_url}
        ui_options = {flag: value for flag, value in wanted.items() if flag in ui_flags}
        processes.append(("UI", spawn(cli_command("ui", ui_options), env)))
    elif not no_ui:
        console.print("[yellow]The UI (`fashion-search ui`) is not part of this build.[/]")

    if not processes:
        console.print('Search from the command line: fashion-search search "black trousers"')
        return
    # Ctrl-C and `kill` stop the children too (SIGINT explicitly: a shell starting this in
    # the background would otherwise have it ignored).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        lines = []
        if serve_flags is not None:
            api = processes[0][1]
            if not wait_for_port(connect_host(host), port, api, timeout=120):
                stop_processes(processes)
                raise fail(f"the API did not start on {host}:{port} (see its output above)")
            lines.append(f"API  {api_url}/graphql")
        ui = next((process for name, process in processes if name == "UI"), None)
        if ui is not None:
            if not wait_for_port(connect_host(host), ui_port, ui, timeout=60):
                stop_processes(processes)
                raise fail(busy_port_hint("UI", ui_port, "UI_PORT", host))
            lines.append(f"UI   http://{connect_host(host)}:{ui_port}")
        console.print("\n[bold green]Ready.[/] " + "   ".join(lines) + "   (Ctrl-C stops)")
        while True:
            for name, process in processes:
                code = process.poll()
                if code is not None:
                    stop_processes(processes)
                    raise fail(f"the {name} stopped (exit code {code})", code=code or 1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\nStopping...")
        stop_processes(processes)
        console.print("Stopped.")
    finally:
        stop_processes(processes)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- registration ----------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("ingest")(ingest_command)
    app.command("search")(search_command)

    @app.command("demo")
    def demo_command(
        host: Annotated[str, typer.Option("--host", help="Address the API listens on.")] = (
            "127.0.0.1"
        ),
        port: Annotated[int, typer.Option("--port", help="Port of the API.")] = 8000,
        ui_port: Annotated[int, typer.Option("--ui-port", help="Port of the UI.")] = 8501,
        no_ui: Annotated[bool, typer.Option("--no-ui", help="Start the API only.")] = False,
    ) -> None:
        """Ingest the demo catalog if the index is empty (FASHION_SEARCH_DEMO_CATALOG, default
        the shared hm-demo set), then start the API and the UI until Ctrl-C."""
        demo(lambda: typer.main.get_command(app), host, port, ui_port, no_ui)
