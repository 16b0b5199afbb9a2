"""The one write use case: every product write goes through the ``Indexer`` (an ingest's
batches, ``addProduct`` and ``deleteProduct`` as batches of one, ``ingest --verify`` repairs).

Writing a batch (``write``), under the ``WriteLock`` of the data home, in this order:

1. images into the ImageStore (keys derived from the full product id and the content, so a
   rerun rewrites the same key and two products never share an object),
2. vectors into the VectorIndex (metadata: the product's tags): each encoder's image vectors,
   and, for encoders with a text tower, the vectors of the products' words (name and
   description) in their own space ``product_text_space(encoder id)``; the words' vectors
   follow the product (re-encoded when its name or description changes, undone with it),
   the ledger records the image vectors only,
3. the products into the Catalog, each with the colour histogram of its photo (computed in
   ``plan`` by the ``ColourAnalyser``, independent of the encoders; kept from the stored
   product while its photo is the same; a product stored without one, written before
   histograms existed, gets one the next time ingest plans it, as an update),
4. ``VectorIndex.flush()``, then the versioned ledger (``Catalog.mark_indexed``),
5. images no product points at any more (a replaced photo) are deleted.

A failure in steps 1-4 is rolled back in reverse (ledger entries, products and vectors put back
as they were, the flush repeated, new image objects deleted), so a failed ``addProduct``
leaves nothing behind and the ledger is never ahead of the stores; when the rollback fails
too, ``IncompleteWrite`` says what remains and how to repair it. Stale images go last because
deleting one cannot be undone: a failure there leaves only unreferenced objects (listed in the
result), never a product whose photo is gone. A SIGKILL at any point leaves a state that a
rerun (or ``ingest --verify``) repairs: the ledger, written last, never claims more than the
stores hold.

Encoding happens outside the lock (``plan`` and ``encode``), so a long ingest holds it only
for its writes; every batch is flushed before the lock is released, hence before anything
is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import numpy as np

from domain.errors import FashionSearchError, InvalidImage, UpstreamUnavailable
from domain.images import content_hash, digest_image_key, legacy_digest_image_key
from domain.model import Modality, Product, product_text_space
from domain.ports import (
    Catalog,
    ColourAnalyser,
    Encoder,
    ImageStore,
    VectorIndex,
    Vectors,
    WriteLock,
    ledger_entry,
)

logger = logging.getLogger(__name__)

LEDGER_PAGE = 1000
"""Ledger entries read per call when the whole ledger is walked (bounded memory, and each
call well within the store timeout)."""
WORDS_PER_CALL = 8
"""Product texts per text-tower call, of similar lengths: a call pads its texts to the
longest, so one long description in a batch of 64 short names made all 64 cost as much as
it (sorted calls of 8: H&M texts 33 -> 18 ms CPU each, Kaggle names 5.0 -> 4.3, measured with
fashion-lite on ONNX Runtime)."""


class IncompleteWrite(UpstreamUnavailable):
    """A write failed and could not be fully undone: the message says what remains and how
    to repair it (retry the same write, or ``fashion-search ingest --verify``)."""


class NoLock:
    """A WriteLock that holds nothing: stores that serialise writes themselves, and tests."""

    @asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        yield

    def hold(self, purpose: str) -> AbstractAsyncContextManager[None]:
        return self._held()


@dataclass(frozen=True)
class IndexItem:
    """A product with its validated image (format sniffed, content hashed), to be indexed."""

    id: str
    name: str
    image: bytes
    content_type: str
    digest: str
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def product(self, key: str, colour: bytes | None = None) -> Product:
        return Product(
            id=self.id,
            name=self.name,
            description=self.description,
            tags=self.tags,
            image_keys=(key,),
            colour=colour,
        )


@dataclass
class PlannedItem:
    item: IndexItem
    key: str
    needs: list[str]
    """Encoders that must encode this image (the others have it in the ledger)."""
    colour: bytes | None = None
    """The colour histogram of the image (``domain.colour``)."""

    @property
    def product(self) -> Product:
        return self.item.product(self.key, self.colour)


@dataclass
class BatchPlan:
    """What a batch must write, decided from the stores before encoding (nothing written)."""

    encoders: list[Encoder]
    encode: list[PlannedItem]
    """Items needing new vectors."""
    retag: list[PlannedItem]
    """Same image, new name, description or tags: their stored vectors are re-tagged."""
    stored: dict[str, dict[str, Vectors]]
    """The stored vectors of the ``retag`` items, per encoder."""
    skipped: list[str]
    """Ids whose image, texts and tags are indexed already."""
    reworded: list[PlannedItem] = field(default_factory=list)
    """``retag`` items whose name or description changed (their words are encoded again)."""


@dataclass
class EncodedBatch:
    plan: BatchPlan
    vectors: dict[str, dict[str, Vectors]]
    """Encoder id -> product id -> vector."""
    broken: dict[str, str]
    """Ids whose image an encoder could not decode -> why (they are not written)."""
    text_vectors: dict[str, dict[str, Vectors]] = field(default_factory=dict)
    """Product-text space -> product id -> vector of the product's words."""

    @property
    def writable(self) -> list[PlannedItem]:
        return [p for p in self.plan.encode if p.item.id not in self.broken]


@dataclass(frozen=True)
class BatchResult:
    indexed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    broken: Mapping[str, str] = field(default_factory=dict)
    orphaned_images: tuple[str, ...] = ()
    """Stale image keys that could not be deleted (nothing points at them)."""


@dataclass(frozen=True)
class RemovalResult:
    removed: tuple[str, ...] = ()
    """Ids that existed and are now gone from every store."""


@dataclass
class _Before:
    """What the stores held for a batch's ids before it was written (for the rollback)."""

    products: dict[str, Product]
    ledger: dict[str, dict[str, str]]
    vectors: dict[str, dict[str, Vectors]]


UNDO_ORDER = ("forget ledger", "products", "vectors", "flush", "ledger", "images")
"""The order a rollback undoes things in: the ledger first forgets what the batch recorded
(a ledger behind the stores is harmless: a rerun redoes the item), products and vectors are
put back and flushed, and only then are the previous ledger entries recorded again (never
ahead of the stores); new image objects go last, once no product points at them."""


@dataclass
class _Journal:
    """The steps done so far, undone (in UNDO_ORDER) when a later one fails."""

    step: str = ""
    undo: list[tuple[str, str, Callable[[], Awaitable[None]]]] = field(default_factory=list)

    def did(self, kind: str, what: str, action: Callable[[], Awaitable[None]]) -> None:
        assert kind in UNDO_ORDER, kind
        self.undo.append((kind, what, action))

    async def roll_back(self, flush: Callable[[], Awaitable[None]]) -> list[str]:
        """Undo every step; what could not be undone."""
        if any(kind == "vectors" for kind, _, _ in self.undo):
            self.did("flush", "the vector index flush", flush)
        remaining: list[str] = []
        failed: set[str] = set()
        for kind in UNDO_ORDER:
            for this_kind, what, action in reversed(self.undo):
                if this_kind != kind:
                    continue
                if kind == "images" and "products" in failed:
                    # a product write that timed out may still land: keep its image, so
                    # the product is then whole but for its vectors (a retry or `ingest
                    # --verify` re-encodes it from that image)
                    remaining.append(f"{what} (kept: the product rows may still be written)")
                    continue
                try:
                    await action()
                except Exception as exc:
                    failed.add(kind)
                    remaining.append(f"{what} ({_reason(exc)})")
        return remaining


class Indexer:
    """Writes batches of products to the three stores, crash-safe (see the module doc)."""

    def __init__(
        self,
        index: VectorIndex,
        catalog: Catalog,
        images: ImageStore,
        lock: WriteLock | None = None,
        colours: ColourAnalyser | None = None,
    ) -> None:
        """``colours``: None stores no colour histograms (and keeps those stored)."""
        self._index = index
        self._catalog = catalog
        self._images = images
        self._lock: WriteLock = lock or NoLock()
        self._colours = colours

    # -- the whole use case ------------------------------------------------------------------

    async def index_batch(
        self,
        items: Sequence[IndexItem],
        encoders: Sequence[Encoder],
        *,
        purpose: str = "ingest",
        reindex: bool = False,
    ) -> BatchResult:
        """Plan, encode and write one batch (an ingest overlaps these steps itself)."""
        plan = await self.plan(items, encoders, reindex=reindex)
        return await self.write(await self.encode(plan), purpose)

    # -- before the lock: what to write, and the vectors -------------------------------------

    async def plan(
        self, items: Sequence[IndexItem], encoders: Sequence[Encoder], *, reindex: bool = False
    ) -> BatchPlan:
        """Read the batch's products and ledger entries (one round trip each) and decide what
        each item needs. ``reindex`` ignores the ledger: every item is encoded again."""
        encoders = list(encoders)
        ids = [i.id for i in items]
        existing = await self._catalog.get_many(ids) if ids else {}
        ledger = (
            await self._catalog.ledger_entries([e.id for e in encoders], ids)
            if ids and not reindex
            else {}
        )
        encode: list[PlannedItem] = []
        unchanged: list[PlannedItem] = []
        for item in items:
            prior = existing.get(item.id)
            planned = PlannedItem(item, _key_for(item, prior), [])
            if prior is not None and prior.primary_image_key == planned.key:
                planned.colour = prior.colour  # the same photo (keys name the content)
            planned.needs = [
                e.id
                for e in encoders
                if ledger.get(e.id, {}).get(item.id) != ledger_entry(e, item.digest)
            ]
            (encode if planned.needs else unchanged).append(planned)
        await self._add_colours([*encode, *unchanged])
        changed = [p for p in unchanged if existing.get(p.item.id) != p.product]
        stored = await self._stored_vectors(encoders, changed)
        # an item whose vector is missing for an encoder is encoded again, for every encoder
        lost = [p for p in changed if any(p.item.id not in stored[e.id] for e in encoders)]
        for planned in lost:
            planned.needs = [e.id for e in encoders]
        encode += lost
        retag = [p for p in changed if not p.needs]
        skipped = [p.item.id for p in unchanged if p not in changed]
        reworded = [p for p in retag if _words_changed(p.item, existing.get(p.item.id))]
        return BatchPlan(encoders, encode, retag, stored, skipped, reworded)

    async def _add_colours(self, planned: Sequence[PlannedItem]) -> None:
        """The colour histograms the items lack (new photos, products stored without one),
        in a worker thread; an image the analyser cannot read keeps None."""
        missing = [p for p in planned if p.colour is None]
        if self._colours is None or not missing:
            return
        histograms = await asyncio.to_thread(
            self._colours.colour_histograms, [p.item.image for p in missing]
        )
        if len(histograms) != len(missing):
            raise FashionSearchError(
                f"the colour analyser returned {len(histograms)} histograms for "
                f"{len(missing)} images"
            )
        for item, histogram in zip(missing, histograms, strict=True):
            item.colour = histogram

    async def _stored_vectors(
        self, encoders: Sequence[Encoder], changed: Sequence[PlannedItem]
    ) -> dict[str, dict[str, Vectors]]:
        if not changed:
            return {e.id: {} for e in encoders}
        ids = [p.item.id for p in changed]
        return {e.id: await self._index.fetch(e.id, ids) for e in encoders}

    async def encode(self, plan: BatchPlan) -> EncodedBatch:
        """Compute the vectors the plan needs (``encode_plan``)."""
        return await encode_plan(plan)

    # -- under the lock: the writes ----------------------------------------------------------

    async def write(self, encoded: EncodedBatch, purpose: str = "ingest") -> BatchResult:
        """Write an encoded batch in the crash-safe order, holding the home's write lock;
        the batch is durable (flushed, ledger recorded) when this returns."""
        plan = encoded.plan
        items = encoded.writable
        result = BatchResult(
            indexed=tuple(p.item.id for p in items),
            updated=tuple(p.item.id for p in plan.retag),
            skipped=tuple(plan.skipped),
            broken=dict(encoded.broken),
        )
        if not items and not plan.retag:
            return result
        async with self._lock.hold(purpose):
            before = await self._before(encoded)
            journal = _Journal()
            try:
                await self._write_steps(encoded, before, journal)
            except Exception as exc:
                await self._fail(purpose, [p.item.id for p in items + plan.retag], journal, exc)
            orphaned = await self._delete_stale_images(items, before.products)
        if orphaned:
            logger.warning("%s: could not delete replaced images %s", purpose, orphaned)
        return BatchResult(
            result.indexed, result.updated, result.skipped, result.broken, tuple(orphaned)
        )

    async def _before(self, encoded: EncodedBatch) -> _Before:
        """The batch's products, ledger entries and (for products whose photo is replaced)
        vectors as they are now, read under the lock."""
        plan = encoded.plan
        ids = [p.item.id for p in encoded.writable + plan.retag]
        products = await self._catalog.get_many(ids)
        ledger = await self._catalog.ledger_entries(list(encoded.vectors), ids)
        replaced = [p.item.id for p in encoded.writable if p.item.id in products]
        vectors: dict[str, dict[str, Vectors]] = {e: {} for e in encoded.vectors}
        if replaced:
            for encoder_id in encoded.vectors:
                vectors[encoder_id] = await self._index.fetch(encoder_id, replaced)
        for space, rows in encoded.text_vectors.items():
            vectors[space] = await self._index.fetch(space, list(rows))
        for encoder_id, stored in plan.stored.items():
            vectors.setdefault(encoder_id, {}).update(stored)
        return _Before(products, ledger, vectors)

    async def _write_steps(self, encoded: EncodedBatch, before: _Before, journal: _Journal) -> None:
        plan, items = encoded.plan, encoded.writable
        by_id = {e.id: e for e in plan.encoders}
        # 1. images (re-tagged items too: cheap, and repairs a lost object)
        journal.step = "writing images"
        new_keys = [
            p.key
            for p in items + plan.retag
            if p.key not in _keys_of(before.products.get(p.item.id))
        ]
        journal.did("images", "new image objects", lambda: self._delete_images(new_keys))
        for planned in items + plan.retag:
            await self._images.put(planned.key, planned.item.image, planned.item.content_type)
        # 2. vectors
        journal.step = "writing vectors"
        new = {p.item.id: p for p in items}
        for encoder_id, rows in encoded.vectors.items():
            ids = [pid for pid in rows if pid in new]
            journal.did(
                "vectors", f"vectors of {encoder_id}", self._restorer(encoder_id, ids, before)
            )
            await self._upsert(encoder_id, ids, rows, [new[i].item.tags for i in ids])
        retagged = {p.item.id: p.item.tags for p in plan.retag}
        for encoder_id, stored in plan.stored.items():
            ids = [pid for pid in stored if pid in retagged]
            journal.did(
                "vectors", f"vectors of {encoder_id}", self._restorer(encoder_id, ids, before)
            )
            await self._upsert(encoder_id, ids, stored, [retagged[i] for i in ids])
        tags_of = {p.item.id: p.item.tags for p in items + plan.retag}
        for space, rows in encoded.text_vectors.items():
            ids = list(rows)
            journal.did("vectors", f"vectors of {space}", self._restorer(space, ids, before))
            await self._upsert(space, ids, rows, [tags_of[i] for i in ids])
        # 3. products
        journal.step = "writing products"
        products = [p.product for p in items + plan.retag]
        journal.did(
            "products", "products", lambda: self._restore_products(products, before.products)
        )
        await self._catalog.upsert_many(products)
        # 4. flush, then the ledger
        journal.step = "flushing the vector index"
        await self._index.flush()
        journal.step = "recording the ledger"
        for encoder_id in encoded.vectors:
            entries = {
                p.item.id: ledger_entry(by_id[encoder_id], p.item.digest)
                for p in items
                if encoder_id in p.needs
            }
            self._journal_ledger(journal, encoder_id, list(entries), before)
            await self._catalog.mark_indexed(encoder_id, entries)

    async def _upsert(
        self,
        encoder_id: str,
        ids: Sequence[str],
        rows: Mapping[str, Vectors],
        tags: Sequence[Mapping[str, str]],
    ) -> None:
        if ids:
            matrix = np.stack([rows[i] for i in ids]).astype(np.float32)
            await self._index.upsert(encoder_id, ids, matrix, tags)

    def _restorer(
        self, encoder_id: str, ids: Sequence[str], before: _Before
    ) -> Callable[[], Awaitable[None]]:
        """Put back the vectors these ids had (with their products' tags), delete the rest."""

        async def restore() -> None:
            previous = before.vectors.get(encoder_id, {})
            back = [i for i in ids if i in previous]
            gone = [i for i in ids if i not in previous]
            if gone:
                await self._index.delete(gone, encoder_id)
            tags = [_tags_of(before.products.get(i)) for i in back]
            await self._upsert(encoder_id, back, previous, tags)

        return restore

    async def _restore_products(
        self, written: Sequence[Product], previous: Mapping[str, Product]
    ) -> None:
        """Put back the previous version of each written product; delete those that did not
        exist before."""
        back = [previous[p.id] for p in written if p.id in previous]
        if back:
            await self._catalog.upsert_many(back)
        for product in written:
            if product.id not in previous:
                await self._catalog.delete(product.id)

    def _journal_ledger(
        self, journal: _Journal, encoder_id: str, ids: Sequence[str], before: _Before
    ) -> None:
        """Undo of a ledger write: forget the ids' entries, and later (once the stores are
        back) record the entries they had before."""
        previous = {i: e for i, e in before.ledger.get(encoder_id, {}).items() if i in ids}

        async def forget() -> None:
            await self._catalog.forget_indexed(ids, encoder_id)

        async def record() -> None:
            await self._catalog.mark_indexed(encoder_id, previous)

        journal.did("forget ledger", f"ledger entries of {encoder_id}", forget)
        if previous:
            journal.did("ledger", f"previous ledger entries of {encoder_id}", record)

    async def _delete_images(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self._images.delete(key)

    async def _delete_stale_images(
        self, items: Sequence[PlannedItem], previous: Mapping[str, Product]
    ) -> list[str]:
        """Delete the images that replaced photos leave unreferenced; the keys that could not
        be deleted."""
        orphaned: list[str] = []
        for planned in items:
            for stale in _keys_of(previous.get(planned.item.id)):
                if stale == planned.key:
                    continue
                try:
                    await self._images.delete(stale)
                except Exception:
                    orphaned.append(stale)
        return orphaned

    async def _fail(
        self, purpose: str, ids: Sequence[str], journal: _Journal, exc: Exception
    ) -> None:
        """Roll the batch back, then raise: the original error when everything was undone,
        IncompleteWrite naming what remains otherwise."""
        remaining = await journal.roll_back(self._index.flush)
        if not remaining:
            raise exc
        raise IncompleteWrite(
            f"{purpose} of {_ids_text(ids)} failed while {journal.step} ({_reason(exc)}) and "
            f"could not be fully undone: {'; '.join(remaining)} may be left. Retry the same "
            "write, or run `fashion-search ingest --verify` to repair."
        ) from exc

    # -- removing ----------------------------------------------------------------------------

    async def remove(self, ids: Sequence[str], purpose: str = "deleteProduct") -> RemovalResult:
        """Remove products from every store: ledger, vectors (flushed) and product rows first,
        images last. A failure puts back what was removed, so a product is either gone from
        everything or still whole and a retry finishes the job; deleting an image cannot be
        undone, so a product whose images could not all be deleted is put back alone."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return RemovalResult()
        async with self._lock.hold(purpose):
            products = await self._catalog.get_many(ids)
            encoder_ids = await self._index.encoder_ids()
            before = _Before(
                products,
                await self._catalog.ledger_entries(encoder_ids, ids),
                {e: await self._index.fetch(e, ids) for e in encoder_ids},
            )
            journal = self._removal_journal(ids, encoder_ids, before)
            try:
                await self._remove_rows(ids, journal)
            except Exception as exc:
                await self._fail(purpose, ids, journal, exc)
            kept, error = await self._delete_images_of(list(products.values()))
            if error is not None:
                journal = self._removal_journal(kept, encoder_ids, before)
                journal.step = "deleting images"
                undone = UpstreamUnavailable(
                    f"{purpose} of {_ids_text(kept)} was undone: the image store failed "
                    f"({_reason(error)}). The product is unchanged, though a delete the store "
                    f"received may still remove its image: retry {purpose}."
                )
                undone.__cause__ = error
                await self._fail(purpose, kept, journal, undone)
        return RemovalResult(tuple(pid for pid in ids if pid in products))

    def _removal_journal(
        self, ids: Sequence[str], encoder_ids: Sequence[str], before: _Before
    ) -> _Journal:
        """How to put these products back as they were (every undo puts back the state read
        before the removal, so undoing a step that did not happen changes nothing)."""
        journal = _Journal()
        for encoder_id in encoder_ids:
            self._journal_ledger(journal, encoder_id, ids, before)
            stored = [i for i in before.vectors.get(encoder_id, {}) if i in ids]
            restore = self._restorer(encoder_id, stored, before)
            journal.did("vectors", f"vectors of {encoder_id}", restore)
        existing = [before.products[i] for i in ids if i in before.products]
        previous = {p.id: p for p in existing}
        journal.did("products", "products", lambda: self._restore_products(existing, previous))
        return journal

    async def _remove_rows(self, ids: Sequence[str], journal: _Journal) -> None:
        journal.step = "forgetting the ledger"
        await self._catalog.forget_indexed(ids)
        journal.step = "deleting vectors"
        await self._index.delete(ids)
        journal.step = "deleting products"
        for pid in ids:
            await self._catalog.delete(pid)
        journal.step = "flushing the vector index"
        await self._index.flush()

    async def _delete_images_of(
        self, products: Sequence[Product]
    ) -> tuple[list[str], Exception | None]:
        """Delete the products' images; the ids of those whose images could not all be
        deleted, and the first error."""
        kept: list[str] = []
        error: Exception | None = None
        for product in products:
            try:
                await self._delete_images(product.image_keys)
            except Exception as exc:
                kept.append(product.id)
                error = error or exc
        return kept, error


async def encode_plan(plan: BatchPlan) -> EncodedBatch:
    """Compute the vectors the plan needs, in a worker thread. One bad image does not sink
    its batch: when a batch call rejects an image, the batch is encoded one by one. Needs no
    store, so an ingest engine can run it next to its encoders (the Ray engine's actors)."""
    vectors: dict[str, dict[str, Vectors]] = {}
    broken: dict[str, str] = {}
    for encoder in plan.encoders:
        group = [p for p in plan.encode if encoder.id in p.needs and p.item.id not in broken]
        if group:
            vectors[encoder.id] = await encode_image_group(encoder, group, broken)
    text_vectors: dict[str, dict[str, Vectors]] = {}
    for encoder in plan.encoders:
        # the words go with the image vectors this encoder writes, and with new words
        words = [
            p
            for p in [*plan.encode, *plan.reworded]
            if p.item.id not in broken and (encoder.id in p.needs or p in plan.reworded)
        ]
        if Modality.TEXT in encoder.modalities and words:
            text_vectors[product_text_space(encoder.id)] = await encode_words(encoder, words)
    return EncodedBatch(plan, vectors, broken, text_vectors)


async def iter_ledger(
    catalog: Catalog, encoder_id: str, page_size: int = LEDGER_PAGE
) -> AsyncIterator[dict[str, str]]:
    """The ledger of one encoder, a page at a time in product id order."""
    after: str | None = None
    while True:
        page = await catalog.ledger_page(encoder_id, after, page_size)
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        after = max(page)


def _key_for(item: IndexItem, existing: Product | None) -> str:
    return stored_image_key(item.id, content_hash(item.image), item.content_type, existing)


def stored_image_key(
    product_id: str, digest: str, content_type: str, existing: Product | None
) -> str:
    """The key of a product's image of this content hash; a product stored under the old key
    scheme with this very image keeps its key (existing homes need no migration, and nothing
    is rewritten)."""
    if existing is not None:
        legacy = legacy_digest_image_key(product_id, digest, content_type)
        if legacy in existing.image_keys:
            return legacy
    return digest_image_key(product_id, digest, content_type)


def _keys_of(product: Product | None) -> tuple[str, ...]:
    return product.image_keys if product is not None else ()


def _tags_of(product: Product | None) -> Mapping[str, str]:
    return product.tags if product is not None else {}


async def encode_image_group(
    encoder: Encoder, group: Sequence[PlannedItem], broken: dict[str, str]
) -> dict[str, Vectors]:
    """Vectors by product id; images the encoder rejects are recorded in ``broken``."""
    try:
        matrix = await asyncio.to_thread(encoder.encode_images, [p.item.image for p in group])
        _check_shape(encoder, matrix, len(group))
        return {p.item.id: matrix[i] for i, p in enumerate(group)}
    except InvalidImage:
        pass
    rows: dict[str, Vectors] = {}
    for planned in group:
        try:
            single = await asyncio.to_thread(encoder.encode_images, [planned.item.image])
        except InvalidImage as exc:
            broken[planned.item.id] = str(exc) or "the encoder cannot decode this image"
            continue
        _check_shape(encoder, single, 1)
        rows[planned.item.id] = single[0]
    return rows


def _words_changed(item: IndexItem, existing: Product | None) -> bool:
    if existing is None:
        return True
    return (item.name, item.description) != (existing.name, existing.description)


def product_words(product: IndexItem) -> str:
    """What the text tower reads of a product: its name and description."""
    return ". ".join(t.strip() for t in (product.name, product.description or "") if t.strip())


async def encode_words(encoder: Encoder, items: Sequence[PlannedItem]) -> dict[str, Vectors]:
    """The vectors of the items' words (items without words have none), shortest texts
    first in calls of WORDS_PER_CALL (see there). A text is encoded once however many items
    share it (an H&M product's colour variants share name and description; the text tower
    costs about as much per product as the image tower)."""
    sharing: dict[str, list[str]] = {}
    for planned in items:
        text = product_words(planned.item)
        if text:
            sharing.setdefault(text, []).append(planned.item.id)
    texts = sorted(sharing, key=len)
    vectors: dict[str, Vectors] = {}
    for start in range(0, len(texts), WORDS_PER_CALL):
        chunk = texts[start : start + WORDS_PER_CALL]
        matrix = await asyncio.to_thread(encoder.encode_texts, chunk)
        _check_shape(encoder, matrix, len(chunk))
        vectors.update((pid, matrix[i]) for i, text in enumerate(chunk) for pid in sharing[text])
    return vectors


def _check_shape(encoder: Encoder, matrix: Vectors, rows: int) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise FashionSearchError(
            f"encoder {encoder.id!r} returned an array of shape {matrix.shape} for {rows} images"
        )


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _ids_text(ids: Sequence[str], shown: int = 3) -> str:
    listed = ", ".join(repr(i) for i in ids[:shown])
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{listed}{more}"
