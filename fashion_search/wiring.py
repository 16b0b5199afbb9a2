"""The composition root: the one place that builds encoders, stores and services from
settings. Nothing else chooses adapters, and adapters never read settings: they get plain
values from here (tests/test_layers.py enforces both)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from domain.errors import FashionSearchError, StoreMisconfigured
from domain.indexer import Indexer
from domain.ledger_check import StoreNames
from domain.ports import (
    Catalog,
    ColourAnalyser,
    Encoder,
    EncoderProvider,
    FixedDimensionIndex,
    ImageFetcher,
    ImageStore,
    VectorIndex,
    WriteLock,
)
from domain.services import CatalogService, SearchService
from encoders.colour import ColourHistograms
from encoders.hookspecs import EncoderOptions
from encoders.plugins import EncoderRegistry, make_plugin_manager
from fashion_search.settings import Settings
from ingest.pipeline import IngestOptions, IngestPipeline, ProgressCallback
from ingest.ray_engine import EncoderFactory, RayEngine, RayIngestPipeline
from ingest.s3 import S3Access
from stores.locks import FileWriteLock, NullWriteLock

if TYPE_CHECKING:
    from stores.catalog.mongodb import MongoCatalog
    from stores.images.s3 import S3ImageStore
    from stores.synonyms import Lexicon
    from stores.vectors.pinecone_index import PineconeVectorIndex

RAY_ACTOR_THREADS = 1
"""ONNX/torch threads per Ray encoder actor: one actor per core scales better than threads."""


@dataclass
class Container:
    settings: Settings
    encoders: EncoderRegistry
    index: VectorIndex
    catalog: Catalog
    images: ImageStore
    fetcher: ImageFetcher | None
    write_lock: WriteLock = field(default_factory=NullWriteLock)
    """Serialises the writers of the data home (the one write use case holds it per batch)."""
    own_endpoints: set[tuple[str, int]] = field(default_factory=set)
    """The server's own (address, port) as its requests show them: the API adds them, the
    fetcher never fetches from them (no self-requests)."""
    colours: ColourAnalyser = field(default_factory=ColourHistograms)
    """Reads each product photo's colour histogram at ingest (whatever the encoder)."""
    search: SearchService = field(init=False)
    catalog_service: CatalogService = field(init=False)
    indexer: Indexer = field(init=False)
    """The one write use case on these stores (ingest, mutations and repairs use it)."""

    def __post_init__(self) -> None:
        self.indexer = Indexer(self.index, self.catalog, self.images, self.write_lock, self.colours)
        self.search = SearchService(
            self.encoders, self.index, self.catalog, self.images, self.fetcher
        )
        self.catalog_service = CatalogService(
            self.encoders, self.index, self.catalog, self.images, self.write_lock, self.colours
        )

    def ingest_pipeline(
        self,
        encoders: Sequence[Encoder],
        options: IngestOptions | None = None,
        on_progress: ProgressCallback | None = None,
        engine: RayEngine | None = None,
    ) -> IngestPipeline:
        """An ingest writing to this container's stores: on this machine, or on Ray
        (``ingest --engine ray``) when ``engine`` is given. Both write through the same
        Indexer, lock and ledger."""
        make: Callable[..., IngestPipeline] = (
            IngestPipeline
            if engine is None
            else functools.partial(RayIngestPipeline, engine=engine)
        )
        return make(
            encoders,
            self.index,
            self.catalog,
            self.images,
            fetcher=self.fetcher,
            options=options,
            on_progress=on_progress,
            lock=self.write_lock,
            colours=self.colours,
        )

    def ray_encoder_factory(
        self, encoders: Sequence[Encoder], threads: int = RAY_ACTOR_THREADS
    ) -> EncoderFactory:
        """What each Ray encoder actor runs to build the run's encoders (from these
        settings, ``threads`` ONNX/torch threads each)."""
        return functools.partial(
            actor_encoders, worker_settings(self.settings), tuple(e.id for e in encoders), threads
        )

    async def aclose(self) -> None:
        await self.index.close()
        await self.catalog.close()
        await self.images.close()


def build_encoders(settings: Settings, load_entry_points: bool = True) -> EncoderRegistry:
    options = EncoderOptions(
        models_dir=str(settings.models_dir),
        torch_threads=settings.torch_threads,
        runtime=settings.encoder_runtime,
    )
    return EncoderRegistry(
        make_plugin_manager(load_entry_points=load_entry_points), settings.encoder, options
    )


def worker_settings(settings: Settings) -> Settings:
    """The settings as another process sees them: its working directory may differ, so the
    home (and the models under it) is absolute."""
    models = settings.exported_models_dir
    return settings.model_copy(
        update={
            "home": settings.home.resolve(),
            "exported_models_dir": models.resolve() if models is not None else None,
        }
    )


def actor_encoders(settings: Settings, encoder_ids: Sequence[str], threads: int) -> list[Encoder]:
    """The encoders of a Ray encoder actor (runs in the actor's process)."""
    registry = build_encoders(settings.model_copy(update={"torch_threads": threads}))
    return [registry.get(encoder_id) for encoder_id in encoder_ids]


def pinecone_index(settings: Settings) -> PineconeVectorIndex:
    """The Pinecone adapter, from plain values (stores never read settings)."""
    from stores.vectors.pinecone_index import PineconeVectorIndex

    if settings.pinecone_api_key is None:
        raise StoreMisconfigured("PINECONE_API_KEY is not set")
    return PineconeVectorIndex(
        settings.pinecone_api_key.get_secret_value(),
        host=settings.pinecone_host,
        index_name=settings.pinecone_index,
        timeout_s=settings.store_timeout_s,
        control_plane_host=settings.pinecone_controller_host,
    )


def mongo_catalog(settings: Settings) -> MongoCatalog:
    from stores.catalog.mongodb import MongoCatalog

    if settings.mongodb_uri is None:
        raise StoreMisconfigured("MONGODB_URI is not set")
    return MongoCatalog(
        settings.mongodb_uri.get_secret_value(),
        settings.mongodb_db,
        timeout_s=settings.store_timeout_s,
        synonyms=synonym_lexicon(settings),
    )


def synonym_lexicon(settings: Settings) -> Lexicon:
    """The synonym lexicon lexical search expands queries with (``stores.synonyms``)."""
    from stores.synonyms import Lexicon, load_lexicon

    if settings.synonyms_mode == "off":
        return Lexicon.empty()
    return load_lexicon(settings.synonyms_file, replace=settings.synonyms_mode == "replace")


def s3_access(settings: Settings) -> S3Access:
    """How ingest reads ``s3://`` manifests and images: the S3 settings the image store uses
    (endpoint, region, store timeout) and boto3's credential chain. Checked on first use:
    a local ingest does not depend on the S3 settings."""
    return S3Access(settings.s3_endpoint_url, settings.aws_region, settings.store_timeout_s)


def s3_images(settings: Settings) -> S3ImageStore:
    from stores.images.s3 import S3ImageStore

    if not settings.s3_bucket:
        raise StoreMisconfigured("S3_BUCKET is not set")
    return S3ImageStore(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.aws_region,
        public_base_url=settings.s3_public_base_url,
        presign_expiry_s=settings.s3_presign_expiry_s,
        timeout_s=settings.store_timeout_s,
    )


def build_index(settings: Settings) -> VectorIndex:
    if settings.pinecone_api_key is not None:
        return pinecone_index(settings)
    from stores.vectors.faiss_index import FaissVectorIndex

    return FaissVectorIndex(
        settings.vectors_dir,
        hnsw_threshold=settings.faiss_hnsw_threshold,
        hnsw_storage=settings.faiss_hnsw_storage,
        prefilter=settings.faiss_prefilter,
    )


def build_catalog(settings: Settings) -> Catalog:
    if settings.mongodb_uri is not None:
        return mongo_catalog(settings)
    from stores.catalog.sqlite_catalog import SqliteCatalog

    return SqliteCatalog(settings.catalog_path, synonyms=synonym_lexicon(settings))


def images_served_by_api(settings: Settings) -> bool:
    """Whether the API serves the image files: the local store's URLs are /images/<key>;
    S3 serves its own (presigned or public URLs)."""
    return settings.s3_bucket is None


def build_images(settings: Settings) -> ImageStore:
    if not images_served_by_api(settings):
        return s3_images(settings)
    from stores.images.local import LocalImageStore

    return LocalImageStore(settings.images_dir, base_url="/images")


def embedded_home_in_use(settings: Settings) -> bool:
    """Whether any store lives in the data home (then its writers must be serialised)."""
    return (
        settings.pinecone_api_key is None
        or settings.mongodb_uri is None
        or settings.s3_bucket is None
    )


def build_write_lock(settings: Settings) -> WriteLock:
    """A file lock in the home when any store lives there (see stores/locks.py); nothing
    to hold when every store is a production service."""
    if not embedded_home_in_use(settings):
        return NullWriteLock()
    return FileWriteLock(
        settings.write_lock_path,
        wait_s=settings.write_wait_s,
        ingest_wait_s=settings.ingest_write_wait_s,
    )


def build_fetcher(
    settings: Settings, own_endpoints: Collection[tuple[str, int]] = ()
) -> ImageFetcher:
    from stores.http_fetcher import SafeImageFetcher

    return SafeImageFetcher.from_settings(settings, own_endpoints)


def redact_mongodb_uri(uri: str) -> str:
    from stores.catalog.mongodb import redact_uri

    return redact_uri(uri)


@dataclass(frozen=True)
class StoreProfile:
    """The stores these settings choose (same rules as build_*): how messages name them, and
    which adapter each uses and where it points (``fashion-search config``)."""

    names: StoreNames
    details: dict[str, str]


def describe_stores(settings: Settings) -> StoreProfile:
    (index_name, index), (catalog_name, catalog), (images_name, images) = (
        _describe_index(settings),
        _describe_catalog(settings),
        _describe_images(settings),
    )
    return StoreProfile(
        names=StoreNames(vectors=index_name, catalog=catalog_name, images=images_name),
        details={"vector_index": index, "catalog": catalog, "images": images},
    )


def _describe_index(settings: Settings) -> tuple[str, str]:
    if settings.pinecone_api_key is not None:
        target = settings.pinecone_host or f"index {settings.pinecone_index}"
        name = f"Pinecone index {settings.pinecone_index or settings.pinecone_host!r}"
        return name, f"pinecone ({target})"
    return f"the vector index in {settings.vectors_dir}", f"faiss ({settings.vectors_dir})"


def _describe_catalog(settings: Settings) -> tuple[str, str]:
    if settings.mongodb_uri is not None:
        uri = redact_mongodb_uri(settings.mongodb_uri.get_secret_value())
        return (
            f"MongoDB database {settings.mongodb_db!r}",
            f"mongodb ({uri}, database {settings.mongodb_db})",
        )
    return f"the catalog {settings.catalog_path}", f"sqlite ({settings.catalog_path})"


def _describe_images(settings: Settings) -> tuple[str, str]:
    if settings.s3_bucket is None:
        return (
            f"the images in {settings.images_dir}",
            f"local ({settings.images_dir}, served under /images)",
        )
    where = f"s3://{settings.s3_bucket}"
    if settings.s3_endpoint_url:
        where += f" at {settings.s3_endpoint_url}"
    urls = (
        f"public URLs under {settings.s3_public_base_url}"
        if settings.s3_public_base_url
        else f"presigned URLs valid {settings.s3_presign_expiry_s} s"
    )
    return f"S3 bucket {settings.s3_bucket!r}", f"s3 ({where}, {urls})"


async def check_index_fits(index: VectorIndex, encoders: Sequence[Encoder]) -> None:
    """Refuse, before anything is encoded, encoders whose vectors the index cannot hold (a
    Pinecone index of another dimension): StoreMisconfigured naming both dimensions."""
    if isinstance(index, FixedDimensionIndex):
        for encoder in encoders:
            await index.check_dimension(encoder.id, encoder.dim)


def store_settings_problems(settings: Settings) -> dict[str, str]:
    """Each production store whose settings cannot work (a malformed URI or endpoint), with
    the one-line reason; nothing is contacted. `serve` refuses to start on any."""
    makers: dict[str, Callable[[], object]] = {}
    if settings.pinecone_api_key is not None:
        makers["vector_index"] = lambda: pinecone_index(settings)
    if settings.mongodb_uri is not None:
        makers["catalog"] = lambda: mongo_catalog(settings)
    if settings.s3_bucket is not None:
        makers["images"] = lambda: s3_images(settings)
    problems: dict[str, str] = {}
    for name, make in makers.items():
        try:
            make()  # constructors do no I/O; what they hold is released with them
        except FashionSearchError as exc:
            problems[name] = str(exc)
    return problems


async def check_stores(
    settings: Settings, encoders: EncoderProvider | None = None
) -> dict[str, str]:
    """Ask each production store whether it answers and can serve the default encoder:
    'ok', or one line naming the setting to fix. Every store is checked even when another
    one's settings are invalid. Embedded stores need no check."""
    results: dict[str, str] = {}
    if settings.pinecone_api_key is not None:
        results["vector_index"] = await _check_index(settings, encoders)
    if settings.mongodb_uri is not None:
        results["catalog"] = await _check_store(lambda: mongo_catalog(settings))
    if settings.s3_bucket is not None:
        results["images"] = await _check_store(lambda: s3_images(settings))
    return results


class _Checkable(Protocol):
    async def check(self) -> object: ...

    async def close(self) -> None: ...


async def _check_store(make: Callable[[], _Checkable]) -> str:
    try:
        store = make()
    except FashionSearchError as exc:
        return str(exc)
    try:
        await store.check()
    except FashionSearchError as exc:
        return str(exc)
    finally:
        await store.close()
    return "ok"


async def _check_index(settings: Settings, encoders: EncoderProvider | None) -> str:
    """The index answers, and its dimension is the default encoder's (checked before any
    encoding: a mismatch otherwise shows up only when the first vectors are written)."""
    try:
        index = pinecone_index(settings)
    except FashionSearchError as exc:
        return str(exc)
    try:
        await index.check()
        provider = encoders or build_encoders(settings)
        encoder = provider.get(None)
        await index.check_dimension(encoder.id, encoder.dim)
    except FashionSearchError as exc:
        return str(exc)
    finally:
        await index.close()
    return "ok"


def build(
    settings: Settings | None = None,
    *,
    encoders: EncoderRegistry | None = None,
    load_entry_points: bool = True,
) -> Container:
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    own_endpoints: set[tuple[str, int]] = set()
    return Container(
        settings=settings,
        encoders=encoders or build_encoders(settings, load_entry_points),
        index=build_index(settings),
        catalog=build_catalog(settings),
        images=build_images(settings),
        fetcher=build_fetcher(settings, own_endpoints),
        write_lock=build_write_lock(settings),
        own_endpoints=own_endpoints,
    )
