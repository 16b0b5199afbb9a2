"""`fashion-search config` and `fashion-search pinecone ...`: what the stores are configured
as, whether they answer, and creating the Pinecone index."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from domain.errors import FashionSearchError
from fashion_search import wiring
from fashion_search.settings import Settings, env_name

console = Console()
MASK = "********"

pinecone_app = typer.Typer(name="pinecone", help="Manage the Pinecone index.", no_args_is_help=True)


# -- config -------------------------------------------------------------------------------


def display_value(field_name: str, value: Any) -> Any:
    """JSON-friendly value with secrets masked: API keys never show, the MongoDB URI shows
    its hosts but not its credentials or options."""
    if isinstance(value, SecretStr):
        if field_name == "mongodb_uri":
            return wiring.redact_mongodb_uri(value.get_secret_value())
        return MASK if value.get_secret_value() else ""
    if isinstance(value, list):
        return [display_value(field_name, v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def show_config(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Also check that each remote store answers.")
    ] = False,
) -> None:
    """Print the effective configuration (environment, .env and defaults), secrets masked."""
    settings = Settings()
    values = {
        env_name(name): display_value(name, getattr(settings, name))
        for name in Settings.model_fields
    }
    profile = wiring.describe_stores(settings).details
    checks = asyncio.run(wiring.check_stores(settings)) if check else {}
    failed = any(v != "ok" for v in checks.values())
    if as_json:
        payload: dict[str, Any] = {"settings": values, "stores": profile}
        if check:
            payload["checks"] = checks
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        table = Table(title="Configuration")
        table.add_column("setting")
        table.add_column("value")
        for key, value in values.items():
            table.add_row(key, "" if value is None else str(value))
        console.print(table)
        stores = Table(title="Stores")
        stores.add_column("store")
        stores.add_column("adapter")
        if check:
            stores.add_column("check")
        for key, value in profile.items():
            row = [key, value]
            if check:
                row.append(checks.get(key, "embedded"))
            stores.add_row(*row)
        console.print(stores)
    if failed:
        raise typer.Exit(1)


# -- pinecone -----------------------------------------------------------------------------


def _api_key(settings: Settings) -> str:
    if settings.pinecone_api_key is None or not settings.pinecone_api_key.get_secret_value():
        console.print("[red]PINECONE_API_KEY is not set.[/red]")
        raise typer.Exit(2)
    return settings.pinecone_api_key.get_secret_value()


@pinecone_app.command("create-index")
def create_index(
    name: Annotated[str | None, typer.Option(help="Index name (default: PINECONE_INDEX).")] = None,
    encoder: Annotated[
        str | None,
        typer.Option(help="Encoder whose dimension the index takes (default: the default)."),
    ] = None,
    dimension: Annotated[
        int | None, typer.Option(min=1, help="Override the encoder's dimension.")
    ] = None,
    cloud: Annotated[str, typer.Option(help="Serverless cloud.")] = "aws",
    region: Annotated[str, typer.Option(help="Serverless region.")] = "us-east-1",
    deletion_protection: Annotated[
        bool, typer.Option("--deletion-protection/--no-deletion-protection")
    ] = False,
    wait: Annotated[
        int, typer.Option(help="Seconds to wait for the index to be ready (-1: do not wait).")
    ] = 300,
) -> None:
    """Create a serverless Pinecone index for vectors (cosine metric) with the dimension of
    an encoder, and print the PINECONE_HOST to use. Every encoder indexed into it must have
    that dimension (each gets its own namespace)."""
    from pinecone import Pinecone
    from pinecone.errors import ConflictError, PineconeError

    settings = Settings()
    api_key = _api_key(settings)
    index_name = name or settings.pinecone_index
    if not index_name:
        console.print("[red]Give --name or set PINECONE_INDEX.[/red]")
        raise typer.Exit(2)
    encoder_id = encoder or settings.encoder
    if dimension is None:
        try:
            chosen = wiring.build_encoders(settings).get(encoder)
            encoder_id, dimension = chosen.id, chosen.dim
        except FashionSearchError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    pc = Pinecone(api_key=api_key, timeout=max(settings.store_timeout_s, 30.0))
    try:
        model = pc.indexes.create(
            name=index_name,
            # The reserved "_values" field makes a vector index, the kind the vector API
            # (upsert/query) serves: what the SDK's deprecated dimension= builds.
            schema={
                "fields": {
                    "_values": {"type": "dense_vector", "dimension": dimension, "metric": "cosine"}
                }
            },
            deployment={"deployment_type": "managed", "cloud": cloud, "region": region},
            deletion_protection="enabled" if deletion_protection else "disabled",
            tags={"app": "fashion-search"},
            timeout=wait,
        )
        created = True
    except ConflictError:
        model = pc.indexes.describe(index_name)
        created = False
    except PineconeError as exc:
        console.print(f"[red]Pinecone refused to create {index_name!r}: {exc}[/red]")
        raise typer.Exit(1) from None
    existing = _dense_field(model.schema)
    if not created and existing is not None and existing != (dimension, "cosine"):
        console.print(
            f"[red]Index {index_name!r} exists with dimension {existing[0]} and metric "
            f"{existing[1]}; {encoder_id} needs {dimension} and cosine.[/red]"
        )
        raise typer.Exit(1)
    verb = "Created" if created else "Index already exists:"
    console.print(f"{verb} {index_name} (dimension {dimension}, cosine) for {encoder_id}")
    console.print(f"ready: {model.status.ready}")
    if model.host:
        console.print(f"PINECONE_HOST={model.host}")


def _dense_field(schema: Any) -> tuple[int, str] | None:
    """(dimension, metric) of the index's dense vector field, when it has one."""
    try:
        fields = schema.fields if hasattr(schema, "fields") else schema["fields"]
        field = fields["_values"]
        dim = field.dimension if hasattr(field, "dimension") else field["dimension"]
        metric = field.metric if hasattr(field, "metric") else field["metric"]
    except (AttributeError, KeyError, TypeError):
        return None
    return int(dim), str(metric)


@pinecone_app.command("stats")
def pinecone_stats() -> None:
    """Vectors per encoder (namespace) in the configured index, and its dimension."""
    settings = Settings()
    _api_key(settings)

    async def collect() -> tuple[int | None, dict[str, int]]:
        index = wiring.pinecone_index(settings)
        try:
            return await index.dimension(), await index.check()
        finally:
            await index.close()

    try:
        dim, counts = asyncio.run(collect())
    except FashionSearchError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"dimension: {dim}")
    table = Table(title="Vectors per encoder")
    table.add_column("encoder")
    table.add_column("vectors", justify="right")
    for encoder_id, count in sorted(counts.items()):
        table.add_row(encoder_id, str(count))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("config")(show_config)
    app.add_typer(pinecone_app)
