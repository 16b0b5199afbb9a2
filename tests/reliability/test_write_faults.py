"""Issue 14 items 4 and 5 on the production stores (nx-27017, moto S3, the Pinecone fake), each
store really stopped or hung: a mutation that fails leaves a consistent state and says so.

* MongoDB hangs at addProduct's catalog write: the error says the write could not be fully
  undone; the vectors are taken back, the ledger never records it, and the image is kept
  because the product write MongoDB received may still land (it does, once MongoDB answers
  again): ``ingest --verify`` then makes the product whole from that image.
* S3 hangs during deleteProduct: the product stays (row, ledger, vectors; its image unless
  the delete S3 received lands later), the error says so, and a retry once S3 is back
  removes it from every store.
* Replacing a product's photo deletes the old S3 object.
* Ids that sanitise alike ("sku 1/red", "sku_1_red") with the same photo get two objects:
  deleting one product leaves the other's image in place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import boto3
import pytest

from domain.errors import UpstreamUnavailable
from domain.ledger_check import LedgerCheck
from domain.model import Product
from fashion_search.wiring import Container, build, build_encoders
from stores.images.s3 import S3ImageStore
from tests.fakes import HashingEncoder, fake_image
from tests.reliability.conftest import (
    AWS_ENV,
    Backends,
    Blackhole,
    production_names,
    production_settings,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DIM = 32
TIMEOUT_S = 3.0


@pytest.fixture
async def shop(backends: Backends, tmp_path: Path, aws_env: None) -> AsyncIterator[Container]:
    backends.ensure_running()
    names = production_names("writes")
    backends.pinecone.fake.create_index(names.index, DIM)
    settings = production_settings(backends, names, tmp_path, encoder="fake", timeout_s=TIMEOUT_S)
    encoders = build_encoders(settings, load_entry_points=False)
    encoders.register_instance(HashingEncoder("fake", DIM))
    # Setting up is not under test: a generous timeout, so a busy machine cannot fail it.
    setup = build(settings.model_copy(update={"store_timeout_s": 30.0}), encoders=encoders)
    assert isinstance(setup.images, S3ImageStore)
    await setup.images.create_bucket()
    await setup.aclose()
    container = build(settings, encoders=encoders)
    try:
        yield container
    finally:
        backends.ensure_running()
        await container.aclose()


def bucket_keys(container: Container) -> list[str]:
    images = container.images
    assert isinstance(images, S3ImageStore)
    client = boto3.client(
        "s3",
        endpoint_url=container.settings.s3_endpoint_url,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    try:
        listed = client.list_objects_v2(Bucket=images.bucket)
        return sorted(entry["Key"] for entry in listed.get("Contents", []))
    finally:
        client.close()


async def state_of(container: Container, pid: str) -> tuple[object, ...]:
    """Everything the stores hold about one product."""
    product = await container.catalog.get(pid)
    return (
        product,
        await container.catalog.ledger_entries(["fake"], [pid]),
        sorted(await container.index.fetch("fake", [pid])),
        [await container.images.exists(k) for k in (product.image_keys if product else ())],
    )


async def test_add_with_mongodb_hung_at_the_catalog_write_leaves_nothing_behind(
    shop: Container, backends: Backends
) -> None:
    await shop.catalog_service.add("p0", "black trousers", fake_image("black trousers"))
    catalog = shop.catalog
    upsert_many = catalog.upsert_many

    async def hang_then_write(products: Sequence[Product]) -> None:
        backends.mongo.freeze()  # MongoDB stops answering exactly at the product write
        await upsert_many(products)

    catalog.upsert_many = hang_then_write  # type: ignore[method-assign]
    with pytest.raises(UpstreamUnavailable) as failure:
        await shop.catalog_service.add("p1", "red dress", fake_image("red dress"))
    catalog.upsert_many = upsert_many  # type: ignore[method-assign]
    message = str(failure.value)
    assert "MongoDB" in message
    assert "ingest --verify" in message
    # the vectors were taken back at once, MongoDB still hung: similarProducts cannot use a
    # photo the product may not have
    assert await shop.index.fetch("fake", ["p1"]) == {}
    backends.mongo.thaw()
    assert await shop.catalog.ledger_entries(["fake"], ["p1"]) == {}  # never ahead
    # A write MongoDB received before it hung lands when it answers again (here it does):
    # the product then has its image, and the repair the error names makes it whole.
    product = await shop.catalog.get("p1")
    if product is None:
        assert len(bucket_keys(shop)) <= 2  # at most the kept image, nothing points at it
        return
    assert await shop.images.exists(product.image_keys[0])
    check = LedgerCheck(shop.index, shop.catalog, shop.images, shop.indexer)
    report = await check.run([shop.encoders.get("fake")])
    assert report.by_encoder["fake"].ids["product_without_vector"] == ["p1"]
    await check.repair(report, [shop.encoders.get("fake")])
    assert (await check.run([shop.encoders.get("fake")])).clean
    assert sorted(await shop.index.fetch("fake", ["p0", "p1"])) == ["p0", "p1"]


async def test_delete_with_s3_hung_keeps_the_product_whole_and_a_retry_finishes(
    shop: Container, backends: Backends
) -> None:
    await shop.catalog_service.add("p1", "red dress", fake_image("red dress"))
    before = await state_of(shop, "p1")
    backends.s3.stop()
    hole = Blackhole(backends.s3.port)
    try:
        with pytest.raises(UpstreamUnavailable, match="S3") as failure:
            await shop.catalog_service.delete("p1")
    finally:
        hole.close()
        backends.s3.start()
    assert "retry deleteProduct" in str(failure.value)
    # row, ledger and vectors are whole; the image too, unless the delete S3 received before
    # it hung is carried out once it recovers (boto3 retries it): the retry then finishes
    after = await state_of(shop, "p1")
    assert after[:3] == before[:3]
    assert await shop.catalog_service.delete("p1") is True
    assert await state_of(shop, "p1") == (None, {}, [], [])
    assert bucket_keys(shop) == []


async def test_replacing_a_photo_deletes_the_old_object(shop: Container) -> None:
    await shop.catalog_service.add("p1", "dress", fake_image("red dress"))
    first = bucket_keys(shop)
    await shop.catalog_service.add("p1", "dress", fake_image("blue dress"))
    second = bucket_keys(shop)
    assert len(first) == len(second) == 1
    assert first != second
    product = await shop.catalog.get("p1")
    assert product is not None
    assert list(product.image_keys) == second


async def test_ids_that_sanitise_alike_never_share_an_image(shop: Container) -> None:
    photo = fake_image("same photo")
    for pid in ("sku 1/red", "sku_1_red"):
        await shop.catalog_service.add(pid, "shirt", photo)
    assert len(bucket_keys(shop)) == 2
    await shop.catalog_service.delete("sku 1/red")
    survivor = await shop.catalog.get("sku_1_red")
    assert survivor is not None
    assert await shop.images.get(survivor.image_keys[0]) == photo
