"""The ingest pipeline: source items in, images + vectors + products out, on the domain ports.

Per batch: read and validate the image bytes (sniffed format, size limit), skip items whose
image is already indexed for every requested encoder (the catalog's ledger; for an encoder
with a ``version``, by these weights: new weights encode every product again), encode the rest
in a worker thread, then write in the order that keeps a crash harmless:

1. images into the ImageStore (keys derived from the content, so a rerun rewrites the same key),
2. vectors into the VectorIndex (metadata: the product's tags),
3. stale images of products whose photo changed are deleted, then the products are upserted,
4. ``VectorIndex.flush()`` and only then ``Catalog.mark_indexed``.

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
import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from domain.errors import FashionSearchError, InvalidImage, PayloadTooLarge
from domain.images import content_hash, image_key, sniff_image_type
from domain.model import Product
from domain.ports import (
    Catalog,
    Encoder,
    ImageFetcher,
    ImageStore,
    VectorIndex,
    Vectors,
    ledger_entry,
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
    commit_every: int = 1024
    """Flush the index and record the ledger once at least this many items are pending (and
    at the end). A crash loses at most this much finished work; a smaller value flushes a
    large index more often."""
    fetch_concurrency: int = 8
    """Image URLs downloaded at once."""
    read_ahead: int = 2
    """Batches read and validated ahead of the encoder."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must not be negative")
        if self.max_image_bytes < 1 or self.commit_every < 1 or self.fetch_concurrency < 1:
            raise ValueError("max_image_bytes, commit_every and fetch_concurrency must be >= 1")
        if self.read_ahead < 1:
            raise ValueError("read_ahead must be at least 1")


@dataclass
class _Ready:
    """An item whose image bytes were read and validated."""

    item: SourceItem
    data: bytes
    content_type: str
    digest: str
    key: str
    needs: list[str]
    """Encoders that do not have this image of this product yet."""

    def product(self) -> Product:
        return Product(
            id=self.item.id,
            name=self.item.name,
            description=self.item.description,
            tags=self.item.tags,
            image_keys=(self.key,),
        )


@dataclass
class _Batch:
    taken: int
    ready: list[_Ready] = field(default_factory=list)
    failures: list[FailedItem] = field(default_factory=list)


@dataclass
class _Encoded:
    """A batch whose vectors are computed, ready to be written."""

    batch: _Batch
    existing: dict[str, Product]
    todo: list[_Ready]
    """Items to write with new vectors."""
    changed: list[_Ready]
    """Items with the same image and new texts or tags: their stored vectors are re-tagged."""
    refreshed: dict[str, dict[str, Vectors]]
    vectors: dict[str, dict[str, Vectors]]
    failures: list[FailedItem]
    skipped: int


@dataclass
class _Raw:
    item: SourceItem
    data: bytes | None = None
    digest: str | None = None
    failure: FailedItem | None = None


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
    ) -> None:
        if not encoders:
            raise ValueError("ingest needs at least one encoder")
        ids = [e.id for e in encoders]
        if len(set(ids)) != len(ids):
            raise ValueError(f"encoder listed twice: {ids}")
        self._encoders = list(encoders)
        self._index = index
        self._catalog = catalog
        self._images = images
        self._fetcher = fetcher
        self._options = options or IngestOptions()
        self._on_progress = on_progress
        self._ledgers: dict[str, dict[str, str]] = {}
        self._pending: dict[str, dict[str, str]] = {}
        self._pending_items = 0
        self._seen_ids: set[str] = set()

    async def run(self, items: Iterable[SourceItem], total: int | None = None) -> IngestSummary:
        started = time.perf_counter()
        options = self._options
        summary = IngestSummary(encoders=[e.id for e in self._encoders])
        if options.limit is not None:
            total = options.limit if total is None else min(total, options.limit)
        for encoder in self._encoders:
            self._ledgers[encoder.id] = await self._catalog.indexed_hashes(encoder.id)
            self._pending[encoder.id] = {}

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
            await self._commit()
        except asyncio.CancelledError:
            # Interrupted (Ctrl-C): every pending item went through all its writes (a batch
            # being written when the run was cancelled is not pending yet), so keep that
            # work. A crash (any other exception) records nothing: rerunning redoes it.
            await _cancel(writing)
            with contextlib.suppress(Exception):
                await self._commit()
            raise
        finally:
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
        batch = _Batch(taken=len(raws))
        max_bytes = self._options.max_image_bytes
        for raw in raws:
            item = raw.item
            if raw.failure is None and item.id in self._seen_ids:
                raw.failure = _failed(
                    item,
                    FailureReason.DUPLICATE_ID,
                    f"id {item.id!r} appears earlier in the source; the first one was kept",
                )
            if raw.failure is not None:
                batch.failures.append(raw.failure)
                continue
            self._seen_ids.add(item.id)
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
            digest = raw.digest or content_hash(data)
            needs = [
                e.id
                for e in self._encoders
                if self._ledgers[e.id].get(item.id) != ledger_entry(e, digest)
            ]
            batch.ready.append(
                _Ready(
                    item=item,
                    data=data,
                    content_type=content_type,
                    digest=digest,
                    key=image_key(item.id, data, content_type),
                    needs=needs,
                )
            )
        return batch

    # -- encoding and writing ----------------------------------------------------------------

    async def _encode_batch(self, batch: _Batch) -> _Encoded:
        """Find what the batch needs and compute its vectors (nothing is written)."""
        failures = list(batch.failures)
        ids = [r.item.id for r in batch.ready]
        existing = await self._catalog.get_many(ids) if ids else {}

        todo = [r for r in batch.ready if r.needs]
        unchanged = [r for r in batch.ready if not r.needs]
        # Same image, new name/description/tags: update the product and the vectors' metadata
        # without encoding again (an item whose vector is missing is encoded after all).
        changed = [r for r in unchanged if existing.get(r.item.id) != r.product()]
        refreshed = await self._stored_vectors(changed)
        todo += [r for r in changed if r.needs]
        changed = [r for r in changed if not r.needs]
        skipped = sum(1 for r in unchanged if not r.needs) - len(changed)

        vectors: dict[str, dict[str, Vectors]] = {}
        broken: dict[str, str] = {}
        for encoder in self._encoders:
            group = [r for r in todo if encoder.id in r.needs and r.item.id not in broken]
            if group:
                vectors[encoder.id] = await self._encode(encoder, group, broken)
        failures += [
            _failed(r.item, FailureReason.INVALID_IMAGE, broken[r.item.id])
            for r in todo
            if r.item.id in broken
        ]
        todo = [r for r in todo if r.item.id not in broken]
        return _Encoded(batch, existing, todo, changed, refreshed, vectors, failures, skipped)

    async def _write(
        self, encoded: _Encoded, summary: IngestSummary, started: float, total: int | None
    ) -> None:
        """Write one encoded batch to the stores (in the crash-safe order), then report."""
        todo, changed, existing = encoded.todo, encoded.changed, encoded.existing
        # 1. images (changed items too: cheap, and repairs a lost object)
        for r in todo + changed:
            await self._images.put(r.key, r.data, r.content_type)
        # 2. vectors
        new = {r.item.id: r for r in todo}
        for encoder_id, rows in encoded.vectors.items():
            pids = [p for p in rows if p in new]
            if pids:
                await self._index.upsert(
                    encoder_id,
                    pids,
                    np.stack([rows[p] for p in pids]).astype(np.float32),
                    [new[p].item.tags for p in pids],
                )
        retagged = {r.item.id: r.item.tags for r in changed}
        for encoder_id, stored in encoded.refreshed.items():
            pids = [p for p in stored if p in retagged]
            if pids:
                await self._index.upsert(
                    encoder_id,
                    pids,
                    np.stack([stored[p] for p in pids]).astype(np.float32),
                    [retagged[p] for p in pids],
                )
        # 3. images no product will point at any more, then the products
        for r in todo:
            previous = existing.get(r.item.id)
            for stale in previous.image_keys if previous else ():
                if stale != r.key:
                    await self._images.delete(stale)
        products = [r.product() for r in todo + changed]
        if products:
            await self._catalog.upsert_many(products)
        # 4. the ledger, after a flush (see _commit)
        by_id = {encoder.id: encoder for encoder in self._encoders}
        for r in todo:
            for encoder_id in r.needs:
                self._pending[encoder_id][r.item.id] = ledger_entry(by_id[encoder_id], r.digest)
        self._pending_items += len(todo)
        if self._pending_items >= self._options.commit_every:
            await self._commit()

        summary.seen += encoded.batch.taken
        summary.indexed += len(todo)
        summary.updated += len(changed)
        summary.skipped_unchanged += encoded.skipped
        summary.failed += len(encoded.failures)
        summary.failures.extend(encoded.failures)
        summary.seconds = time.perf_counter() - started
        self._report(summary, total)

    async def _stored_vectors(self, changed: list[_Ready]) -> dict[str, dict[str, Vectors]]:
        """The vectors already indexed for these items, per encoder; an item with no vector
        for an encoder gets that encoder added to its ``needs``."""
        stored: dict[str, dict[str, Vectors]] = {}
        if not changed:
            return stored
        for encoder in self._encoders:
            found = await self._index.fetch(encoder.id, [r.item.id for r in changed])
            stored[encoder.id] = found
            if any(r.item.id not in found for r in changed):
                missing = [r for r in changed if r.item.id not in found]
                for r in missing:  # re-encode for every encoder, so all get the new tags
                    r.needs = [e.id for e in self._encoders]
        return stored

    async def _encode(
        self, encoder: Encoder, group: list[_Ready], broken: dict[str, str]
    ) -> dict[str, Vectors]:
        """Vectors by product id. One bad image must not sink its batch: when the batch call
        rejects an image, encode the batch one by one and record the culprits in ``broken``."""
        try:
            matrix = await asyncio.to_thread(encoder.encode_images, [r.data for r in group])
            _check_shape(encoder, matrix, len(group))
            return {r.item.id: matrix[i] for i, r in enumerate(group)}
        except InvalidImage:
            pass
        rows: dict[str, Vectors] = {}
        for r in group:
            try:
                single = await asyncio.to_thread(encoder.encode_images, [r.data])
            except InvalidImage as exc:
                broken[r.item.id] = str(exc) or "the encoder cannot decode this image"
                continue
            _check_shape(encoder, single, 1)
            rows[r.item.id] = single[0]
        return rows

    async def _commit(self) -> None:
        """Make the stores durable, then record what is now indexed."""
        if not any(self._pending.values()):
            self._pending_items = 0
            return
        await self._index.flush()
        for encoder_id, hashes in self._pending.items():
            if hashes:
                await self._catalog.mark_indexed(encoder_id, dict(hashes))
                self._ledgers[encoder_id].update(hashes)
                hashes.clear()
        self._pending_items = 0

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


def _check_shape(encoder: Encoder, matrix: Vectors, rows: int) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise FashionSearchError(
            f"encoder {encoder.id!r} returned an array of shape {matrix.shape} for {rows} images"
        )


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
