"""The ledger checked against the stores (``ingest --verify``) and the quick check a plain
ingest makes, on the in-memory fakes: every kind of disagreement is found, and the repair
leaves the stores agreeing with the ledger."""

from __future__ import annotations

import pytest

from domain.images import content_hash
from domain.indexer import Indexer, IndexItem
from domain.ledger_check import LedgerCheck, StoreNames, stale_ledger_reasons
from tests.fakes import (
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)

NAMES = StoreNames("Pinecone index 'shop'", "MongoDB database 'shop'", "S3 bucket 'photos'")


class Versioned(HashingEncoder):
    def __init__(self, version: str) -> None:
        super().__init__("enc")
        self.version = version


class Shop:
    def __init__(self) -> None:
        self.index = InMemoryVectorIndex()
        self.catalog = InMemoryCatalog()
        self.images = InMemoryImageStore()
        self.indexer = Indexer(self.index, self.catalog, self.images)
        self.check = LedgerCheck(self.index, self.catalog, self.images, self.indexer)
        self.encoder = Versioned("w1")


def item(pid: str) -> IndexItem:
    data = fake_image(f"photo of {pid}")
    return IndexItem(pid, f"name {pid}", data, "image/jpeg", content_hash(data), tags={"n": pid})


@pytest.fixture
async def shop() -> Shop:
    shop = Shop()
    await shop.indexer.index_batch([item(f"p{i}") for i in range(8)], [shop.encoder])
    return shop


async def test_a_consistent_home_is_clean(shop: Shop) -> None:
    report = await shop.check.run([shop.encoder])
    assert report.clean
    assert report.products == 8


async def test_every_kind_of_disagreement_is_found_and_repaired(shop: Shop) -> None:
    await shop.index.delete(["p1"])  # vector lost, ledger says indexed
    await shop.catalog.forget_indexed(["p2"])  # ledger row lost
    shop.catalog.ledger["enc"]["p3"] = shop.catalog.ledger["enc"]["p3"].split("@")[0] + "@w0"
    shop.images.objects.pop(shop.catalog.products["p4"].image_keys[0])  # image lost
    await shop.catalog.mark_indexed("enc", {"ghost": "abc@w1"})  # ledger of no product
    ghost = shop.encoder.encode_images([fake_image("ghost")])
    await shop.index.upsert("enc", ["ghost", "ghost2"], ghost.repeat(2, axis=0), [{}, {}])

    shop.images.objects["stray-0000.jpg"] = (b"\xff\xd8\xff", "image/jpeg")

    report = await shop.check.run([shop.encoder])
    assert (report.unreferenced_images, report.unreferenced_examples) == (1, ["stray-0000.jpg"])
    found = report.by_encoder["enc"]
    assert found.ids["ledger_without_vector"] == ["p1"]
    assert found.ids["product_not_in_ledger"] == ["p2"]
    assert found.ids["ledger_other_weights"] == ["p3"]
    assert found.ids["ledger_without_product"] == ["ghost"]
    assert found.vectors_without_product == 2
    assert report.missing_images == ["p4"]
    assert not report.clean

    repaired = await shop.check.repair(report, [shop.encoder])
    assert repaired.reencoded == 3  # p1, p2, p3 from their stored images
    assert repaired.forgotten == 2  # the ghost's entry, p4's (a source ingest redoes it)
    assert repaired.failed == {}
    again = await shop.check.run([shop.encoder])
    found = again.by_encoder["enc"]
    assert found.ids["product_not_in_ledger"] == ["p4"]  # waits for its image from the source
    assert again.missing_images == ["p4"]
    assert again.unreferenced_images == 1  # reported, never deleted by the repair
    assert found.vectors_without_product == 1  # ghost2: the index cannot list its ids
    for kind in ("ledger_without_vector", "ledger_other_weights", "ledger_without_product"):
        assert found.ids[kind] == []
    ledger = shop.catalog.ledger["enc"]
    assert all(ledger[f"p{i}"].endswith("@w1") for i in (1, 2, 3))
    assert set(shop.index.vectors["enc"]) >= {"p1", "p2", "p3"}


async def test_the_check_reads_the_ledger_in_pages(shop: Shop) -> None:
    await shop.catalog.mark_indexed("enc", {f"x{i:04d}": "h" for i in range(2500)})
    pages: list[int] = []
    original = shop.catalog.ledger_page

    async def page(encoder_id: str, after: str | None, limit: int) -> dict[str, str]:
        found = await original(encoder_id, after, limit)
        pages.append(len(found))
        return found

    shop.catalog.ledger_page = page  # type: ignore[method-assign]
    report = await shop.check.run([shop.encoder])
    assert len(report.by_encoder["enc"].ids["ledger_without_product"]) == 2500
    assert max(pages) <= 1000
    assert sum(pages) == 2508


async def test_quick_check_names_an_empty_index_and_a_new_bucket(shop: Shop) -> None:
    assert (
        await stale_ledger_reasons(shop.index, shop.catalog, shop.images, [shop.encoder], NAMES)
        == []
    )

    new_index = InMemoryVectorIndex()
    reasons = await stale_ledger_reasons(
        new_index, shop.catalog, shop.images, [shop.encoder], NAMES
    )
    assert reasons == [
        "the ledger (MongoDB database 'shop') records products as indexed with enc but "
        "Pinecone index 'shop' has no vectors for it"
    ]
    reasons = await stale_ledger_reasons(
        shop.index, shop.catalog, InMemoryImageStore(), [shop.encoder], NAMES
    )
    assert len(reasons) == 1
    assert "none of the images the ledger records is in S3 bucket 'photos'" in reasons[0]


async def test_quick_check_of_an_empty_home_says_nothing() -> None:
    shop = Shop()
    reasons = await stale_ledger_reasons(
        shop.index, shop.catalog, shop.images, [shop.encoder], NAMES
    )
    assert reasons == []
