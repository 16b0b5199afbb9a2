"""What the API needs from the outside: its settings (ApiConfig) and the services and ports it
calls (ApiServices). The composition root (fashion_search.asgi) fills both in; api/ never reads
settings or chooses adapters itself."""

from __future__ import annotations

from collections.abc import MutableSet, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from domain.ports import Catalog, EncoderProvider, ImageFetcher, ImageStore, VectorIndex
from domain.services import CatalogService, SearchService

DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_BODY_IDLE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ApiConfig:
    api_keys: Sequence[str] = field(default=(), repr=False)
    """Keys that may call mutations (header X-API-Key). None configured: mutations disabled."""
    public_url: str | None = None
    """Base URL clients reach the API at; relative image URLs are joined with it (or with the
    request's own base URL when unset)."""
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_images_per_request: int = 4
    """Images one request may send or name (GraphQL aliases, uploads, URLs together)."""
    max_request_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    """Decoded pixels of all the images of one request together (one full-size image)."""
    max_url_fetches_per_request: int = 1
    """Image URLs one request may have fetched (aliases included)."""
    max_body_bytes: int | None = None
    """Largest request body; default: room for one base64-encoded image of max_image_bytes."""
    body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S
    """A client that sends nothing of its request body for this long gets a 408 and its
    connection closed (slow-loris uploads must not hold connections and buffers)."""
    max_upload_files: int = 8
    """Files in one multipart GraphQL request (each must be mapped to a variable)."""
    max_form_fields: int = 8
    """Non-file parts in one multipart GraphQL request (the spec needs two: operations, map)."""
    cors_origins: Sequence[str] = ()
    serve_images: bool = False
    """Serve the image store under /images/{key} (only for the local image store)."""
    max_query_depth: int = 10
    max_aliases: int = 15
    max_tokens: int = 2000
    max_document_chars: int = 100_000
    """Longest GraphQL document (images travel in variables, never in the document)."""
    graphiql: bool = True
    warm_up_encoder: bool = True
    """Load the default encoder when the app starts; /readyz stays 503 until it is loaded."""
    serve_when_warm: bool = False
    """Start answering requests only once the default encoder's warm-up finished (its first
    tower, text, loaded, or the load failed; the image tower warms up in the background):
    with several workers sharing a socket, a worker still loading never answers, so /readyz
    does not flip between 200 and 503 while workers start."""
    metrics_multiprocess_dir: str | None = None
    """prometheus_client's multiprocess directory: /metrics sums every worker's values."""
    readiness_timeout_s: float = 3.0
    title: str = "fashion-search"
    version: str = "0.1.0"

    @property
    def body_limit(self) -> int:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_image_bytes * 4 // 3 + 1024 * 1024


class ImageDecoder(Protocol):
    """Decodes untrusted image bytes within a pixel limit, raising InvalidImage: the API
    checks every image it receives with it before anything is stored or encoded. The
    composition root hands in the encoders' own decoder, so api/ never imports encoders."""

    def __call__(self, data: bytes, max_pixels: int) -> object: ...


class ImageProbe(Protocol):
    """Reads an image's width and height from its header, within the decoder's limits
    (raising InvalidImage), without decoding it: the API charges a request's pixel budget
    with it before any pixel buffer exists."""

    def __call__(self, data: bytes, max_pixels: int) -> tuple[int, int]: ...


@dataclass(frozen=True)
class ApiServices:
    search: SearchService
    catalog: CatalogService
    encoders: EncoderProvider
    """Which encoder is the default, and loading it for readiness."""
    index: VectorIndex
    """Indexed counts per encoder, readiness."""
    catalog_store: Catalog
    """Readiness."""
    images: ImageStore
    """The /images route (local store) and readiness."""
    image_decoder: ImageDecoder
    """Checks that received images decode (within the pixel limit)."""
    fetcher: ImageFetcher | None = None
    """Downloads images given by URL; None disables searching by URL."""
    own_endpoints: MutableSet[tuple[str, int]] | None = None
    """Where the server listens, as requests show it (ASGI ``server``): recorded so the
    image fetcher never fetches from the service itself."""
    image_probe: ImageProbe | None = None
    """Sizes received images before they are decoded (None: the pixel budget is charged
    after decoding, from the decoded image's ``size``)."""
