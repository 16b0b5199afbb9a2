"""The one write use case (domain/indexer.py) with a fault injected at every step of a write
and of a removal: a failed write leaves the stores exactly as they were (or says what
remains), the ledger is never ahead of the stores, and the write lock is held around the
writes only, never around encoding."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from domain.errors import UpstreamUnavailable, WriterBusy
from domain.images import content_hash, image_key, legacy_image_key
from domain.indexer import WORDS_PER_CALL, IncompleteWrite, Indexer, IndexItem, iter_ledger
from domain.model import Product, product_text_space
from domain.ports import Vectors
from domain.services import CatalogService
from tests.fakes import (
    FakeEncoderProvider,
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)

ENCODERS = (HashingEncoder("enc-a"), HashingEncoder("enc-b", dim=32))


class Faults:
    """Makes the n-th call of a method fail, or (``down``) every call from then on, as a
    store that stopped answering."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.fail_at: tuple[str, int] | None = None
        self.down_from: tuple[str, int] | None = None
        self.down: str | None = None
        """The store ("catalog", "index", "images") that stopped answering."""

    def tick(self, method: str) -> None:
        n = self.calls[method] = self.calls.get(method, 0) + 1
        store = method.split(".")[0]
        if self.down_from == (method, n):
            self.down = store
        if self.down == store or self.fail_at == (method, n):
            raise UpstreamUnavailable(f"{method} did not answer")


class FaultyIndex(InMemoryVectorIndex):
    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    async def upsert(
        self,
        encoder_id: str,
        ids: Sequence[str],
        vectors: Vectors,
        metadata: Sequence[Mapping[str, str]],
    ) -> None:
        self.faults.tick("index.upsert")
        await super().upsert(encoder_id, ids, vectors, metadata)

    async def delete(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        self.faults.tick("index.delete")
        await super().delete(ids, encoder_id)

    async def flush(self) -> None:
        self.faults.tick("index.flush")


class FaultyCatalog(InMemoryCatalog):
    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    async def upsert_many(self, products: Sequence[Product]) -> None:
        self.faults.tick("catalog.upsert_many")
        await super().upsert_many(products)

    async def delete(self, product_id: str) -> bool:
        self.faults.tick("catalog.delete")
        return await super().delete(product_id)

    async def mark_indexed(self, encoder_id: str, hashes: Mapping[str, str]) -> None:
        self.faults.tick("catalog.mark_indexed")
        await super().mark_indexed(encoder_id, hashes)

    async def forget_indexed(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        self.faults.tick("catalog.forget_indexed")
        await super().forget_indexed(ids, encoder_id)


class FaultyImages(InMemoryImageStore):
    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.faults.tick("images.put")
        await super().put(key, data, content_type)

    async def delete(self, key: str) -> None:
        self.faults.tick("images.delete")
        await super().delete(key)


class RecordingLock:
    """Records when it is held, so tests can see what happened inside it."""

    def __init__(self, events: list[str], busy: bool = False) -> None:
        self.events = events
        self.busy = busy
        self.held = False

    @asynccontextmanager
    async def _held(self, purpose: str) -> AsyncIterator[None]:
        if self.busy:
            raise WriterBusy("pid 1 (fashion-search ingest) is writing")
        self.events.append(f"lock {purpose}")
        self.held = True
        try:
            yield
        finally:
            self.held = False
            self.events.append("unlock")

    def hold(self, purpose: str) -> AbstractAsyncContextManager[None]:
        return self._held(purpose)


class Home:
    def __init__(self) -> None:
        self.faults = Faults()
        self.index = FaultyIndex(self.faults)
        self.catalog = FaultyCatalog(self.faults)
        self.images = FaultyImages(self.faults)
        self.events: list[str] = []
        self.lock = RecordingLock(self.events)
        self.indexer = Indexer(self.index, self.catalog, self.images, self.lock)

    def snapshot(self) -> Any:
        return (
            {e: {p: v.tobytes() for p, v in s.items()} for e, s in self.index.vectors.items()},
            {e: {p: dict(t) for p, t in m.items()} for e, m in self.index.metadata.items()},
            dict(self.catalog.products),
            {e: dict(entries) for e, entries in self.catalog.ledger.items() if entries},
            dict(self.images.objects),
        )

    def assert_consistent(self) -> None:
        """Every product has its image object and one vector per encoder with its tags, the
        ledger records exactly those, and no object, vector or entry belongs to nothing."""
        products = self.catalog.products
        keys = {k for p in products.values() for k in p.image_keys}
        assert set(self.images.objects) == keys
        for encoder in ENCODERS:
            assert set(self.index.vectors.get(encoder.id, {})) == set(products)
            assert set(self.catalog.ledger.get(encoder.id, {})) == set(products)
            for pid, tags in self.index.metadata.get(encoder.id, {}).items():
                assert dict(tags) == dict(products[pid].tags)


def item(pid: str, words: str, colour: str = "red") -> IndexItem:
    data = fake_image(words)
    return IndexItem(
        id=pid,
        name=words,
        image=data,
        content_type="image/jpeg",
        digest=content_hash(data),
        tags={"colour": colour},
    )


@pytest.fixture
async def home() -> Home:
    home = Home()
    await home.indexer.index_batch(
        [item("p1", "red dress"), item("p2", "blue shoe", "blue")], ENCODERS
    )
    home.faults.calls.clear()
    home.events.clear()
    home.assert_consistent()
    return home


WRITE_STEPS = [
    ("images.put", 1),
    ("images.put", 2),
    ("index.upsert", 1),
    ("index.upsert", 2),
    ("catalog.upsert_many", 1),
    ("index.flush", 1),
    ("catalog.mark_indexed", 1),
    ("catalog.mark_indexed", 2),
]
"""Every write of a batch of two new products (one upsert and one ledger write per encoder)."""


@pytest.mark.parametrize("step", WRITE_STEPS, ids=lambda s: f"{s[0]}#{s[1]}")
async def test_a_failed_write_of_new_products_leaves_nothing_behind(
    home: Home, step: tuple[str, int]
) -> None:
    before = home.snapshot()
    home.faults.fail_at = step
    with pytest.raises(UpstreamUnavailable, match="did not answer") as failure:
        await home.indexer.index_batch(
            [item("p3", "green coat", "green"), item("p4", "black boot", "black")], ENCODERS
        )
    assert not isinstance(failure.value, IncompleteWrite)
    assert home.snapshot() == before
    home.assert_consistent()
    assert home.events[0].startswith("lock")
    assert home.events[-1] == "unlock"


@pytest.mark.parametrize("step", WRITE_STEPS, ids=lambda s: f"{s[0]}#{s[1]}")
async def test_a_failed_photo_replacement_puts_everything_back(
    home: Home, step: tuple[str, int]
) -> None:
    before = home.snapshot()
    home.faults.fail_at = step
    with pytest.raises(UpstreamUnavailable):
        await home.indexer.index_batch(
            [item("p1", "a new photo", "teal"), item("p2", "another new photo")], ENCODERS
        )
    assert home.snapshot() == before
    home.assert_consistent()


async def test_replacing_a_photo_deletes_the_old_image(home: Home) -> None:
    old_key = home.catalog.products["p1"].image_keys[0]
    result = await home.indexer.index_batch([item("p1", "a new photo")], ENCODERS)
    assert result.indexed == ("p1",)
    assert old_key not in home.images.objects
    assert home.catalog.products["p1"].image_keys != (old_key,)
    home.assert_consistent()


async def test_an_old_image_that_cannot_be_deleted_is_reported_not_fatal(home: Home) -> None:
    old_key = home.catalog.products["p1"].image_keys[0]
    home.faults.fail_at = ("images.delete", 1)
    result = await home.indexer.index_batch([item("p1", "a new photo")], ENCODERS)
    assert result.orphaned_images == (old_key,)
    assert home.catalog.products["p1"].image_keys[0] in home.images.objects
    assert home.catalog.ledger["enc-a"]["p1"] == content_hash(fake_image("a new photo"))


async def test_a_store_that_stays_down_gives_an_error_naming_what_remains(home: Home) -> None:
    """The catalog stops answering at the ledger write: the product row cannot be taken back
    either, and the error says so and how to repair."""
    home.faults.down_from = ("catalog.mark_indexed", 1)
    with pytest.raises(IncompleteWrite) as failure:
        await home.indexer.index_batch([item("p3", "green coat")], ENCODERS)
    message = str(failure.value)
    assert "'p3'" in message
    assert "recording the ledger" in message
    assert "products" in message
    assert "ingest --verify" in message
    # the ledger is not ahead of the stores: nothing recorded for p3
    assert all("p3" not in entries for entries in home.catalog.ledger.values())
    # vectors and the new image were taken back even though the catalog is down
    assert all("p3" not in space for space in home.index.vectors.values())


async def test_the_lock_is_held_around_the_writes_and_never_around_encoding(home: Home) -> None:
    class Watching(HashingEncoder):
        def encode_images(self, images: Sequence[bytes]) -> Vectors:
            home.events.append("encode (locked)" if home.lock.held else "encode")
            return super().encode_images(images)

    flushes = []
    original_flush = home.index.flush

    async def flush() -> None:
        flushes.append(home.lock.held)
        await original_flush()

    home.index.flush = flush  # type: ignore[method-assign]
    marks: list[bool] = []
    original_mark = home.catalog.mark_indexed

    async def mark(encoder_id: str, hashes: Mapping[str, str]) -> None:
        marks.append(home.lock.held)
        await original_mark(encoder_id, hashes)

    home.catalog.mark_indexed = mark  # type: ignore[method-assign]
    await home.indexer.index_batch([item("p3", "green coat")], [Watching("enc-a")], purpose="x")
    assert home.events == ["encode", "lock x", "unlock"]
    assert flushes == [True]
    assert marks == [True]


async def test_a_busy_writer_refuses_before_anything_is_written(home: Home) -> None:
    before = home.snapshot()
    home.lock.busy = True
    with pytest.raises(WriterBusy, match="pid 1"):
        await home.indexer.index_batch([item("p3", "green coat")], ENCODERS)
    with pytest.raises(WriterBusy):
        await home.indexer.remove(["p1"])
    assert home.snapshot() == before


async def test_an_unchanged_batch_takes_no_lock_and_writes_nothing(home: Home) -> None:
    before, reads = home.snapshot(), home.catalog.ledger_calls
    result = await home.indexer.index_batch(
        [item("p1", "red dress"), item("p2", "blue shoe", "blue")], ENCODERS
    )
    assert result.skipped == ("p1", "p2")
    assert home.events == []
    assert home.snapshot() == before
    assert home.catalog.ledger_calls == reads + 1  # the batch's entries, in one call


REMOVE_STEPS = [
    ("catalog.forget_indexed", 1),
    ("index.delete", 1),
    ("catalog.delete", 1),
    ("catalog.delete", 2),
    ("index.flush", 1),
]


@pytest.mark.parametrize("step", REMOVE_STEPS, ids=lambda s: f"{s[0]}#{s[1]}")
async def test_a_failed_removal_leaves_the_products_whole(
    home: Home, step: tuple[str, int]
) -> None:
    before = home.snapshot()
    home.faults.fail_at = step
    with pytest.raises(UpstreamUnavailable):
        await home.indexer.remove(["p1", "p2"])
    assert home.snapshot() == before
    home.assert_consistent()


@pytest.mark.parametrize(("nth", "kept"), [(1, "p1"), (2, "p2")])
async def test_a_product_whose_image_cannot_be_deleted_is_put_back_whole(
    home: Home, nth: int, kept: str
) -> None:
    """Deleting an image cannot be undone, so images go last and only the product whose
    image delete failed is put back; the other one is gone from every store."""
    product = home.catalog.products[kept]
    vectors = {e: home.index.vectors[e][kept].tobytes() for e in home.index.vectors}
    ledger = {e: home.catalog.ledger[e][kept] for e in home.catalog.ledger}
    home.faults.fail_at = ("images.delete", nth)
    with pytest.raises(UpstreamUnavailable, match=r"images\.delete"):
        await home.indexer.remove(["p1", "p2"])
    assert home.catalog.products == {kept: product}
    assert {e: home.index.vectors[e][kept].tobytes() for e in home.index.vectors} == vectors
    assert {e: home.catalog.ledger[e][kept] for e in home.catalog.ledger} == ledger
    home.assert_consistent()


async def test_removal_with_the_image_store_down_keeps_the_product_whole(home: Home) -> None:
    """Issue 14 item 5: with S3 hung, deleteProduct must not leave a half-deleted product."""
    before = home.snapshot()
    home.faults.down_from = ("images.delete", 1)
    service = CatalogService(
        FakeEncoderProvider(*ENCODERS), home.index, home.catalog, home.images, home.lock
    )
    with pytest.raises(UpstreamUnavailable, match=r"images\.delete did not answer"):
        await service.delete("p1")
    assert home.snapshot() == before
    home.faults.down = None
    assert await service.delete("p1") is True
    assert "p1" not in home.catalog.products
    assert all("p1" not in space for space in home.index.vectors.values())
    assert all("p1" not in entries for entries in home.catalog.ledger.values())
    assert len(home.images.objects) == 1


async def test_remove_takes_every_store(home: Home) -> None:
    result = await home.indexer.remove(["p1", "missing"])
    assert result.removed == ("p1",)
    assert set(home.catalog.products) == {"p2"}
    home.assert_consistent()


async def test_add_failing_at_the_catalog_write_leaves_no_image_or_vector() -> None:
    """Issue 14 item 5, through the API's use case."""
    home = Home()
    home.faults.fail_at = ("catalog.upsert_many", 1)
    service = CatalogService(
        FakeEncoderProvider(*ENCODERS), home.index, home.catalog, home.images, home.lock
    )
    with pytest.raises(UpstreamUnavailable):
        await service.add("p9", "coat", fake_image("coat"), encoder_ids=["enc-a"])
    assert home.images.objects == {}
    assert home.index.vectors.get("enc-a", {}) == {}
    assert home.catalog.products == {}
    assert not home.catalog.ledger.get("enc-a")


async def test_add_records_a_versioned_ledger_entry() -> None:
    class Versioned(HashingEncoder):
        version = "w7"

    home = Home()
    encoder = Versioned("enc-v")
    service = CatalogService(FakeEncoderProvider(encoder), home.index, home.catalog, home.images)
    await service.add("p9", "coat", fake_image("coat"))
    assert home.catalog.ledger["enc-v"]["p9"] == content_hash(fake_image("coat")) + "@w7"


async def test_image_keys_hash_the_full_id() -> None:
    photo = fake_image("same photo")
    keys = {
        image_key(pid, photo, "image/jpeg")
        for pid in ["sku 1/red", "sku_1_red", "x" * 70 + "a", "x" * 70 + "b"]
    }
    assert len(keys) == 4
    key = image_key("sku 1/red", photo, "image/jpeg")
    assert key.startswith("sku_1_red-")
    assert key.endswith(".jpg")
    assert image_key("sku 1/red", photo, "image/jpeg") == key  # stable


async def test_products_under_legacy_keys_keep_them_until_their_photo_changes() -> None:
    home = Home()
    data = fake_image("old home")
    legacy = legacy_image_key("p1", data, "image/jpeg")
    old = item("p1", "old home")
    home.images.objects[legacy] = (data, "image/jpeg")
    await home.catalog.upsert_many([old.product(legacy)])
    encoder = ENCODERS[0]
    await home.index.upsert(encoder.id, ["p1"], encoder.encode_images([data]), [old.tags])
    await home.catalog.mark_indexed(encoder.id, {"p1": old.digest})

    again = await home.indexer.index_batch([old], [encoder])
    assert again.skipped == ("p1",)
    assert home.catalog.products["p1"].image_keys == (legacy,)

    await home.indexer.index_batch([item("p1", "new photo")], [encoder])
    assert legacy not in home.images.objects
    assert home.catalog.products["p1"].image_keys[0].count("-") == 2


async def test_the_ledger_is_walked_in_pages() -> None:
    catalog = InMemoryCatalog()
    await catalog.mark_indexed("e", {f"p{i:02d}": "h" for i in range(23)})
    pages = [page async for page in iter_ledger(catalog, "e", page_size=10)]
    assert [len(p) for p in pages] == [10, 10, 3]
    assert [pid for p in pages for pid in p] == [f"p{i:02d}" for i in range(23)]


class CallRecordingEncoder(HashingEncoder):
    """Remembers the texts of each encode_texts call."""

    def __init__(self) -> None:
        super().__init__("words")
        self.text_calls: list[list[str]] = []

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        self.text_calls.append(list(texts))
        return super().encode_texts(texts)


async def test_words_are_encoded_in_short_calls_of_similar_lengths() -> None:
    encoder = CallRecordingEncoder()
    index = InMemoryVectorIndex()
    indexer = Indexer(index, InMemoryCatalog(), InMemoryImageStore())
    names = [("long " * (i % 7 + 1)) + f"dress {i}" for i in range(3 * WORDS_PER_CALL + 1)]
    await indexer.index_batch([item(f"p{i}", name) for i, name in enumerate(names)], [encoder])
    calls = encoder.text_calls
    assert [len(c) for c in calls] == [WORDS_PER_CALL] * 3 + [1]
    assert [t for c in calls for t in c] == sorted(names, key=len)  # shortest first
    words = index.vectors[product_text_space("words")]
    for i, name in enumerate(names):  # each product has its own words' vector
        assert words[f"p{i}"].tobytes() == encoder.encode_texts([name])[0].tobytes()


async def test_products_sharing_their_words_share_one_encoding() -> None:
    # colour variants with the same name and description: one text-tower call for the text
    encoder = CallRecordingEncoder()
    index = InMemoryVectorIndex()
    indexer = Indexer(index, InMemoryCatalog(), InMemoryImageStore())
    names = ["Bruce skinny", "Bruce skinny", "Tilly top", "Bruce skinny"]
    await indexer.index_batch([item(f"v{i}", name) for i, name in enumerate(names)], [encoder])
    assert sorted(t for c in encoder.text_calls for t in c) == ["Bruce skinny", "Tilly top"]
    words = index.vectors[product_text_space("words")]
    assert set(words) == {"v0", "v1", "v2", "v3"}  # every variant still has its vector
    for i, name in enumerate(names):
        assert words[f"v{i}"].tobytes() == encoder.encode_texts([name])[0].tobytes()
