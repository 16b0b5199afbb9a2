"""The ingest pipeline on the in-memory fakes: what it writes, what it skips, how it fails and
how a rerun repairs a crash."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from domain.errors import InvalidImage, UpstreamUnavailable
from domain.images import content_hash, image_key
from domain.model import Product
from domain.ports import Encoder, Vectors
from ingest.pipeline import IngestOptions, IngestPipeline
from ingest.readers import FileImage, RemoteImage, SourceItem, open_source
from ingest.report import (
    IngestProgress,
    IngestSummary,
    default_report_path,
    report_document,
    write_report,
)
from tests.fakes import (
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)


class Crash(Exception):
    """The process dies here."""


class FlakyIndex(InMemoryVectorIndex):
    """Writes become durable only at flush(); ``restart()`` forgets the rest, as a process
    that died would. Optionally crashes on the Nth call of a method."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_on: tuple[str, int] | None = None
        self.calls: dict[str, int] = {}
        self.flushes = 0
        self._durable: tuple[dict[str, dict[str, Vectors]], dict[str, dict[str, Mapping[str, str]]]]
        self._durable = ({}, {})

    def _tick(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.crash_on == (method, self.calls[method]):
            raise Crash(f"{method} #{self.calls[method]}")

    async def upsert(
        self,
        encoder_id: str,
        ids: Sequence[str],
        vectors: Vectors,
        metadata: Sequence[Mapping[str, str]],
    ) -> None:
        self._tick("upsert")
        await super().upsert(encoder_id, ids, vectors, metadata)

    async def flush(self) -> None:
        self._tick("flush")
        self.flushes += 1
        self._durable = (copy.deepcopy(self.vectors), copy.deepcopy(self.metadata))

    def restart(self) -> None:
        self.vectors, self.metadata = copy.deepcopy(self._durable)
        self.crash_on = None
        self.calls.clear()


class FlakyCatalog(InMemoryCatalog):
    def __init__(self) -> None:
        super().__init__()
        self.crash_on: tuple[str, int] | None = None
        self.calls: dict[str, int] = {}

    def _tick(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.crash_on == (method, self.calls[method]):
            raise Crash(f"{method} #{self.calls[method]}")

    async def upsert_many(self, products: Sequence[Product]) -> None:
        self._tick("upsert_many")
        await super().upsert_many(products)

    async def mark_indexed(self, encoder_id: str, hashes: Mapping[str, str]) -> None:
        self._tick("mark_indexed")
        await super().mark_indexed(encoder_id, hashes)


class FlakyImages(InMemoryImageStore):
    def __init__(self) -> None:
        super().__init__()
        self.crash_on: tuple[str, int] | None = None
        self.calls: dict[str, int] = {}

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.calls["put"] = self.calls.get("put", 0) + 1
        if self.crash_on == ("put", self.calls["put"]):
            raise Crash(f"put #{self.calls['put']}")
        await super().put(key, data, content_type)


class PickyEncoder(HashingEncoder):
    """Rejects images containing b'CORRUPT' (as a real decoder rejects a truncated JPEG that
    still starts with the JPEG magic bytes)."""

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        if any(b"CORRUPT" in data for data in images):
            self.calls += 1
            raise InvalidImage("cannot decode image: truncated")
        return super().encode_images(images)


@dataclass
class Stores:
    index: FlakyIndex = field(default_factory=FlakyIndex)
    catalog: FlakyCatalog = field(default_factory=FlakyCatalog)
    images: FlakyImages = field(default_factory=FlakyImages)

    def restart(self) -> None:
        self.index.restart()
        self.catalog.crash_on = None
        self.images.crash_on = None

    def snapshot(self) -> object:
        return (
            {e: {p: v.tobytes() for p, v in s.items()} for e, s in self.index.vectors.items()},
            copy.deepcopy(self.index.metadata),
            dict(self.catalog.products),
            copy.deepcopy(self.catalog.ledger),
            dict(self.images.objects),
        )


def make_items(root: Path, n: int, prefix: str = "p") -> list[SourceItem]:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = root / f"{prefix}{i}.jpg"
        path.write_bytes(fake_image(f"item {i} colour{i % 3}"))
        items.append(
            SourceItem(
                id=f"{prefix}{i}",
                name=f"Item {i}",
                description=f"description {i}",
                tags={"colour": f"colour{i % 3}", "n": str(i)},
                image=FileImage(path),
            )
        )
    return items


async def run(
    items: Iterable[SourceItem],
    stores: Stores,
    encoders: Sequence[Encoder] | None = None,
    *,
    batch_size: int = 4,
    max_image_bytes: int = 10**6,
) -> IngestSummary:
    pipeline = IngestPipeline(
        list(encoders or [HashingEncoder()]),
        stores.index,
        stores.catalog,
        stores.images,
        options=IngestOptions(batch_size=batch_size, max_image_bytes=max_image_bytes),
    )
    return await pipeline.run(items)


def local_bytes(item: SourceItem) -> bytes:
    assert isinstance(item.image, FileImage)
    return item.image.read(10**6)


def replace_photo(item: SourceItem, data: bytes) -> None:
    assert isinstance(item.image, FileImage)
    item.image.path.write_bytes(data)


def assert_consistent(
    stores: Stores, items: Sequence[SourceItem], encoder_ids: Sequence[str]
) -> None:
    """Exactly the source's products, each with its image and one vector per encoder; no
    orphans; the ledger records every item's current image."""
    ids = {i.id for i in items}
    assert set(stores.catalog.products) == ids
    for encoder_id in encoder_ids:
        assert set(stores.index.vectors.get(encoder_id, {})) == ids
        hashes = {i.id: content_hash(local_bytes(i)) for i in items}
        assert stores.catalog.ledger[encoder_id] == hashes
    referenced = {k for p in stores.catalog.products.values() for k in p.image_keys}
    assert set(stores.images.objects) == referenced
    for item in items:
        product = stores.catalog.products[item.id]
        data = local_bytes(item)
        assert product.image_keys == (image_key(item.id, data, "image/jpeg"),)
        assert product.name == item.name
        assert dict(product.tags) == dict(item.tags)


async def test_ingest_writes_products_vectors_images_and_ledger(tmp_path: Path) -> None:
    items = make_items(tmp_path, 10)
    stores = Stores()
    progress: list[IngestProgress] = []
    pipeline = IngestPipeline(
        [HashingEncoder()],
        stores.index,
        stores.catalog,
        stores.images,
        options=IngestOptions(batch_size=4),
        on_progress=progress.append,
    )
    summary = await pipeline.run(items, total=10)

    assert (summary.seen, summary.indexed, summary.skipped_unchanged, summary.failed) == (
        10,
        10,
        0,
        0,
    )
    assert summary.seconds > 0
    assert summary.images_per_s > 0
    assert_consistent(stores, items, ["fake"])
    assert stores.index.metadata["fake"]["p4"] == {"colour": "colour1", "n": "4"}
    expected = HashingEncoder().encode_images([fake_image("item 4 colour1")])[0]
    np.testing.assert_allclose(stores.index.vectors["fake"]["p4"], expected)
    assert stores.catalog.products["p4"].description == "description 4"
    assert [p.done for p in progress] == [4, 8, 10]
    assert progress[-1] == IngestProgress(10, 10, 10, 0, 0, 0)
    assert stores.index.flushes == 3  # each batch is durable before the next is written


async def test_second_run_changes_nothing_and_encodes_nothing(tmp_path: Path) -> None:
    items = make_items(tmp_path, 9)
    stores = Stores()
    encoder = HashingEncoder()
    await run(items, stores, [encoder])
    before, calls, flushes = stores.snapshot(), encoder.calls, stores.index.flushes

    again = await run(items, stores, [encoder])

    assert (again.seen, again.indexed, again.skipped_unchanged, again.failed) == (9, 0, 9, 0)
    assert encoder.calls == calls
    assert stores.index.flushes == flushes
    assert stores.snapshot() == before


async def test_changed_image_is_reindexed_and_old_image_removed(tmp_path: Path) -> None:
    items = make_items(tmp_path, 5)
    stores = Stores()
    await run(items, stores)
    old_key = stores.catalog.products["p2"].image_keys[0]
    replace_photo(items[2], fake_image("a new photo"))

    summary = await run(items, stores)

    assert (summary.indexed, summary.skipped_unchanged) == (1, 4)
    assert old_key not in stores.images.objects
    assert_consistent(stores, items, ["fake"])


async def test_changed_tags_update_product_and_vector_metadata_without_encoding(
    tmp_path: Path,
) -> None:
    items = make_items(tmp_path, 5)
    stores = Stores()
    encoder = HashingEncoder()
    await run(items, stores, [encoder])
    calls = encoder.calls
    vector = stores.index.vectors["fake"]["p1"].copy()
    edited = list(items)
    edited[1] = SourceItem(id="p1", name="Renamed", tags={"colour": "teal"}, image=items[1].image)

    summary = await run(edited, stores, [encoder])

    assert (summary.indexed, summary.updated, summary.skipped_unchanged) == (0, 1, 4)
    assert encoder.calls == calls + 1  # the renamed product's words, not its image
    assert stores.catalog.products["p1"].name == "Renamed"
    assert stores.index.metadata["fake"]["p1"] == {"colour": "teal"}
    np.testing.assert_array_equal(stores.index.vectors["fake"]["p1"], vector)
    assert_consistent(stores, edited, ["fake"])


async def test_second_encoder_indexes_only_for_itself(tmp_path: Path) -> None:
    items = make_items(tmp_path, 6)
    stores = Stores()
    first, second = HashingEncoder("enc-a"), HashingEncoder("enc-b", dim=32)
    await run(items, stores, [first])
    calls = first.calls

    summary = await run(items, stores, [first, second])

    assert summary.indexed == 6
    assert first.calls == calls
    assert stores.index.vectors["enc-b"]["p0"].shape == (32,)
    assert_consistent(stores, items, ["enc-a", "enc-b"])
    assert (await run(items, stores, [first, second])).skipped_unchanged == 6


async def test_bad_images_are_reported_not_fatal(tmp_path: Path) -> None:
    good = make_items(tmp_path, 5)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "text.jpg").write_bytes(b"this is not an image")
    (bad_dir / "empty.jpg").write_bytes(b"")
    (bad_dir / "huge.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 5000)
    (bad_dir / "truncated.jpg").write_bytes(b"\xff\xd8\xffCORRUPT")
    bad = [
        SourceItem(id=name, name=name, image=FileImage(bad_dir / f"{name}.jpg"))
        for name in ("text", "empty", "huge", "truncated", "missing")
    ]
    no_id = SourceItem(id="", name="", image=FileImage(bad_dir / "x"), problem="row 9 has no id")
    duplicate = SourceItem(id="p0", name="again", image=good[1].image)
    # Interleave so each batch of four mixes good and bad items.
    items = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], good[3]]
    items += [bad[4], no_id, duplicate, good[4]]
    stores = Stores()

    summary = await run(items, stores, [PickyEncoder()], max_image_bytes=1000)

    assert (summary.seen, summary.indexed, summary.failed) == (12, 5, 7)
    reasons = {(f.id, f.reason.value) for f in summary.failures}
    assert reasons == {
        ("text", "invalid_image"),
        ("empty", "invalid_image"),
        ("huge", "too_large"),
        ("truncated", "invalid_image"),
        ("missing", "missing"),
        ("", "bad_row"),
        ("p0", "duplicate_id"),
    }
    truncated = next(f for f in summary.failures if f.id == "truncated")
    assert "truncated" in truncated.message
    assert truncated.image.endswith("truncated.jpg")
    assert_consistent(stores, good, ["fake"])
    assert stores.catalog.products["p0"].name == "Item 0"  # the first occurrence won

    report = write_report(
        default_report_path(tmp_path / "home"), report_document(summary, "src", "manifest")
    )
    document = json.loads(report.read_text("utf-8"))
    assert document["summary"]["failed"] == 7
    assert document["summary"]["indexed"] == 5
    assert {(f["id"], f["reason"]) for f in document["failures"]} == reasons
    assert report.parent == tmp_path / "home" / "reports"


async def test_limit(tmp_path: Path) -> None:
    items = make_items(tmp_path, 10)
    stores = Stores()
    progress: list[IngestProgress] = []
    pipeline = IngestPipeline(
        [HashingEncoder()],
        stores.index,
        stores.catalog,
        stores.images,
        options=IngestOptions(batch_size=4, limit=6),
        on_progress=progress.append,
    )
    summary = await pipeline.run(iter(items), total=10)
    assert (summary.seen, summary.indexed) == (6, 6)
    assert sorted(stores.catalog.products) == [f"p{i}" for i in range(6)]
    assert progress[-1].total == 6


class FakeFetcher:
    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.fetched: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if url not in self.images:
            raise UpstreamUnavailable(f"{url} did not answer")
        return self.images[url]


async def test_manifest_with_urls_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "local.jpg").write_bytes(fake_image("local dress"))
    (tmp_path / "products.csv").write_text(
        "id,image,name,colour\n"
        "local,img/local.jpg,Local dress,red\n"
        "remote,https://cdn.example.com/r.jpg,Remote shoe,blue\n"
        "down,https://cdn.example.com/down.jpg,Unreachable,green\n",
        "utf-8",
    )
    fetcher = FakeFetcher({"https://cdn.example.com/r.jpg": fake_image("remote shoe")})
    stores = Stores()
    with open_source(tmp_path) as source:
        pipeline = IngestPipeline(
            [HashingEncoder()], stores.index, stores.catalog, stores.images, fetcher=fetcher
        )
        summary = await pipeline.run(source, source.count())
    assert (summary.indexed, summary.failed) == (2, 1)
    assert summary.failures[0].id == "down"
    assert summary.failures[0].reason.value == "fetch_failed"
    assert sorted(stores.catalog.products) == ["local", "remote"]
    assert stores.catalog.products["remote"].tags == {"colour": "blue", "colour_group": "Blue"}
    assert set(fetcher.fetched) == {
        "https://cdn.example.com/r.jpg",
        "https://cdn.example.com/down.jpg",
    }

    # Without a fetcher URLs are reported, local images still go in.
    stores = Stores()
    items = [
        SourceItem(id="u", name="u", image=RemoteImage("https://cdn.example.com/r.jpg")),
        *make_items(tmp_path / "more", 2),
    ]
    summary = await run(items, stores)
    assert (summary.indexed, summary.failed) == (2, 1)
    assert "no image fetcher" in summary.failures[0].message


CRASH_POINTS = [
    ("images", "put", 1),
    ("images", "put", 6),
    ("index", "upsert", 2),
    ("index", "flush", 1),
    ("index", "flush", 2),
    ("catalog", "upsert_many", 2),
    ("catalog", "mark_indexed", 1),
    ("catalog", "mark_indexed", 2),
]


@pytest.mark.parametrize(("store", "method", "nth"), CRASH_POINTS)
async def test_rerun_after_a_crash_repairs_everything(
    tmp_path: Path, store: str, method: str, nth: int
) -> None:
    items = make_items(tmp_path, 14)
    stores = Stores()
    getattr(stores, store).crash_on = (method, nth)
    with pytest.raises(Crash):
        await run(items, stores)
    stores.restart()  # the process died: unflushed vectors are gone

    summary = await run(items, stores)

    assert summary.failed == 0
    assert summary.indexed + summary.skipped_unchanged == 14
    assert summary.indexed > 0
    assert_consistent(stores, items, ["fake"])
    assert (await run(items, stores)).skipped_unchanged == 14


async def test_encoding_overlaps_reading_the_next_batch(tmp_path: Path) -> None:
    """While the encoder works on batch 1, the reader is already taking batch 2."""
    items = make_items(tmp_path, 8)
    second_batch_read = threading.Event()

    def source() -> Iterator[SourceItem]:
        for i, item in enumerate(items):
            if i == 4:
                second_batch_read.set()
            yield item

    class WaitingEncoder(HashingEncoder):
        overlapped: bool | None = None

        def encode_images(self, images: Sequence[bytes]) -> Vectors:
            if self.overlapped is None:
                self.overlapped = second_batch_read.wait(timeout=5)
            return super().encode_images(images)

    encoder = WaitingEncoder()
    stores = Stores()
    summary = await asyncio.wait_for(run(source(), stores, [encoder]), 20)
    assert encoder.overlapped is True
    assert summary.indexed == 8


async def test_writing_a_batch_overlaps_encoding_the_next(tmp_path: Path) -> None:
    """While batch 1 is written, the encoder already works on batch 2; writes still go one
    batch at a time, in order."""
    items = make_items(tmp_path, 12)
    second_encode = threading.Event()
    events: list[str] = []

    class CountingEncoder(HashingEncoder):
        def encode_images(self, images: Sequence[bytes]) -> Vectors:
            if self.calls >= 1:
                second_encode.set()
            return super().encode_images(images)

    class WaitingImages(FlakyImages):
        overlapped: bool | None = None

        async def put(self, key: str, data: bytes, content_type: str) -> None:
            if self.overlapped is None:  # the first image of batch 1
                self.overlapped = await asyncio.to_thread(second_encode.wait, 5)
            events.append(f"put {key.split('-')[0]}")
            await super().put(key, data, content_type)

    class LoggingCatalog(FlakyCatalog):
        async def upsert_many(self, products: Sequence[Product]) -> None:
            events.append("products " + ",".join(p.id for p in products))
            await super().upsert_many(products)

    images = WaitingImages()
    stores = Stores(catalog=LoggingCatalog(), images=images)
    summary = await asyncio.wait_for(run(items, stores, [CountingEncoder()]), 20)
    assert images.overlapped is True
    assert summary.indexed == 12
    assert_consistent(stores, items, ["fake"])
    batches = [[f"p{i}" for i in range(b, b + 4)] for b in (0, 4, 8)]
    assert events == [
        event
        for batch in batches
        for event in [*(f"put {p}" for p in batch), f"products {','.join(batch)}"]
    ]


async def test_a_failed_write_stops_the_run_before_the_next_batch_is_written(
    tmp_path: Path,
) -> None:
    items = make_items(tmp_path, 12)
    stores = Stores()
    stores.catalog.crash_on = ("upsert_many", 1)  # batch 1, while batch 2 is encoded
    with pytest.raises(Crash):
        await run(items, stores)
    assert stores.images.calls["put"] == 4  # nothing of batch 2 was written
    assert stores.catalog.products == {}
    assert stores.catalog.ledger == {}


async def test_interrupted_run_keeps_finished_batches(tmp_path: Path) -> None:
    """Ctrl-C (task cancellation) records the batches that went through every write; a rerun
    does only the rest."""
    items = make_items(tmp_path, 14)
    stores = Stores()
    encoder = HashingEncoder()
    tasks: list[asyncio.Task[IngestSummary]] = []

    def cancel_after_two_batches(progress: IngestProgress) -> None:
        if progress.done == 8:
            tasks[0].cancel()

    pipeline = IngestPipeline(
        [encoder],
        stores.index,
        stores.catalog,
        stores.images,
        options=IngestOptions(batch_size=4),
        on_progress=cancel_after_two_batches,
    )
    tasks.append(asyncio.create_task(pipeline.run(items)))
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert set(stores.catalog.ledger["fake"]) == {f"p{i}" for i in range(8)}
    stores.restart()

    summary = await run(items, stores, [encoder])
    assert (summary.indexed, summary.skipped_unchanged) == (6, 8)
    assert_consistent(stores, items, ["fake"])


class VersionedHashingEncoder(HashingEncoder):
    """The fake encoder with named weights (as fashion-lite names its heads file)."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.version = version


async def test_new_encoder_weights_encode_every_product_again_once(tmp_path: Path) -> None:
    items = make_items(tmp_path, 6)
    stores = Stores()
    await run(items, stores, [VersionedHashingEncoder("w1")])
    hashes = {i.id: content_hash(local_bytes(i)) for i in items}
    assert stores.catalog.ledger["fake"] == {k: f"{h}@w1" for k, h in hashes.items()}

    upgraded = VersionedHashingEncoder("w2")
    summary = await run(items, stores, [upgraded])

    assert (summary.indexed, summary.skipped_unchanged) == (6, 0)
    assert upgraded.calls > 0
    assert stores.catalog.ledger["fake"] == {k: f"{h}@w2" for k, h in hashes.items()}
    referenced = {k for p in stores.catalog.products.values() for k in p.image_keys}
    assert set(stores.images.objects) == referenced  # same photos: no new or orphaned objects
    again = await run(items, stores, [upgraded])
    assert (again.indexed, again.skipped_unchanged) == (0, 6)
