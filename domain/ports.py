"""Ports: what the domain needs from the outside world. Adapters live in encoders/ and stores/.

Stores are async (the API serves many requests on one event loop and the production
adapters talk over the network); encoders are sync and CPU-bound, so services run them in
worker threads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from domain.model import (
    EncoderInfo,
    LexicalHit,
    Modality,
    Product,
    ProductFilter,
    ProductPage,
)

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Encoder(Protocol):
    """Turns texts and images into L2-normalised float32 vectors of one shared space.

    Implementations load their model lazily, once per process, and are safe to call from
    several threads at once."""

    @property
    def id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def modalities(self) -> frozenset[Modality]: ...

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        """[n, dim] float32, each row of unit length. Raises BadInput for empty texts."""
        ...

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        """[n, dim] float32, each row of unit length. Raises InvalidImage for bytes that are
        not a supported image."""
        ...


class ColourAnalyser(Protocol):
    """Reads the garment's colour histogram from product photos (``domain.colour``: its
    layout and how search uses it), independently of any encoder. Sync and CPU-bound (the
    indexer runs it in a worker thread); safe to call from several threads."""

    def colour_histograms(self, images: Sequence[bytes]) -> list[bytes | None]:
        """One histogram per image, as ``Product.colour`` stores it (``histogram_bytes``);
        None for bytes that are not a readable image."""
        ...


@runtime_checkable
class VersionedEncoder(Encoder, Protocol):
    """An encoder whose weights can change under the same id (a new heads file for the
    default ``fashion-lite``). ``version`` names the weights in use, so that ingest can tell
    vectors made with other weights apart and encode those products again."""

    @property
    def version(self) -> str: ...


PreparedImage = Mapping[str, npt.NDArray[np.float32]]
"""One image ready for an encoder's networks: named arrays (fashion-lite: the pixels and the
colour statistics)."""


@runtime_checkable
class PreparingEncoder(Encoder, Protocol):
    """An encoder whose image path splits where its networks start: ``prepare_image``
    decodes and preprocesses one image (no model needed), ``encode_prepared`` runs the
    networks on prepared images stacked by name (``stack_prepared``). Together they give
    exactly ``encode_images``' vectors, so an ingest engine can prepare images where it reads
    them and keep its model processes for the networks (the Ray engine)."""

    def prepare_image(self, data: bytes) -> dict[str, npt.NDArray[np.float32]]:
        """Raises InvalidImage as ``encode_images`` does."""
        ...

    def encode_prepared(self, prepared: PreparedImage) -> Vectors:
        """[n, dim] float32 unit vectors from arrays of n prepared images each."""
        ...


def stack_prepared(images: Sequence[PreparedImage]) -> dict[str, npt.NDArray[np.float32]]:
    """Prepared images stacked by name, for ``encode_prepared`` (at least one image)."""
    return {name: np.stack([image[name] for image in images]) for name in images[0]}


def ledger_entry(encoder: Encoder, content_hash: str) -> str:
    """What the ingest ledger records for a product indexed by ``encoder``: the image's
    content hash, tagged with the encoder's version when it has one."""
    return versioned_entry(content_hash, encoder_version(encoder))


def encoder_version(encoder: Encoder) -> str:
    """The version its ledger entries carry ("" for an unversioned encoder): a plain value
    for processes that check the ledger without loading the encoder (the Ray engine)."""
    return encoder.version if isinstance(encoder, VersionedEncoder) else ""


def versioned_entry(content_hash: str, version: str) -> str:
    return f"{content_hash}@{version}" if version else content_hash


def indexed_by_current_version(encoder: Encoder, entry: str) -> bool:
    """Whether a ledger entry was recorded with the encoder's current weights."""
    return entry == ledger_entry(encoder, entry.partition("@")[0])


class EncoderProvider(Protocol):
    """Finds encoders by id; ``None`` means the configured default."""

    @property
    def default_id(self) -> str: ...

    def get(self, encoder_id: str | None = None) -> Encoder:
        """Raises UnknownEncoder for ids no plugin provides, EncoderUnavailable when the
        encoder cannot be loaded here."""
        ...

    def available(self) -> list[EncoderInfo]: ...


class VectorIndex(Protocol):
    """Vectors per encoder (never mixed), keyed by product id, with the product's tags as
    metadata so filters can be pushed down."""

    async def upsert(
        self,
        encoder_id: str,
        ids: Sequence[str],
        vectors: Vectors,
        metadata: Sequence[Mapping[str, str]],
    ) -> None: ...

    async def query(
        self,
        encoder_id: str,
        vector: Vectors,
        top_k: int,
        filter: ProductFilter | None = None,
    ) -> list[tuple[str, float]]:
        """Best first: (product id, cosine similarity). Unknown encoder ids give []."""
        ...

    async def fetch(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors]:
        """Stored vectors of those ids that exist for this encoder."""
        ...

    async def delete(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        """Remove the ids from one encoder's vectors, or from every encoder's."""
        ...

    async def count(self, encoder_id: str | None = None) -> int: ...

    async def encoder_ids(self) -> list[str]:
        """Encoders that have vectors here."""
        ...

    async def flush(self) -> None:
        """Make every upsert and delete so far durable (ingest calls it before recording
        items as done, so a crash never leaves the ledger ahead of the vectors)."""
        ...

    async def close(self) -> None:
        """Flush and release resources."""
        ...


@runtime_checkable
class ImmediateFetch(Protocol):
    """A VectorIndex that can also hand stored vectors back at once, on the calling thread
    (an index in this process's memory), as ``ImmediateQuery`` answers queries."""

    def fetch_now(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors] | None:
        """What ``fetch`` would return; None when that cannot be done without waiting (the
        index is busy or not loaded yet): then ``fetch`` is awaited instead."""
        ...


@runtime_checkable
class ImmediateQuery(Protocol):
    """A VectorIndex that can also answer a query at once, on the calling thread: an index
    in this process's memory. The search service asks it so when a search is the only one
    in progress (a hand-off to a worker thread and back then only adds time)."""

    def query_now(
        self,
        encoder_id: str,
        vector: Vectors,
        top_k: int,
        filter: ProductFilter | None = None,
    ) -> list[tuple[str, float]] | None:
        """What ``query`` would answer; None when that cannot be done without waiting (the
        index is busy or not loaded yet): then ``query`` is awaited instead."""
        ...


class SpaceQuery(NamedTuple):
    """One query of one vector space (``VectorIndex.query``'s arguments)."""

    space: str
    vector: Vectors
    top_k: int
    filter: ProductFilter | None = None


@runtime_checkable
class SeveralQueries(Protocol):
    """A VectorIndex that answers the queries of several spaces in one call (a text search
    asks the image space and the products' words space with the same vector): one hand-off
    to a worker thread instead of one per space."""

    async def query_several(self, queries: Sequence[SpaceQuery]) -> list[list[tuple[str, float]]]:
        """What ``query`` answers for each, in their order."""
        ...

    def query_several_now(
        self, queries: Sequence[SpaceQuery]
    ) -> list[list[tuple[str, float]]] | None:
        """The same at once, as ``ImmediateQuery.query_now`` (None when it cannot be done
        without waiting), the spaces searched side by side: the caller's thread and a second
        one (each search is a scan of memory, on its own core)."""
        ...


@runtime_checkable
class ImmediateLexical(Protocol):
    """A LexicalIndex that can also answer at once, on the calling thread, when that costs
    well under a millisecond (an in-memory BM25 snapshot). The search service asks it so
    while concurrent searches' vector queries run in a worker thread (a hand-off costs more
    than the answer)."""

    def search_text_now(
        self, text: str, top_k: int, filter: ProductFilter | None = None
    ) -> list[LexicalHit] | None:
        """What ``search_text`` would answer; None when that cannot be done at once (the
        store is busy, or would have to ask a slower index): then ``search_text`` is awaited."""
        ...


@runtime_checkable
class FixedDimensionIndex(Protocol):
    """A VectorIndex whose every vector has one dimension, fixed when it was created (a
    Pinecone index): readiness checks it against the default encoder before any encoding."""

    async def check_dimension(self, encoder_id: str, dim: int) -> None:
        """Raises StoreMisconfigured, naming the setting and both dimensions, when vectors of
        ``dim`` cannot be stored here."""
        ...


class ProductRows(Protocol):
    """Product rows read in one call, each decoded into a ``Product`` only when asked for:
    a search reads the colour histograms of its top 30 and shows 10 of them."""

    def colour(self, product_id: str) -> bytes | None:
        """The product's colour histogram (None: absent, or the product is not there)."""
        ...

    def product(self, product_id: str) -> Product | None: ...


class MappedRows:
    """``ProductRows`` over products already decoded (catalogs without a rows read)."""

    def __init__(self, products: Mapping[str, Product]) -> None:
        self._products = products

    def colour(self, product_id: str) -> bytes | None:
        product = self._products.get(product_id)
        return product.colour if product is not None else None

    def product(self, product_id: str) -> Product | None:
        return self._products.get(product_id)


@runtime_checkable
class RowReader(Protocol):
    """A catalog that can hand back rows without decoding them all (``get_rows``)."""

    async def get_rows(self, ids: Sequence[str]) -> ProductRows:
        """One round trip, as ``get_many``."""
        ...


class Catalog(Protocol):
    """Products and their tags, plus the ingest ledger: which image (by content hash) of each
    product is already indexed by which encoder."""

    async def upsert_many(self, products: Sequence[Product]) -> None: ...

    async def get(self, product_id: str) -> Product | None: ...

    async def get_many(self, ids: Sequence[str]) -> dict[str, Product]:
        """One round trip; ids that do not exist are absent from the result."""
        ...

    async def delete(self, product_id: str) -> bool:
        """True when the product existed. Also forgets its ledger entries."""
        ...

    async def list(
        self, filter: ProductFilter | None = None, cursor: str | None = None, limit: int = 20
    ) -> ProductPage:
        """Products in id order; ``cursor`` continues after the previous page."""
        ...

    async def count(self, filter: ProductFilter | None = None) -> int: ...

    async def facets(
        self, keys: Sequence[str] | None = None, filter: ProductFilter | None = None
    ) -> dict[str, dict[str, int]]:
        """For each tag key (all keys when None): value -> number of products."""
        ...

    async def indexed_hashes(self, encoder_id: str) -> dict[str, str]:
        """product id -> ledger entry of the image indexed for this encoder (the whole
        ledger of one encoder: tests and small tools; ingest reads ``ledger_entries`` per
        batch and ``ledger_page`` to walk it)."""
        ...

    async def ledger_entries(
        self, encoder_ids: Sequence[str], ids: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        """encoder id -> product id -> ledger entry, for these products only: one round trip
        per batch, whatever the size of the ledger. Encoders without entries may be absent."""
        ...

    async def ledger_page(self, encoder_id: str, after: str | None, limit: int) -> dict[str, str]:
        """Up to ``limit`` entries of one encoder with product ids greater than ``after``, in
        id order: the ledger read in pages (bounded memory, each call short)."""
        ...

    async def mark_indexed(self, encoder_id: str, hashes: Mapping[str, str]) -> None: ...

    async def forget_indexed(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        """Drop the ids' ledger entries for one encoder, or for every encoder."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class LexicalIndex(Protocol):
    """BM25 over what the catalog says about each product: name, description and tag values,
    with stemming, accent folding and hyphen/space variants ("t-shirt", "tshirt", "t shirt").
    A capability of the catalog adapters (SQLite FTS5, MongoDB ``$text``)."""

    async def search_text(
        self, text: str, top_k: int, filter: ProductFilter | None = None
    ) -> list[LexicalHit]:
        """Best first, at most ``top_k``: products having any of the query's words (the
        more words and the rarer, the better). A text without any searchable word (only
        punctuation or stop words) gives []."""
        ...


@runtime_checkable
class TagCounts(Protocol):
    """A Catalog that counts the tag values of given products itself (an index on the tags),
    instead of loading every product: what a search page's facets read."""

    async def count_tags(
        self, ids: Sequence[str], keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, int]]:
        """For each tag key (only ``keys`` when given): value -> how many of the products
        ``ids`` name have it (an id named twice counts once; unknown ids count nothing)."""
        ...


class ImageStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Idempotent: putting the same key twice keeps one object."""
        ...

    async def get(self, key: str) -> bytes:
        """Raises NotFound for a missing key."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str:
        """Where a browser can load the image: a path served by the API, a presigned or a
        CDN URL."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ListableImageStore(Protocol):
    """An ImageStore that can list its keys (local files, an S3 bucket): ``ingest --verify``
    then finds objects no product points at."""

    def key_pages(self, page_size: int = 1000) -> AsyncIterator[list[str]]:
        """Every key, a page (at most ``page_size`` keys) at a time, in no promised order."""
        ...


class ImageFetcher(Protocol):
    """Downloads an image from a URL within the configured safety limits."""

    async def fetch(self, url: str) -> bytes:
        """Raises UrlRejected, PayloadTooLarge or UpstreamUnavailable."""
        ...


class WriteLock(Protocol):
    """Serialises the writers of one data home across processes (embedded profile), so that
    an ingest and a mutation, or two ingests, never overwrite each other's work. Held only
    while one batch or one mutation is written (encoding happens outside it). Production
    stores, which serialise writes themselves, use a lock that holds nothing."""

    def hold(self, purpose: str) -> AbstractAsyncContextManager[None]:
        """Hold the lock for the block. ``purpose`` (e.g. "ingest", "addProduct") is shown to
        whoever waits. Raises WriterBusy, naming the holder, when the lock cannot be had
        within the adapter's wait."""
        ...
