"""Issue 14 item 5/6 on the production profile (Pinecone fake, nx-27017, moto): the ledger
lives in MongoDB, so pointing PINECONE_HOST at a new index or S3_BUCKET at a new bucket used
to leave ingest reporting "skipped" over empty stores. A plain ingest now detects it and
encodes everything again, ``--verify`` finds and repairs it from the stored images, and the
hints name the active stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import SecretStr

from domain.ledger_check import LedgerCheck, stale_ledger_reasons
from fashion_search.settings import Settings
from fashion_search.wiring import Container, build, build_encoders, store_names
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
        names = store_names(fresh.settings)
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
        names = store_names(fresh.settings)
        reasons = await stale_ledger_reasons(
            fresh.index, fresh.catalog, fresh.images, [ColourEncoder()], names
        )
        assert len(reasons) == 1
        assert f"S3 bucket {fresh.settings.s3_bucket!r}" in reasons[0]
    finally:
        await fresh.aclose()


def test_store_names_follow_the_settings(tmp_path: Path) -> None:
    embedded = store_names(Settings(home=tmp_path))
    assert embedded.vectors == f"the vector index in {tmp_path / 'vectors'}"
    production = store_names(
        Settings(
            home=tmp_path,
            pinecone_api_key=SecretStr("k"),
            pinecone_index="shop",
            mongodb_uri=SecretStr("mongodb://x"),
            mongodb_db="catalog",
            s3_bucket="photos",
        )
    )
    assert dataclasses.astuple(production) == (
        "Pinecone index 'shop'",
        "MongoDB database 'catalog'",
        "S3 bucket 'photos'",
    )
    assert str(tmp_path) not in str(production)
