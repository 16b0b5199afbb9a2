"""The composition root: the one place that builds encoders, stores and services from
settings. Nothing else chooses adapters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from domain.ports import Catalog, Encoder, ImageFetcher, ImageStore, VectorIndex, WriteLock
from domain.services import CatalogService, SearchService
from encoders.hookspecs import EncoderOptions
from encoders.plugins import EncoderRegistry, make_plugin_manager
from fashion_search.settings import Settings
from ingest.pipeline import IngestOptions, IngestPipeline, ProgressCallback


@dataclass
class Container:
    settings: Settings
    encoders: EncoderRegistry
    index: VectorIndex
    catalog: Catalog
    images: ImageStore
    fetcher: ImageFetcher | None
    write_lock: WriteLock | None = None
    """Serialises the writers of the data home (None: a lock that holds nothing)."""
    search: SearchService = field(init=False)
    catalog_service: CatalogService = field(init=False)

    def __post_init__(self) -> None:
        self.search = SearchService(
            self.encoders, self.index, self.catalog, self.images, self.fetcher
        )
        self.catalog_service = CatalogService(
            self.encoders, self.index, self.catalog, self.images, self.write_lock
        )

    def ingest_pipeline(
        self,
        encoders: Sequence[Encoder],
        options: IngestOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> IngestPipeline:
        """An ingest pipeline writing to this container's stores."""
        return IngestPipeline(
            encoders,
            self.index,
            self.catalog,
            self.images,
            fetcher=self.fetcher,
            options=options,
            on_progress=on_progress,
            lock=self.write_lock,
        )

    async def aclose(self) -> None:
        await self.index.close()
        await self.catalog.close()
        await self.images.close()


def build_encoders(settings: Settings, load_entry_points: bool = True) -> EncoderRegistry:
    options = EncoderOptions(
        models_dir=str(settings.models_dir), torch_threads=settings.torch_threads
    )
    return EncoderRegistry(
        make_plugin_manager(load_entry_points=load_entry_points), settings.encoder, options
    )


def build_index(settings: Settings) -> VectorIndex:
    if settings.pinecone_api_key is not None:
        from stores.vectors.pinecone_index import PineconeVectorIndex

        return PineconeVectorIndex.from_settings(settings)
    from stores.vectors.faiss_index import FaissVectorIndex

    return FaissVectorIndex(
        settings.vectors_dir,
        hnsw_threshold=settings.faiss_hnsw_threshold,
        hnsw_storage=settings.faiss_hnsw_storage,
    )


def build_catalog(settings: Settings) -> Catalog:
    if settings.mongodb_uri is not None:
        from stores.catalog.mongodb import MongoCatalog

        return MongoCatalog.from_settings(settings)
    from stores.catalog.sqlite_catalog import SqliteCatalog

    return SqliteCatalog(settings.catalog_path)


def build_images(settings: Settings) -> ImageStore:
    if settings.s3_bucket is not None:
        from stores.images.s3 import S3ImageStore

        return S3ImageStore.from_settings(settings)
    from stores.images.local import LocalImageStore

    return LocalImageStore(settings.images_dir, base_url="/images")


def build_fetcher(settings: Settings) -> ImageFetcher | None:
    try:
        from stores.http_fetcher import SafeImageFetcher
    except ImportError:  # until the API issue lands
        return None
    return SafeImageFetcher.from_settings(settings)


def build(
    settings: Settings | None = None,
    *,
    encoders: EncoderRegistry | None = None,
    load_entry_points: bool = True,
) -> Container:
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return Container(
        settings=settings,
        encoders=encoders or build_encoders(settings, load_entry_points),
        index=build_index(settings),
        catalog=build_catalog(settings),
        images=build_images(settings),
        fetcher=build_fetcher(settings),
    )
