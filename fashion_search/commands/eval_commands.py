"""`fashion-search eval`: retrieval quality of one or more encoders on a labelled catalog
(the work is done by fashion_search/evaluation.py; this module reads the options and shows
the report)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from domain.errors import FashionSearchError
from encoders.fashion_lite.data import HELDOUT_IDS_FILE, KAGGLE_HELDOUT_IDS_FILE, read_ids
from fashion_search.commands.catalog_commands import console, errors, fail, run_async
from fashion_search.evaluation import (
    MIN_PRODUCTS,
    PHOTO_EXAMPLES,
    SEED,
    EvalOptions,
    EvalReport,
    run_eval,
)
from fashion_search.settings import REPO_ROOT, Settings
from fashion_search.shop_evaluation import SHOP_MODES, ShopReport, run_shop_eval
from ingest.pipeline import DEFAULT_BATCH_SIZE
from ingest.report import write_report


class EvalMode(StrEnum):
    image = "image"
    shop = "shop"


class TextField(StrEnum):
    auto = "auto"
    description = "description"
    name = "name"


@contextmanager
def task_progress(out: Console) -> Iterator[Callable[[str, int, int | None], None]]:
    """A Rich progress display with one bar per kind of work, as the work reports it."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=out,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(what: str, done: int, total: int | None) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done, total=total)

    with bar:
        yield update


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def heldout_file(manifest: Path | None) -> Path:
    """The committed held-out split of a catalog: the Kaggle zip's, or hm-dev's."""
    if manifest is not None and manifest.suffix.lower() == ".zip":
        return KAGGLE_HELDOUT_IDS_FILE
    return HELDOUT_IDS_FILE


def selection(
    manifest: Path | None, ids: Path | None, heldout: bool | None
) -> tuple[frozenset[str] | None, str]:
    """The ids to keep (None: all) and how they were chosen. Without MANIFEST, the default
    hm-dev manifest is restricted to the committed held-out split; with the Kaggle zip,
    ``--heldout`` is the zip's own split."""
    if ids is not None and heldout is not None:
        raise fail("give either --ids FILE or --heldout/--all, not both", code=2)
    if ids is not None:
        if not ids.is_file():
            raise fail(f"no such ids file: {ids}")
        return frozenset(read_ids(ids)), f"ids from {ids}"
    use_heldout = heldout if heldout is not None else manifest is None
    if use_heldout:
        split_file = heldout_file(manifest)
        split = _shown_path(split_file)
        return frozenset(read_ids(split_file)), f"held-out split ({split})"
    return None, "all"


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def metrics_table(report: EvalReport) -> Table:
    dataset = "/".join(Path(report.manifest).parts[-2:]) or report.manifest
    table = Table(
        title=f"Retrieval quality · {dataset} · {len(report.gallery_ids):,} products "
        f"({report.selection})",
        title_justify="left",
    )
    table.add_column("metric")
    table.add_column("queries", justify="right")
    for run in report.encoders:
        table.add_column(run.id, justify="right")
    table.add_column("chance", justify="right", style="dim")
    several = len(report.encoders) > 1
    for name, baseline in report.baselines.items():
        values = [report.metrics[run.id].get(name) for run in report.encoders]
        best = max((v for v in values if v is not None), default=None)
        cells = [
            f"[bold]{_value(v)}[/]" if several and v is not None and v == best else _value(v)
            for v in values
        ]
        table.add_row(name, f"{baseline.n_queries:,}", *cells, _value(baseline.chance))
    return table


def encoders_table(report: EvalReport) -> Table:
    table = Table(title="Encoders", title_justify="left")
    table.add_column("encoder")
    table.add_column("dim", justify="right")
    table.add_column("gallery ingest", justify="right")
    table.add_column("per image", justify="right")
    table.add_column("per text query", justify="right")
    table.add_column("index check", justify="right")
    for run in report.encoders:
        table.add_row(
            run.id,
            str(run.dim),
            f"{run.ingest_seconds:,.1f} s",
            _ms(run.gallery_images.ms_per_input),
            _ms(run.text_queries.ms_per_input) if run.text_queries.inputs else "n/a",
            f"{run.index_check_agreeing}/{run.index_check_queries}",
        )
    return table


def print_report(report: EvalReport, out: Console) -> None:
    out.print(metrics_table(report))
    for skipped in report.skipped:
        out.print(f"Not measured: {skipped.metric}: {skipped.reason}.", highlight=False)
    if report.text_field is not None:
        out.print(f"Text queries: each product's own {report.text_field}.", highlight=False)
    out.print(encoders_table(report))
    for run in report.encoders:
        if run.index_check_agreeing != run.index_check_queries:
            out.print(
                f"[yellow]Warning:[/] the index's own top 10 differs from the evaluated ranking "
                f"for {run.index_check_queries - run.index_check_agreeing} of "
                f"{run.index_check_queries} sampled queries of {run.id}",
                highlight=False,
            )
    if report.failures:
        shown = ", ".join(f"{f.id or '-'} ({f.reason.value})" for f in report.failures[:5])
        more = len(report.failures) - 5
        out.print(
            f"{len(report.failures):,} items could not be ingested and are not in the gallery: "
            f"{shown}{f' and {more:,} more' if more > 0 else ''}",
            highlight=False,
        )
    out.print(
        f"{report.items:,} items read, gallery of {len(report.gallery_ids):,}; wall time "
        f"{report.seconds:,.1f} s" + (f"; home kept in {report.home}" if report.home else ""),
        highlight=False,
    )


def eval_command(
    manifest: Annotated[
        Path | None,
        typer.Argument(
            help="A labelled catalog: an hm-dev style manifest (products.csv or its folder) or "
            "the Kaggle zip or folder. Default: DATASETS_DIR/hm-dev, held-out split.",
            show_default=False,
        ),
    ] = None,
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            "--encoder",
            "-e",
            help="Encoder id; repeat to compare several side by side (default: "
            "FASHION_SEARCH_ENCODER). Image-only encoders get n/a for text queries.",
            show_default=False,
        ),
    ] = None,
    ids: Annotated[
        Path | None,
        typer.Option(
            "--ids",
            help="Only the items whose ids this file lists (one a line).",
            show_default=False,
        ),
    ] = None,
    heldout: Annotated[
        bool | None,
        typer.Option(
            "--heldout/--all",
            help="Only the committed held-out split of hm-dev, or every item. Default: "
            "held-out without MANIFEST, all with one.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=1, help="At most this many items, in manifest order."),
    ] = None,
    text_field: Annotated[
        TextField,
        typer.Option(
            "--text-field",
            help="Text query of each product: its description, its name, or auto "
            "(descriptions when the manifest has them, else names).",
        ),
    ] = TextField.auto,
    min_products: Annotated[
        int,
        typer.Option(
            "--min-products",
            min=1,
            help='Ask an "<attribute> <type>" query when this many products match it.',
        ),
    ] = MIN_PRODUCTS,
    seed: Annotated[
        int, typer.Option(help="Seed of the augmented and photo-style image queries.")
    ] = SEED,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")
    ] = DEFAULT_BATCH_SIZE,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of tables.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the JSON report here.", show_default=False),
    ] = None,
    keep_home: Annotated[
        Path | None,
        typer.Option(
            "--keep-home",
            help="Ingest into this new or empty directory and keep it (default: a temporary "
            "one, removed at the end).",
            show_default=False,
        ),
    ] = None,
    photo_style: Annotated[
        bool,
        typer.Option(
            "--photo-style/--no-photo-style",
            help="Also measure photo-style image-image type P@10: a shopper-style photo of "
            "each product (its garment on a generated background, tilted, cut, in coloured "
            "light, blurred, JPEG) queries the clean gallery.",
        ),
    ] = True,
    photo_examples: Annotated[
        Path | None,
        typer.Option(
            "--photo-examples",
            help=f"Write the first {PHOTO_EXAMPLES} photo-style queries to this folder "
            "(<id>-photo.jpg beside <id>.jpg, and chains.json with the changes drawn).",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        EvalMode,
        typer.Option(
            "--mode",
            help="image: the encoders on the images alone (texts left out). shop: the search "
            "a shop serves (names and descriptions indexed, labels left out), VISUAL / TEXT / "
            "HYBRID side by side: attribute P@10, exact-name R@1, no-match flags.",
        ),
    ] = EvalMode.image,
) -> None:
    """Measure retrieval quality on a labelled catalog: text-to-image Recall@1/5/10 and MRR of
    each product's own text, "<attribute> <type>" precision@10, image-to-image same-type
    precision@10 (clean photos and shopper-style photos as queries) and augmented-photo
    Recall@1, per encoder, beside the chance level. The
    gallery is ingested into a throwaway home with its texts left out, so only the images can
    answer."""
    settings = Settings()
    path = manifest if manifest is not None else settings.datasets_dir / "hm-dev"
    if manifest is None and not path.exists():
        raise fail(
            f"no MANIFEST given and the default {path} does not exist: pass a labelled manifest "
            "or set FASHION_SEARCH_DATASETS_DIR"
        )
    wanted_ids, chosen = selection(manifest, ids, heldout)
    try:
        options = EvalOptions(
            manifest=path,
            encoder_ids=tuple(encoder or [settings.encoder]),
            ids=wanted_ids,
            selection=chosen,
            limit=limit,
            text_field=text_field.value,
            min_products=min_products,
            seed=seed,
            home=keep_home,
            batch_size=batch_size,
            photo_style=photo_style or photo_examples is not None,
            photo_examples=photo_examples,
        )
    except FashionSearchError as exc:
        raise fail(str(exc), code=2) from None
    out = errors if as_json else console
    out.print(
        f"Evaluating {', '.join(dict.fromkeys(options.encoder_ids))} on [bold]{path}[/] "
        f"({chosen}{f', first {limit:,}' if limit else ''})",
        highlight=False,
    )
    if mode is EvalMode.shop:
        with task_progress(out) as progress:
            shop = run_async(run_shop_eval(options, settings, progress))
        if output is not None:
            write_report(output, shop.to_dict())
        if as_json:
            typer.echo(json.dumps(shop.to_dict(), indent=2, ensure_ascii=False))
        else:
            console.print(shop_table(shop))
        return
    with task_progress(out) as progress:
        report = run_async(run_eval(options, settings, progress))
    document = report.to_dict()
    if output is not None:
        write_report(output, document)
    if as_json:
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print_report(report, console)
    if output is not None:
        out.print(f"Report: {output}", highlight=False)
    if photo_examples is not None:
        out.print(f"Photo-style examples: {photo_examples}", highlight=False)


SHOP_METRICS = {
    "colour_type_p@10": '"<colour> <type>" P@10',
    "pattern_type_p@10": '"<pattern> <type>" P@10',
    "exact_name_r@1": "exact name R@1",
    "random_none": "random letters flagged NONE",
    "attribute_none": "attribute queries flagged NONE",
}


def shop_table(report: ShopReport) -> Table:
    table = Table(
        title=f"Shop search · {report.encoder} · {report.gallery:,} products ({report.selection})"
    )
    table.add_column("metric")
    table.add_column("queries", justify="right")
    for mode in SHOP_MODES:
        table.add_column(mode.name, justify="right")
    for metric, label in SHOP_METRICS.items():
        if metric not in report.metrics:
            continue
        per_mode = report.metrics[metric]
        shown = report.queries.get(metric, 0)
        table.add_row(label, f"{shown:,}", *(_value(per_mode.get(m.value)) for m in SHOP_MODES))
    return table


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("eval")(eval_command)
