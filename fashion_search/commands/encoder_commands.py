"""`fashion-search encoders` and `fashion-search train-encoder`."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from domain.errors import FashionSearchError
from encoders.fashion_lite.train_config import (
    EXTRA_DATASETS,
    TUNED_BACKBONE_FROM,
    TrainConfig,
)
from fashion_search.commands.catalog_commands import fail
from fashion_search.settings import Settings

if TYPE_CHECKING:
    from encoders.onnx_models import ModelDir, OnnxExportable

console = Console()


def list_encoders() -> None:
    """List every encoder the installed plugins provide: id, dim, modalities, and whether it
    can be used here (or what it needs: an extra, a checkpoint, an export)."""
    from encoders.onnx_models import OnnxExportable, export_status
    from fashion_search.wiring import build_encoders

    registry = build_encoders(Settings())
    table = Table(title="Encoders")
    table.add_column("id")
    table.add_column("dim", justify="right")
    table.add_column("modalities")
    table.add_column("status")
    table.add_column("description")
    listed = {info.id for info in registry.available()}
    for family in sorted(registry.families.values(), key=lambda f: f.name):
        example = family.examples[0] if family.examples else family.name
        status = "ready" if family.available else f"needs {family.requires or 'setup'}"
        if family.available and example in listed:
            try:
                encoder = registry.get(example)
            except FashionSearchError as exc:
                status = f"unavailable: {exc}"
            else:
                if isinstance(encoder, OnnxExportable) and encoder.onnx_models():
                    status = export_status(encoder.onnx_models())
        marker = " (default)" if example == registry.default_id else ""
        table.add_row(
            example + marker,
            str(family.dim or "?"),
            ", ".join(sorted(m.value for m in family.modalities)),
            escape(status),  # "[clip]" is text, not rich markup
            escape(family.description),
        )
    console.print(table)


def export_encoder(
    encoders: Annotated[
        list[str] | None,
        typer.Argument(help="Encoder ids (default: the configured encoder).", show_default=False),
    ] = None,
    all_builtin: Annotated[
        bool,
        typer.Option(
            "--all", help="Every built-in encoder: each fashion-lite heads file and effnet-lite*."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Export again even where an export exists.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Compare with torch on the demo catalog's photos and a few queries.",
        ),
    ] = True,
    images: Annotated[
        Path | None, typer.Option(help="Folder of JPEGs to check on (default: the demo's).")
    ] = None,
    count: Annotated[int, typer.Option(min=1, help="Photos to check on.")] = 16,
) -> None:
    """Build the built-in encoders' ONNX models from the packaged weights into the models
    directory (FASHION_SEARCH_MODELS_DIR, default FASHION_SEARCH_HOME/models), then check
    that ONNX Runtime gives torch's vectors (cosine >= 0.999; the check needs the [train]
    extra, and is skipped without torch)."""
    from encoders.onnx_models import (
        PARITY_MIN_COSINE,
        OnnxExportable,
        parity,
        torch_installed,
    )
    from fashion_search.wiring import build_encoders

    unchecked = check and not torch_installed()
    check = check and not unchecked
    settings = Settings().model_copy(update={"encoder_runtime": "onnx"})
    registry = build_encoders(settings)
    ids = list(encoders or [])
    if all_builtin:
        ids += builtin_encoder_ids()
    ids = list(dict.fromkeys(ids or [registry.default_id]))
    folder = images or settings.demo_catalog_path / "images"
    photos = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:count]] if check else []
    exported = Table(title=f"ONNX exports in {settings.models_dir}")
    for column in ("encoder", "directory", "MB", "version", "min cosine image / text"):
        exported.add_column(column)
    failed = []
    for encoder_id in ids:
        try:
            encoder = registry.get(encoder_id)
            if not isinstance(encoder, OnnxExportable):
                raise fail(f"{encoder_id} has no ONNX export (only built-in encoders do)")
            models = encoder.export_onnx(replace=True) if force else _export_missing(encoder)
            result = (
                parity(encoder, encoder.torch_reference(), photos, COST_QUERIES) if check else None
            )
        except FashionSearchError as exc:
            raise fail(f"{encoder_id}: {exc}") from None
        version = getattr(encoder, "version", "")
        lows = (result.min_image, result.min_text) if result is not None else (None, None)
        cosines = " / ".join("-" if value is None else f"{value:.5f}" for value in lows)
        for model in models:
            size = sum(f.stat().st_size for f in model.path.iterdir()) / 1e6
            exported.add_row(encoder_id, model.path.name, f"{size:.1f}", version, cosines)
        if result is not None and not result.ok:
            failed.append(encoder_id)
    console.print(exported)
    if unchecked:
        console.print("not checked against torch: torch is not installed (the [train] extra)")
    elif not check:
        console.print("not checked against torch (--no-check)")
    elif not photos:
        console.print(f"no photos in {folder}: only texts were checked")
    if failed:
        raise fail(
            f"ONNX vectors differ from torch's (cosine below {PARITY_MIN_COSINE}) for "
            + ", ".join(failed)
        )


def _export_missing(encoder: OnnxExportable) -> list[ModelDir]:
    """The encoder's model directories, exporting those that are missing."""
    models = encoder.onnx_models()
    if not all(model.exists() for model in models):
        models = encoder.export_onnx(replace=False)
    return models


def builtin_encoder_ids() -> list[str]:
    """fashion-lite with each heads file shipped in the repo, and the image-only baselines."""
    from encoders.fashion_lite.encoder import ENCODER_ID
    from encoders.fashion_lite.heads import WEIGHTS_DIR
    from encoders.image_only import VARIANTS

    heads = [f"{ENCODER_ID}:{path.stem}" for path in sorted(WEIGHTS_DIR.glob("*.npz"))]
    return [ENCODER_ID, *heads, *VARIANTS]


def _label_weights(text: str) -> dict[str, float]:
    """``"product_type=1,pattern=0.5"`` -> {"product_type": 1.0, "pattern": 0.5}."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not name.strip() or weight < 0:
            raise typer.BadParameter(
                f"--tune-labels takes NAME=WEIGHT pairs with weights >= 0, got {part!r}"
            )
        weights[name.strip()] = weight
    if not any(weights.values()):
        raise typer.BadParameter("--tune-labels needs at least one label with a weight above 0")
    return weights


_DEFAULTS = TrainConfig(hm_dev=Path("hm-dev"))
"""The option defaults of ``train-encoder`` are TrainConfig's (one source of defaults)."""


def _parts_text(parts: tuple[str, ...]) -> str:
    return "+".join(parts)


def _labels_text(labels: dict[str, float]) -> str:
    return ",".join(f"{name}={weight:g}" for name, weight in labels.items())


def _image_parts(text: str) -> tuple[str, ...]:
    from encoders.backbones import POOLED_PARTS

    parts = tuple(part.strip() for part in text.split("+") if part.strip())
    if not parts or any(part not in POOLED_PARTS for part in parts):
        raise typer.BadParameter(
            f"--image-parts takes '+'-separated names of {sorted(POOLED_PARTS)}, got {text!r}"
        )
    return parts


def _dataset_folders(text: str, datasets_dir: Path) -> tuple[Path, ...]:
    """``"hm-extra"`` -> (DATASETS_DIR/hm-extra,); paths are kept; "" or "none": none."""
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip().lower() != "none"]
    return tuple(Path(n) if ("/" in n or n.startswith(".")) else datasets_dir / n for n in names)


def train_encoder(
    hm_dev: Annotated[
        Path | None, typer.Option(help="hm-dev folder (default: DATASETS_DIR/hm-dev).")
    ] = None,
    hm_extra: Annotated[
        str,
        typer.Option(
            help="More H&M folders to train on, comma-separated names under DATASETS_DIR or "
            "paths ('none': hm-dev only). Their product codes must not occur in hm-dev."
        ),
    ] = ",".join(EXTRA_DATASETS),
    extra_descriptions: Annotated[
        bool,
        typer.Option(
            "--extra-descriptions/--no-extra-descriptions",
            help="Pair --hm-extra's items with their descriptions and captions too, not "
            "only the short phrases and the name (10x the text features' cost).",
        ),
    ] = _DEFAULTS.extra_descriptions,
    kaggle: Annotated[
        bool, typer.Option("--kaggle/--no-kaggle", help="Also train on the Kaggle zip.")
    ] = False,
    kaggle_zip: Annotated[
        Path | None,
        typer.Option(help="Kaggle zip (default: DATASETS_DIR/kaggle-fashion-small.zip)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Heads file to write (default: the committed one).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write metrics and training facts as JSON here.")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = _DEFAULTS.epochs,
    seed: int = _DEFAULTS.seed,
    dim: Annotated[int, typer.Option(min=8)] = _DEFAULTS.dim,
    hidden: Annotated[int, typer.Option(min=8)] = _DEFAULTS.hidden,
    layers: Annotated[int, typer.Option(min=1, max=4)] = _DEFAULTS.layers,
    batch_size: Annotated[int, typer.Option(min=8)] = _DEFAULTS.batch_size,
    lr: float = _DEFAULTS.lr,
    supcon_weight: Annotated[float, typer.Option(min=0.0)] = _DEFAULTS.supcon_weight,
    raw_weight: Annotated[float, typer.Option(min=0.0, max=0.95)] = _DEFAULTS.raw_weight,
    colour: Annotated[bool, typer.Option("--colour/--no-colour")] = _DEFAULTS.colour,
    colour_scale: Annotated[
        float, typer.Option(min=0.1, help="Weight of the colour stats in the image input.")
    ] = _DEFAULTS.colour_scale,
    extra_dim: Annotated[
        int, typer.Option(min=0, help="Image-only tower for image-to-image search (0: none).")
    ] = _DEFAULTS.extra_dim,
    extra_weight: Annotated[float, typer.Option(min=0.0, max=0.95)] = _DEFAULTS.extra_weight,
    extra_supcon: Annotated[float, typer.Option(min=0.0)] = _DEFAULTS.extra_supcon,
    aug_instance_weight: Annotated[float, typer.Option(min=0.0)] = _DEFAULTS.aug_instance_weight,
    shared_instance_weight: Annotated[
        float, typer.Option(min=0.0, help="Instance term on the shared image head too.")
    ] = _DEFAULTS.shared_instance_weight,
    aug_input_prob: Annotated[float, typer.Option(min=0.0, max=1.0)] = _DEFAULTS.aug_input_prob,
    train_augmented: Annotated[
        bool,
        typer.Option(
            "--train-augmented/--no-train-augmented",
            help="Also extract augmented views of the hm training images.",
        ),
    ] = _DEFAULTS.train_augmented,
    crop: Annotated[
        bool, typer.Option("--crop/--no-crop", help="Crop images to their content first.")
    ] = _DEFAULTS.crop,
    image_backbone: str = _DEFAULTS.image_backbone,
    image_size: Annotated[int, typer.Option(min=64)] = _DEFAULTS.image_size,
    image_parts: Annotated[
        str,
        typer.Option(help="Pooled backbone features, '+'-separated: avg, max, bands3, mid."),
    ] = _parts_text(_DEFAULTS.image_parts),
    aug_views: Annotated[
        int,
        typer.Option(
            min=0, help="Packshot-style augmented views per training image (--train-augmented)."
        ),
    ] = _DEFAULTS.aug_views,
    photo_views: Annotated[
        int,
        typer.Option(
            min=0, help="Shopper-photo views per training image (background, tilt, light...)."
        ),
    ] = _DEFAULTS.photo_views,
    extra_view_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of --hm-extra's products whose images get views."
        ),
    ] = _DEFAULTS.extra_view_share,
    hard_batches: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of epochs with batches grouped by product type."
        ),
    ] = _DEFAULTS.hard_batches,
    tune_blocks: Annotated[
        int,
        typer.Option(
            min=0,
            max=16,
            help="First fine-tune the image backbone's last N blocks on the labels (0: frozen).",
        ),
    ] = _DEFAULTS.tune_blocks,
    tune_epochs: Annotated[int, typer.Option(min=1)] = _DEFAULTS.tune_epochs,
    tune_lr: Annotated[float, typer.Option(min=0.0)] = _DEFAULTS.tune_lr,
    tune_labels: Annotated[
        str,
        typer.Option(
            help="Labels the backbone is tuned on, with the weights of their losses "
            "(comma-separated NAME=WEIGHT; hm-dev columns)."
        ),
    ] = _labels_text(_DEFAULTS.tune_labels),
    tuned_backbone: Annotated[
        str,
        typer.Option(
            help="Reuse the tuned backbone layers of this heads file (a name in the weights "
            "folder, e.g. heads-v3, or a path) instead of tuning; '' tunes."
        ),
    ] = TUNED_BACKBONE_FROM,
    train_share: Annotated[
        float,
        typer.Option(
            min=0.01, max=1.0, help="Train on this share of the training products (scaling)."
        ),
    ] = _DEFAULTS.train_share,
    limit: Annotated[int | None, typer.Option(help="Train on at most N items.")] = _DEFAULTS.limit,
    eval_limit: Annotated[
        int | None, typer.Option(help="Validate on at most N items.")
    ] = _DEFAULTS.eval_limit,
    validation: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.5,
            help="Carve this share of the training part's product codes out as a validation "
            "split, train on the rest and validate on it (for choosing settings: the held-out "
            "split is then not read). Needs --out.",
        ),
    ] = _DEFAULTS.validation,
    threads: Annotated[
        int, typer.Option(min=1, max=2, help="Torch threads (1 reproduces the committed heads).")
    ] = _DEFAULTS.threads,
) -> None:
    """Train the fashion-lite heads from hm-dev's training part (and by default hm-extra;
    optionally the Kaggle zip) with a fixed seed, and report validation metrics on the
    held-out split (and for random heads, the floor). The defaults reproduce the committed
    heads (encoders/fashion_lite/MODEL_CARD.md)."""
    options = {k: v for k, v in locals().items() if k in _CONFIG_OPTIONS}  # as TrainConfig's
    from encoders.fashion_lite.heads import DEFAULT_HEADS
    from encoders.fashion_lite.training import TrainingSetupError, train, write_report

    if validation > 0 and out is None:
        raise typer.BadParameter(
            "heads trained with a validation split must not replace the committed ones: give --out",
            param_hint="--validation",
        )
    settings = Settings()
    config = replace(
        _DEFAULTS,
        **options,
        hm_dev=hm_dev or settings.datasets_dir / "hm-dev",
        hm_extra=_dataset_folders(hm_extra, settings.datasets_dir),
        kaggle_zip=(kaggle_zip or settings.datasets_dir / "kaggle-fashion-small.zip")
        if kaggle
        else None,
        cache_dir=settings.home / "cache" / "fashion-lite",
        image_parts=_image_parts(image_parts),
        tune_labels=_label_weights(tune_labels),
        tuned_backbone=_tuned_backbone_file(tuned_backbone),
    )
    result = _run_with_progress(config, train, TrainingSetupError)
    target = out or DEFAULT_HEADS
    result.heads.save(target)
    console.print(
        f"trained on {result.n_train} items in {result.seconds:.0f} s; "
        f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}; heads written to {target}"
    )
    if result.metrics:
        _print_validation(result)
    if report is not None:
        write_report(result, report)
        console.print(f"report written to {report}")
    else:
        console.print_json(json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))


# train-encoder options passed to TrainConfig as they are (the others are parsed first)
_CONFIG_OPTIONS = frozenset(f.name for f in fields(TrainConfig)) - {
    "hm_dev",
    "hm_extra",
    "kaggle_zip",
    "cache_dir",
    "heldout_ids",
    "image_parts",
    "tune_labels",
    "tuned_backbone",
}


def _tuned_backbone_file(text: str) -> Path | None:
    from encoders.fashion_lite.heads import WEIGHTS_DIR

    if not text.strip():
        return None
    named = WEIGHTS_DIR / f"{text.strip()}.npz"
    path = named if named.is_file() else Path(text)
    if not path.is_file():
        raise typer.BadParameter(f"no heads file {text!r}", param_hint="--tuned-backbone")
    return path


def _run_with_progress(config: TrainConfig, train: Any, setup_error: type[Exception]) -> Any:
    """``train(config, progress)`` under a rich progress display; setup errors exit 2."""
    tasks: dict[str, TaskID] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        try:
            return train(config, progress)
        except setup_error as exc:
            raise fail(str(exc), code=2) from None


def _print_validation(result: Any) -> None:
    validated_on = result.heads.meta["validated_on"]
    table = Table(title=f"Validation on {validated_on} ({result.n_heldout} items)")
    table.add_column("metric")
    table.add_column("trained", justify="right")
    table.add_column("random heads", justify="right")
    table.add_column("chance", justify="right")
    for key, value in result.metrics.items():
        table.add_row(
            key,
            f"{value:.3f}",
            f"{result.random_metrics.get(key, float('nan')):.3f}",
            f"{result.chance.get(key, float('nan')):.3f}",
        )
    console.print(table)


COST_QUERIES = (
    "black trousers",
    "red dress",
    "navy striped shirt",
    "white sneakers",
    "grey melange hoodie for men",
    "floral summer dress with short sleeves",
    "denim jacket",
    "beige knitted sweater",
)


def encoder_cost(
    encoder: Annotated[str | None, typer.Argument(help="Encoder id (default: configured).")] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of JPEGs (default: the demo catalog's images).")
    ] = None,
    count: Annotated[int, typer.Option(min=1, help="Images to time.")] = 30,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    threads: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Time encoding one image and one query text (batch 1, one thread by default)."""
    from encoders.cost import measure_cost
    from fashion_search.wiring import build_encoders

    settings = Settings().model_copy(update={"torch_threads": threads})
    folder = images or settings.demo_catalog_path / "images"
    data = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:count]]
    chosen = build_encoders(settings).get(encoder)
    cost = measure_cost(chosen, data, COST_QUERIES, repeats=repeats, threads=threads)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    table = Table(title=f"{cost.encoder_id}: batch 1, {cost.threads} thread(s)")
    table.add_column("input")
    table.add_column("median ms", justify="right")
    table.add_column("best ms", justify="right")
    table.add_column("median CPU ms", justify="right")
    table.add_row(
        f"image ({len(data)} x {repeats})",
        ms(cost.ms_per_image_median),
        ms(cost.ms_per_image_min),
        ms(cost.cpu_ms_per_image_median),
    )
    table.add_row(
        f"query text ({len(COST_QUERIES)} x {repeats})",
        ms(cost.ms_per_text_median),
        ms(cost.ms_per_text_min),
        ms(cost.cpu_ms_per_text_median),
    )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("encoders")(list_encoders)
    app.command("export-encoder")(export_encoder)
    app.command("train-encoder")(train_encoder)
    app.command("encoder-cost")(encoder_cost)
