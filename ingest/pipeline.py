"""The ingest pipeline: source items in, images + vectors + products out, through the domain's
one write use case (``domain.indexer.Indexer``).

The pipeline only reads (image bytes read, fetched and validated: sniffed format, size limit),
overlaps the stages and reports progress; what to write, in which order, the rollback of a
failed step, the ledger and the write lock all belong to the Indexer. Per batch: the Indexer
plans it (the batch's ledger entries, one round trip: items whose image is already indexed
for every requested encoder, by these weights, are skipped), encodes it in a worker thread,
then writes it under the home's write lock, flushed and recorded in the ledger before the
lock is released. ``reindex`` ignores the ledger and encodes everything again.

Three stages overlap, so the encoder never waits for the others: while batch N is encoded,
the reader takes and validates the next batches (``read_ahead``) and batch N-1 is written.
Writes stay in batch order (one batch is written at a time), and batch N's writes start
only after batch N-1's finished. (Writing a batch cost about 12% of encoding it, mostly the
fsynced image files, which the encoder used to wait for.)

The ledger never gets ahead of the stores, so rerunning after a crash at any point redoes
exactly the unfinished items: no duplicates (everything is an upsert by product id) and no
orphans (image keys are deterministic). A second run over an unchanged source reads and hashes
the images, finds them all in the ledger and writes nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from domain.errors import BadInput, PayloadTooLarge
from domain.images import content_hash, sniff_image_type
from domain.indexer import BatchPlan, BatchResult, EncodedBatch, Indexer, IndexItem
from domain.model import check_product_id, check_tag_key, check_tag_value, check_text
from domain.ports import (
    Catalog,
    ColourAnalyser,
    Encoder,
    ImageFetcher,
    ImageStore,
    VectorIndex,
    WriteLock,
)
from ingest.readers import ImageUnavailable, RemoteImage, SourceItem
from ingest.report import FailedItem, FailureReason, IngestProgress, IngestSummary

DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024

ProgressCallback = Callable[[IngestProgress], None]


@dataclass(frozen=True)
class IngestOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    """Images per encoder call (and per write to the stores)."""
    limit: int | None = None
    """Take at most this many items from the source."""
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    fetch_concurrency: int = 8
    """Image URLs downloaded at once."""
    read_ahead: int = 2
    """Batches read and validated ahead of the encoder."""
    reindex: bool = False
    """Encode every item again, whatever the ledger says (``ingest --reindex``)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must not be negative")
        if self.max_image_bytes < 1 or self.fetch_concurrency < 1:
            raise ValueError("max_image_bytes and fetch_concurrency must be >= 1")
        if self.read_ahead < 1:
            raise ValueError("read_ahead must be at least 1")


@dataclass
class _Batch:
    taken: int
    ready: list[IndexItem] = field(default_factory=list)
    failures: list[FailedItem] = field(default_factory=list)
    sources: dict[str, SourceItem] = field(default_factory=dict)
    """The source item of each ready item (failure reports name its image)."""
    unchanged: list[IndexItem] = field(default_factory=list)
    """Items an engine found in the ledger by content hash, without their bytes (``image``
    is empty): the Ray engine confirms them against the catalog or reads them after all."""
    skipped: list[str] = field(default_factory=list)
    """Ids confirmed unchanged without reading their images (counted as skipped)."""


@dataclass
class _Encoded:
    """A batch whose vectors are computed, ready to be written."""

    batch: _Batch
    encoded: EncodedBatch
    failures: list[FailedItem]


@dataclass
class _Raw:
    item: SourceItem
    data: bytes | None = None
    digest: str | None = None
    failure: FailedItem | None = None
    content_type: str | None = None
    """Sniffed where the bytes were read, when they were then dropped (``unchanged``)."""
    unchanged: bool = False
    """Hashed and found in the ledger: the bytes were not kept (``data`` is None)."""


class IngestPipeline:
    """Runs one ingest. UI-free: progress goes to ``on_progress`` after every batch."""

    def __init__(
        self,
        encoders: Sequence[Encoder],
        index: VectorIndex,
        catalog: Catalog,
        images: ImageStore,
        fetcher: ImageFetcher | None = None,
        options: IngestOptions | None = None,
        on_progress: ProgressCallback | None = None,
        lock: WriteLock | None = None,
        colours: ColourAnalyser | None = None,
    ) -> None:
        if not encoders:
            raise ValueError("ingest needs at least one encoder")
        ids = [e.id for e in encoders]
        if len(set(ids)) != len(ids):
            raise ValueError(f"encoder listed twice: {ids}")
        self._encoders = list(encoders)
        self._indexer = Indexer(index, catalog, images, lock, colours)
        self._catalog = catalog
        self._fetcher = fetcher
        self._options = options or IngestOptions()
        self._on_progress = on_progress
        self._seen_ids: set[str] = set()

    async def run(self, items: Iterable[SourceItem], total: int | None = None) -> IngestSummary:
        started = time.perf_counter()
        options = self._options
        summary = IngestSummary(encoders=[e.id for e in self._encoders])
        if options.limit is not None:
            total = options.limit if total is None else min(total, options.limit)

        source: Iterator[SourceItem] = iter(items)
        if options.limit is not None:
            source = itertools.islice(source, options.limit)
        queue: asyncio.Queue[_Batch | BaseException | None] = asyncio.Queue(options.read_ahead)
        producer = asyncio.create_task(self._produce(source, queue))
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                batch = await queue.get()
                if batch is None:
                    break
                if isinstance(batch, BaseException):
                    raise batch
                encoded = await self._encode_batch(batch)  # meanwhile the last batch is written
                if writing is not None:
                    await writing  # one batch written at a time, in order; raises its error
                writing = asyncio.create_task(self._write(encoded, summary, started, total))
            if writing is not None:
                await writing
        finally:
            # Interrupted (Ctrl-C) or failed: every batch written so far is durable and in
            # the ledger; a batch being written at that moment is redone by a rerun.
            await _cancel(writing)
            await _cancel(producer)
        summary.seconds = time.perf_counter() - started
        return summary

    # -- reading -----------------------------------------------------------------------------

    async def _produce(
        self,
        source: Iterator[SourceItem],
        queue: asyncio.Queue[_Batch | BaseException | None],
    ) -> None:
        try:
            while True:
                raws = await asyncio.to_thread(
                    _read_batch, source, self._options.batch_size, self._options.max_image_bytes
                )
                if not raws:
                    break
                await self._fetch_remote(raws)
                batch = self._validate(raws)
                await queue.put(batch)
        except Exception as exc:
            await queue.put(exc)
            return
        await queue.put(None)

    async def _fetch_remote(self, raws: list[_Raw]) -> None:
        remote = [r for r in raws if r.failure is None and isinstance(r.item.image, RemoteImage)]
        if not remote:
            return
        if self._fetcher is None:
            for raw in remote:
                raw.failure = _failed(
                    raw.item,
                    FailureReason.FETCH_FAILED,
                    "image URLs cannot be fetched: no image fetcher is configured",
                )
            return
        fetcher = self._fetcher
        limit = asyncio.Semaphore(self._options.fetch_concurrency)

        async def fetch(raw: _Raw) -> None:
            image = raw.item.image
            assert isinstance(image, RemoteImage)
            async with limit:
                try:
                    raw.data = await fetcher.fetch(image.url)
                except PayloadTooLarge as exc:
                    raw.failure = _failed(raw.item, FailureReason.TOO_LARGE, str(exc))
                except Exception as exc:  # any network failure is one item's failure
                    message = str(exc) or type(exc).__name__
                    raw.failure = _failed(raw.item, FailureReason.FETCH_FAILED, message)

        await asyncio.gather(*(fetch(r) for r in remote))

    def _validate(self, raws: list[_Raw]) -> _Batch:
        """The batch's usable items and its failures. Of items sharing an id, the first with a
        readable image is used (a broken ``shirt.png`` does not shadow ``shirt.jpg``)."""
        batch = _Batch(taken=len(raws))
        max_bytes = self._options.max_image_bytes
        for raw in raws:
            item = raw.item
            if raw.failure is None and (why := _unaddressable(item)) is not None:
                raw.failure = _failed(item, FailureReason.BAD_ROW, why)
            if raw.failure is None and item.id in self._seen_ids:
                raw.failure = _failed(
                    item,
                    FailureReason.DUPLICATE_ID,
                    f"id {item.id!r} appears earlier in the source; this one is ignored",
                )
            if raw.failure is not None:
                batch.failures.append(raw.failure)
                continue
            if raw.unchanged and raw.digest is not None and raw.content_type is not None:
                self._seen_ids.add(item.id)
                batch.sources[item.id] = item
                batch.unchanged.append(_index_item(item, b"", raw.content_type, raw.digest))
                continue
            data = raw.data or b""
            content_type = sniff_image_type(data)
            if len(data) > max_bytes:
                batch.failures.append(
                    _failed(
                        item,
                        FailureReason.TOO_LARGE,
                        f"image of {len(data):,} bytes is above the limit of {max_bytes:,}",
                    )
                )
                continue
            if content_type is None:
                message = "empty file" if not data else "not a JPEG, PNG or WebP image"
                batch.failures.append(_failed(item, FailureReason.INVALID_IMAGE, message))
                continue
            self._seen_ids.add(item.id)
            batch.sources[item.id] = item
            batch.ready.append(
                _index_item(item, data, content_type, raw.digest or content_hash(data))
            )
        return batch

    # -- encoding and writing ----------------------------------------------------------------

    async def _encode_batch(self, batch: _Batch) -> _Encoded:
        """Find what the batch needs and compute its vectors (nothing is written)."""
        plan: BatchPlan = await self._indexer.plan(
            batch.ready, self._encoders, reindex=self._options.reindex
        )
        plan.skipped += batch.skipped
        encoded = await self._vectors(plan)
        failures = list(batch.failures) + [
            _failed(batch.sources[pid], FailureReason.INVALID_IMAGE, why)
            for pid, why in encoded.broken.items()
        ]
        return _Encoded(batch, encoded, failures)

    async def _vectors(self, plan: BatchPlan) -> EncodedBatch:
        """Compute the plan's vectors (here, in a worker thread; the Ray engine spreads them
        over its encoder actors)."""
        return await self._indexer.encode(plan)

    async def _write(
        self, encoded: _Encoded, summary: IngestSummary, started: float, total: int | None
    ) -> None:
        """Write one encoded batch through the Indexer (durable when it returns), then
        report."""
        result: BatchResult = await self._indexer.write(encoded.encoded, "ingest")
        summary.seen += encoded.batch.taken
        summary.indexed += len(result.indexed)
        summary.updated += len(result.updated)
        summary.skipped_unchanged += len(result.skipped)
        summary.failed += len(encoded.failures)
        summary.failures.extend(encoded.failures)
        summary.seconds = time.perf_counter() - started
        self._report(summary, total)

    def _report(self, summary: IngestSummary, total: int | None) -> None:
        if self._on_progress is None:
            return
        self._on_progress(
            IngestProgress(
                done=summary.seen,
                total=total,
                indexed=summary.indexed,
                updated=summary.updated,
                skipped=summary.skipped_unchanged,
                failed=summary.failed,
            )
        )


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel the task unless it is done, and wait for it (its outcome is dropped)."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _index_item(item: SourceItem, data: bytes, content_type: str, digest: str) -> IndexItem:
    return IndexItem(
        id=item.id,
        name=item.name,
        image=data,
        content_type=content_type,
        digest=digest,
        description=item.description,
        tags=item.tags,
    )


def _unaddressable(item: SourceItem) -> str | None:
    """Why the API could not address this product (fetch or delete it by id, filter on one of
    its tags) or a store not hold its text, by the domain's own checks; None when it is fine.
    (The API's limits on the length of a name or description and on the number of tags bound
    what a client may send; a catalog's are its own.)"""
    try:
        check_product_id(item.id)
        check_text(item.name, "the product name")
        check_text(item.description or "", "the product description")
        for key, value in item.tags.items():
            check_tag_value(check_tag_key(key), value)
    except BadInput as exc:
        return str(exc)
    return None


def _failed(item: SourceItem, reason: FailureReason, message: str) -> FailedItem:
    return FailedItem(id=item.id, image=item.image.ref, reason=reason, message=message)


def _read_batch(source: Iterator[SourceItem], size: int, max_bytes: int) -> list[_Raw]:
    """Take up to ``size`` items and read their local images (runs in a worker thread)."""
    raws: list[_Raw] = []
    for item in itertools.islice(source, size):
        raw = _Raw(item)
        image = item.image
        if item.problem is not None:
            raw.failure = _failed(item, FailureReason.BAD_ROW, item.problem)
        elif not isinstance(image, RemoteImage):
            try:
                raw.data = image.read(max_bytes)
                raw.digest = content_hash(raw.data)
            except PayloadTooLarge as exc:
                raw.failure = _failed(item, FailureReason.TOO_LARGE, str(exc))
            except ImageUnavailable as exc:
                raw.failure = _failed(item, FailureReason.MISSING, str(exc))
        raws.append(raw)
    return raws


async def ingest(
    items: Iterable[SourceItem],
    encoders: Sequence[Encoder],
    index: VectorIndex,
    catalog: Catalog,
    images: ImageStore,
    *,
    fetcher: ImageFetcher | None = None,
    options: IngestOptions | None = None,
    on_progress: ProgressCallback | None = None,
    total: int | None = None,
) -> IngestSummary:
    """Convenience wrapper around IngestPipeline."""
    pipeline = IngestPipeline(encoders, index, catalog, images, fetcher, options, on_progress)
    return await pipeline.run(items, total)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_IMAGE_BYTES",
    "IngestOptions",
    "IngestPipeline",
    "ProgressCallback",
    "ingest",
]
