"""Issue 14 item 5/6 on the production profile (Pinecone fake, nx-27017, moto): the ledger
lives in MongoDB, so pointing PINECONE_HOST at a new index or S3_BUCKET at a new bucket used
to leave ingest reporting "skipped" over empty stores. A plain ingest now detects it and
encodes everything again, ``--verify`` finds and repairs it from the stored images, and the
hints name the active stores."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from domain.ledger_check import LedgerCheck, stale_ledger_reasons
from fashion_search.cli import app
from fashion_search.commands import catalog_commands
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build, build_encoders, describe_stores
from ingest.pipeline import IngestOptions
from ingest.readers import FileImage, SourceItem
from stores.images.s3 import S3ImageStore
from tests.e2e.test_production_profile import (
    PRODUCTS,
    ColourEncoder,
    add_products,
    container,
    png,
)
from tests.stores.pinecone_fake import FakePinecone
from tests.stores.servers import (
    S3Server,
    mongo_server,
    pinecone_server,
    s3_server,
    unique_name,
)

__all__ = ["container", "mongo_server", "pinecone_server", "s3_server"]

pytestmark = pytest.mark.e2e


def rebuilt(container: Container, **changes: object) -> Container:
    settings = container.settings.model_copy(update=changes)
    encoders = build_encoders(settings, load_entry_points=False)
    encoders.register_instance(ColourEncoder())
    return build(settings, encoders=encoders)


def source(tmp_path: Path) -> list[SourceItem]:
    items = []
    for product_id, name, colour, kind in PRODUCTS:
        path = tmp_path / f"{product_id}.png"
        path.write_bytes(png(colour))
        items.append(
            SourceItem(
                product_id, name, tags={"colour": colour, "type": kind}, image=FileImage(path)
            )
        )
    return items


async def test_a_new_pinecone_index_is_detected_and_filled_again(
    container: Container, pinecone_server: FakePinecone, tmp_path: Path
) -> None:
    await add_products(container)
    fresh = rebuilt(
        container,
        pinecone_host=pinecone_server.create_index(unique_name("new"), ColourEncoder.dim),
    )
    try:
        names = describe_stores(fresh.settings).names
        assert names.vectors.startswith("Pinecone index 'http")
        assert names.catalog == f"MongoDB database {fresh.settings.mongodb_db!r}"
        encoder = ColourEncoder()
        reasons = await stale_ledger_reasons(
            fresh.index, fresh.catalog, fresh.images, [encoder], names
        )
        assert len(reasons) == 1
        assert "MongoDB database" in reasons[0]
        assert "has no vectors for it" in reasons[0]

        plain = await fresh.ingest_pipeline([encoder]).run(source(tmp_path))
        assert (plain.indexed, plain.skipped_unchanged) == (0, len(PRODUCTS))  # the old trap
        again = await fresh.ingest_pipeline([encoder], IngestOptions(reindex=True)).run(
            source(tmp_path)
        )
        assert again.indexed == len(PRODUCTS)
        assert await fresh.index.count(encoder.id) == len(PRODUCTS)
        assert (
            await stale_ledger_reasons(fresh.index, fresh.catalog, fresh.images, [encoder], names)
            == []
        )
    finally:
        await fresh.aclose()


async def test_verify_repairs_a_new_index_from_the_stored_images(
    container: Container, pinecone_server: FakePinecone
) -> None:
    await add_products(container)
    fresh = rebuilt(
        container,
        pinecone_host=pinecone_server.create_index(unique_name("new"), ColourEncoder.dim),
    )
    try:
        encoder = ColourEncoder()
        check = LedgerCheck(fresh.index, fresh.catalog, fresh.images, fresh.indexer)
        report = await check.run([encoder])
        assert sorted(report.by_encoder[encoder.id].ids["ledger_without_vector"]) == sorted(
            p[0] for p in PRODUCTS
        )
        repaired = await check.repair(report, [encoder])
        assert repaired.reencoded == len(PRODUCTS)
        assert (await check.run([encoder])).clean
        hits = await fresh.search.by_text("red", top_k=2)
        assert {h.product.id for h in hits.hits} == {"red-dress", "red-shirt"}
    finally:
        await fresh.aclose()


async def test_a_new_bucket_is_detected(container: Container, s3_server: S3Server) -> None:
    await add_products(container)
    fresh = rebuilt(container, s3_bucket=unique_name("bucket"))
    try:
        assert isinstance(fresh.images, S3ImageStore)
        await fresh.images.create_bucket()
        names = describe_stores(fresh.settings).names
        reasons = await stale_ledger_reasons(
            fresh.index, fresh.catalog, fresh.images, [ColourEncoder()], names
        )
        assert len(reasons) == 1
        assert f"S3 bucket {fresh.settings.s3_bucket!r}" in reasons[0]
    finally:
        await fresh.aclose()


def test_store_names_follow_the_settings(tmp_path: Path) -> None:
    embedded = describe_stores(Settings(home=tmp_path)).names
    assert embedded.vectors == f"the vector index in {tmp_path / 'vectors'}"
    production = describe_stores(
        Settings(
            home=tmp_path,
            pinecone_api_key=SecretStr("k"),
            pinecone_index="shop",
            mongodb_uri=SecretStr("mongodb://x"),
            mongodb_db="catalog",
            s3_bucket="photos",
        )
    ).names
    assert dataclasses.astuple(production) == (
        "Pinecone index 'shop'",
        "MongoDB database 'catalog'",
        "S3 bucket 'photos'",
    )
    assert str(tmp_path) not in str(production)


@pytest.fixture
def production_cli(
    container: Container, pinecone_server: FakePinecone, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The CLI's environment pointing at the container's MongoDB database and S3 bucket and
    at a new, empty Pinecone index (what an operator gets by changing PINECONE_HOST)."""
    settings = container.settings
    new_index = pinecone_server.create_index(unique_name("new"), ColourEncoder.dim)
    assert settings.pinecone_api_key is not None
    assert settings.mongodb_uri is not None
    env = {
        "FASHION_SEARCH_HOME": str(settings.home),
        "FASHION_SEARCH_ENCODER": ColourEncoder.id,
        "PINECONE_API_KEY": settings.pinecone_api_key.get_secret_value(),
        "PINECONE_HOST": new_index,
        "MONGODB_URI": settings.mongodb_uri.get_secret_value(),
        "MONGODB_DB": settings.mongodb_db,
        "S3_BUCKET": str(settings.s3_bucket),
        "S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
        "AWS_REGION": settings.aws_region or "us-east-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def make_container(settings: Settings) -> Container:
        encoders = build_encoders(settings, load_entry_points=False)
        encoders.register_instance(ColourEncoder())
        return build(settings, encoders=encoders)

    monkeypatch.setattr(catalog_commands, "make_container", make_container)
    return settings.model_copy(update={"pinecone_host": new_index})


async def test_cli_on_a_new_pinecone_index_names_it_and_fills_it(
    container: Container, production_cli: Settings, tmp_path: Path
) -> None:
    await add_products(container)
    runner = CliRunner()
    hint = await asyncio.to_thread(runner.invoke, app, ["search", "red"])
    assert hint.exit_code == 1
    said = " ".join(hint.output.split())
    assert f"Pinecone index {production_cli.pinecone_host!r}" in said
    assert ".fashion-search" not in said

    manifest = tmp_path / "catalog" / "products.csv"
    manifest.parent.mkdir()
    lines = ["id,image,name,colour,type"]
    for product_id, name, colour, kind in PRODUCTS:
        (manifest.parent / f"{product_id}.png").write_bytes(png(colour))
        lines.append(f"{product_id},{product_id}.png,{name},{colour},{kind}")
    manifest.write_text("\n".join(lines) + "\n", "utf-8")
    report = tmp_path / "report.json"
    result = await asyncio.to_thread(
        runner.invoke, app, ["ingest", str(manifest), "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"MongoDB database {production_cli.mongodb_db!r}" in said
    assert "has no vectors for it" in said
    summary = json.loads(report.read_text("utf-8"))["summary"]
    assert (summary["indexed"], summary["skipped_unchanged"]) == (len(PRODUCTS), 0)
