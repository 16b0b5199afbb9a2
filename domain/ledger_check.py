"""The ledger checked against the stores (``fashion-search ingest --verify``), and the quick
check a plain ingest makes before trusting the ledger.

The ledger says which image of each product is indexed by which encoder; ingest skips what it
records. If a store was replaced or lost data (a new Pinecone index or S3 bucket, a deleted
vectors folder, a crash in a window a rerun cannot see) the ledger says "done" about work the
stores do not hold. ``LedgerCheck`` walks the catalog and the ledger in pages (bounded memory,
each call short) and reports each kind of disagreement; ``repair`` re-encodes what it can
from the stored images through the Indexer and forgets ledger entries nothing backs, so the
next ingest of the source redoes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from domain.images import content_hash, sniff_image_type
from domain.indexer import Indexer, IndexItem, iter_ledger
from domain.model import Product
from domain.ports import (
    Catalog,
    Encoder,
    ImageStore,
    ListableImageStore,
    VectorIndex,
    indexed_by_current_version,
)

CATALOG_PAGE = 500
"""Products checked per round (one ledger read and one vector fetch per encoder each)."""
IMAGE_CHECKS_AT_ONCE = 16
LEDGER_SAMPLE = 20
"""Ledger entries whose images the quick check looks for."""

KINDS = {
    "ledger_without_product": "ledger entries of products the catalog does not have",
    "ledger_without_vector": "ledger entries without a vector in the index",
    "product_not_in_ledger": "products not recorded as indexed",
    "ledger_other_weights": "products indexed with other encoder weights",
    "product_without_vector": "products without a vector",
    "vectors_without_product": "vectors of products the catalog does not have (count)",
}
"""Each kind of disagreement between the ledger of one encoder and the stores, as the report
names it."""
MISSING_IMAGE = "products whose image object is missing"
UNREFERENCED_IMAGE = "image objects no product points at"
EXAMPLES = 10


@dataclass
class EncoderFindings:
    """What disagrees for one encoder: kind -> product ids (``vectors_without_product`` is a
    count: the index cannot list its ids)."""

    ids: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    vectors_without_product: int = 0

    def count(self, kind: str) -> int:
        if kind == "vectors_without_product":
            return self.vectors_without_product
        return len(self.ids[kind])


@dataclass
class CheckReport:
    products: int = 0
    by_encoder: dict[str, EncoderFindings] = field(default_factory=dict)
    missing_images: list[str] = field(default_factory=list)
    unreferenced_images: int = 0
    """Image objects no product points at (None of them is deleted: one may belong to a
    write in progress); counted when the image store can list its keys."""
    unreferenced_examples: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return (
            not self.missing_images
            and not self.unreferenced_images
            and all(f.count(k) == 0 for f in self.by_encoder.values() for k in KINDS)
        )

    def to_reencode(self) -> set[str]:
        """Products to encode again from their stored image."""
        kinds = ("ledger_without_vector", "product_not_in_ledger", "ledger_other_weights")
        wanted = {pid for f in self.by_encoder.values() for k in kinds for pid in f.ids[k]}
        return wanted - set(self.missing_images)


@dataclass(frozen=True)
class RepairReport:
    reencoded: int
    forgotten: int
    """Ledger entries dropped: of unknown products, and of products whose image is missing
    (an ingest of the source encodes those again)."""
    failed: dict[str, str]


class LedgerCheck:
    def __init__(
        self, index: VectorIndex, catalog: Catalog, images: ImageStore, indexer: Indexer
    ) -> None:
        self._index = index
        self._catalog = catalog
        self._images = images
        self._indexer = indexer

    async def run(self, encoders: Sequence[Encoder]) -> CheckReport:
        report = CheckReport(by_encoder={e.id: EncoderFindings() for e in encoders})
        with_vectors = {e.id: 0 for e in encoders}
        referenced: set[int] = set()
        """Hashes of the keys products point at (a small int each, whatever the key)."""
        cursor: str | None = None
        while True:
            page = await self._catalog.list(cursor=cursor, limit=CATALOG_PAGE)
            await self._check_products(list(page.items), encoders, report, with_vectors)
            referenced.update(hash(k) for p in page.items for k in p.image_keys)
            cursor = page.next_cursor
            if cursor is None:
                break
        if isinstance(self._images, ListableImageStore):
            async for keys in self._images.key_pages():
                unreferenced = [k for k in keys if hash(k) not in referenced]
                report.unreferenced_images += len(unreferenced)
                room = EXAMPLES - len(report.unreferenced_examples)
                report.unreferenced_examples += unreferenced[:room]
        for encoder in encoders:
            findings = report.by_encoder[encoder.id]
            async for entries in iter_ledger(self._catalog, encoder.id):
                known = await self._catalog.get_many(list(entries))
                findings.ids["ledger_without_product"] += [p for p in entries if p not in known]
            extra = await self._index.count(encoder.id) - with_vectors[encoder.id]
            findings.vectors_without_product = max(0, extra)
        return report

    async def _check_products(
        self,
        products: list[Product],
        encoders: Sequence[Encoder],
        report: CheckReport,
        with_vectors: dict[str, int],
    ) -> None:
        if not products:
            return
        ids = [p.id for p in products]
        report.products += len(ids)
        ledger = await self._catalog.ledger_entries([e.id for e in encoders], ids)
        for encoder in encoders:
            findings = report.by_encoder[encoder.id]
            entries = ledger.get(encoder.id, {})
            vectors = await self._index.fetch(encoder.id, ids)
            with_vectors[encoder.id] += len(vectors)
            for pid in ids:
                entry = entries.get(pid)
                if entry is None:
                    findings.ids["product_not_in_ledger"].append(pid)
                elif not indexed_by_current_version(encoder, entry):
                    findings.ids["ledger_other_weights"].append(pid)
                if pid not in vectors:
                    kind = "product_without_vector" if entry is None else "ledger_without_vector"
                    findings.ids[kind].append(pid)
        report.missing_images += await self._missing_images(products)

    async def _missing_images(self, products: list[Product]) -> list[str]:
        limit = asyncio.Semaphore(IMAGE_CHECKS_AT_ONCE)

        async def missing(product: Product) -> bool:
            async with limit:
                for key in product.image_keys:
                    if not await self._images.exists(key):
                        return True
                return not product.image_keys

        flags = await asyncio.gather(*(missing(p) for p in products))
        return [p.id for p, gone in zip(products, flags, strict=True) if gone]

    async def repair(
        self, report: CheckReport, encoders: Sequence[Encoder], batch_size: int = 64
    ) -> RepairReport:
        """Re-encode, from their stored images, the products the report found not (or not
        correctly) indexed; forget the ledger entries nothing backs."""
        orphans = sorted(
            {p for f in report.by_encoder.values() for p in f.ids["ledger_without_product"]}
        )
        forgotten = 0
        if orphans:  # their vectors, if any, go too
            await self._indexer.remove(orphans, "ingest --verify")
            forgotten += len(orphans)
        if report.missing_images:
            await self._catalog.forget_indexed(report.missing_images)
            forgotten += len(report.missing_images)
        todo = sorted(report.to_reencode())
        failed: dict[str, str] = {}
        reencoded = 0
        for start in range(0, len(todo), batch_size):
            products = await self._catalog.get_many(todo[start : start + batch_size])
            items = await self._stored_items(list(products.values()), failed)
            result = await self._indexer.index_batch(
                items, encoders, purpose="ingest", reindex=True
            )
            reencoded += len(result.indexed)
            failed.update(result.broken)
        return RepairReport(reencoded, forgotten, failed)

    async def _stored_items(
        self, products: list[Product], failed: dict[str, str]
    ) -> list[IndexItem]:
        items: list[IndexItem] = []
        for product in products:
            key = product.primary_image_key
            if key is None:
                failed[product.id] = "the product has no image"
                continue
            data = await self._images.get(key)
            content_type = sniff_image_type(data)
            if content_type is None:
                failed[product.id] = f"the stored image {key!r} is not a JPEG, PNG or WebP file"
                continue
            items.append(
                IndexItem(
                    id=product.id,
                    name=product.name,
                    image=data,
                    content_type=content_type,
                    digest=content_hash(data),
                    description=product.description,
                    tags=product.tags,
                )
            )
        return items


async def stale_ledger_reasons(
    index: VectorIndex,
    catalog: Catalog,
    images: ImageStore,
    encoders: Sequence[Encoder],
    where: StoreNames,
) -> list[str]:
    """Why the ledger cannot be trusted as it is, in the common case a plain ingest detects
    on its own: it records products but the index has no vectors for the encoder (a new or
    emptied index), or none of the images it records is in the image store (a new bucket)."""
    reasons: list[str] = []
    sampled: dict[str, str] = {}
    for encoder in encoders:
        page = await catalog.ledger_page(encoder.id, None, LEDGER_SAMPLE)
        if page and await index.count(encoder.id) == 0:
            reasons.append(
                f"the ledger ({where.catalog}) records products as indexed with {encoder.id} "
                f"but {where.vectors} has no vectors for it"
            )
        sampled.update(page)
    if sampled:
        products = await catalog.get_many(list(sampled)[:LEDGER_SAMPLE])
        keys = [k for p in products.values() for k in p.image_keys]
        found = await asyncio.gather(*(images.exists(k) for k in keys))
        if keys and not any(found):
            reasons.append(
                f"none of the images the ledger records is in {where.images} (checked {len(keys)})"
            )
    return reasons


@dataclass(frozen=True)
class StoreNames:
    """How messages name the active stores (e.g. "Pinecone index 'shop'")."""

    vectors: str
    catalog: str
    images: str

    def __str__(self) -> str:
        return f"{self.vectors} / {self.catalog} / {self.images}"
