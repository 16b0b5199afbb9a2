"""What the API layer adds on top of the domain services: metered search (so /metrics sees
encode, index and catalog time), encoder status for the schema, and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from api.config import ApiConfig, ApiServices
from api.limits import ImageBudget, ImageReader
from api.metrics import Metrics
from domain.images import SELF_FETCH_HEADER
from domain.model import EncoderInfo, Modality, SearchPage, SearchQuery
from domain.ports import FixedDimensionIndex

logger = logging.getLogger("api.services")

WARM_UP_IMAGE_SIDE = 64


def grey_png(side: int) -> bytes:
    """A valid side x side grey PNG, built with the standard library (no PIL in api/)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = b"".join(b"\x00" + b"\x80" * side for _ in range(side))  # filter 0 + pixels
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


WARM_UP_IMAGE = grey_png(WARM_UP_IMAGE_SIDE)


class MeteredSearch:
    """SearchService.search plus its stage timings recorded as metrics. The timings are read
    right after the awaited search returns, before any other task can run, so concurrent
    searches never mix up their numbers."""

    def __init__(self, services: ApiServices, metrics: Metrics) -> None:
        self._service = services.search
        self._metrics = metrics

    async def search(self, query: SearchQuery) -> SearchPage:
        page = await self._service.search(query)
        self._metrics.observe_search(page.encoder_id, self._service.last_timings)
        return page

    async def facet_counts(
        self, page: SearchPage, keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, int]]:
        return await self._service.facet_counts(page, keys)


@dataclass(frozen=True)
class EncoderStatus:
    info: EncoderInfo
    is_default: bool


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


class StatusService:
    """Encoders for the schema, and readiness: the default encoder loaded (warmed up once,
    in a worker thread) and each store answering within the timeout."""

    RETRY_AFTER_FAILURE_S = 10.0

    def __init__(self, services: ApiServices, config: ApiConfig) -> None:
        self._services = services
        self._timeout = config.readiness_timeout_s
        self._warmup: asyncio.Task[None] | None = None
        self._background_warmup: asyncio.Task[None] | None = None
        self._warmup_error: str | None = None
        self._warmup_failed_at = 0.0
        self._encoder_ready = False

    # -- encoders --------------------------------------------------------------------------

    def encoders(self) -> list[EncoderStatus]:
        default = self._services.encoders.default_id
        return [
            EncoderStatus(info, info.id == default)
            for info in self._services.search.available_encoders()
        ]

    async def indexed_count(self, encoder_id: str) -> int:
        return await self._services.index.count(encoder_id)

    # -- warm-up ---------------------------------------------------------------------------

    def start_warmup(self) -> None:
        """Load the default encoder in the background (idempotent; retries after a failure)."""
        if self._encoder_ready or (self._warmup is not None and not self._warmup.done()):
            return
        if (
            self._warmup_error
            and time.monotonic() - self._warmup_failed_at < self.RETRY_AFTER_FAILURE_S
        ):
            return
        self._warmup = asyncio.create_task(self._warm_up(), name="encoder-warm-up")

    async def warmed_up(self) -> None:
        """Wait until the warm-up in progress has finished (the encoder loaded or failed)."""
        if self._warmup is not None:
            await asyncio.shield(self._warmup)

    async def _warm_up(self) -> None:
        try:
            await asyncio.to_thread(self._warm_first_tower)
        except Exception as exc:
            logger.warning("loading the default encoder failed: %s", exc, exc_info=exc)
            self._warmup_error = f"{type(exc).__name__}: {exc}"[:300]
            self._warmup_failed_at = time.monotonic()
        else:
            self._encoder_ready = True
            self._warmup_error = None
            self._background_warmup = asyncio.create_task(
                self._warm_other_towers(), name="encoder-warm-up-rest"
            )

    def _towers(self) -> list[Modality]:
        """The default encoder's towers, the text one first: most searches are by text, and
        its tower loads fastest, so a starting server answers them as soon as it can."""
        modalities = self._services.encoders.get(None).modalities
        return [m for m in (Modality.TEXT, Modality.IMAGE) if m in modalities]

    def _warm(self, modality: Modality) -> None:
        encoder = self._services.encoders.get(None)
        if modality is Modality.TEXT:
            encoder.encode_texts(["warm up"])
        else:
            encoder.encode_images([WARM_UP_IMAGE])

    def _warm_first_tower(self) -> None:
        """Load the first tower and run it once: then the encoder counts as loaded (the
        server answers; a photo search before the image tower's warm-up is done waits for
        it). The other towers warm up in the background (bench/coldstart.py measures both)."""
        towers = self._towers()
        if towers:
            self._warm(towers[0])

    async def _warm_other_towers(self) -> None:
        """Warm the other towers; one that fails makes the encoder not ready again (/readyz
        names the error, and the warm-up is retried as after any failure)."""
        for modality in self._towers()[1:]:
            try:
                await asyncio.to_thread(self._warm, modality)
            except Exception as exc:
                logger.warning("warming the %s tower failed: %s", modality.value, exc)
                self._encoder_ready = False
                self._warmup_error = f"{modality.value} tower: {type(exc).__name__}: {exc}"[:300]
                self._warmup_failed_at = time.monotonic()
                return

    async def aclose(self) -> None:
        for task in (self._warmup, self._background_warmup):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def encoder_check(self) -> Check:
        default = self._services.encoders.default_id
        if self._encoder_ready:
            return Check(True, f"{default} loaded")
        self.start_warmup()
        if self._warmup_error:
            return Check(False, f"{default} failed to load: {self._warmup_error}")
        return Check(False, f"{default} is loading")

    # -- readiness -------------------------------------------------------------------------

    async def readiness(self) -> dict[str, Check]:
        probes: dict[str, Callable[[], Awaitable[object]]] = {
            "index": self._index_probe,
            "catalog": lambda: self._services.catalog_store.count(),
            "images": lambda: self._services.images.exists("readyz-probe"),
        }
        results = await asyncio.gather(*(self._probe(name, p) for name, p in probes.items()))
        checks = {"encoder": self.encoder_check()}
        checks.update(zip(probes, results, strict=True))
        return checks

    async def _index_probe(self) -> None:
        """The index answers and, when its dimension is fixed, fits the default encoder."""
        index = self._services.index
        await index.count()
        if isinstance(index, FixedDimensionIndex):
            encoder = self._services.encoders.get(None)
            await index.check_dimension(encoder.id, encoder.dim)

    async def _probe(self, name: str, probe: Callable[[], Awaitable[object]]) -> Check:
        """A probe still running at the deadline is left to end by the store's own timeout,
        not cancelled: cancelling a driver mid-call can break it (PyMongo's topology lock,
        see stores/catalog/mongodb.py)."""
        task = asyncio.ensure_future(probe())
        done, _ = await asyncio.wait({task}, timeout=self._timeout)
        if not done:
            task.add_done_callback(_log_late_probe)
            return Check(False, f"no answer within {self._timeout:g} s")
        exc = task.exception()
        if exc is not None:
            logger.warning("readiness probe %s failed: %s", name, exc)
            return Check(False, f"{type(exc).__name__}: {exc}"[:300])
        return Check(True, "reachable")


def _log_late_probe(task: asyncio.Future[object]) -> None:
    """Retrieves the outcome of a probe that outlived its deadline (asyncio would otherwise
    warn that its exception was never retrieved)."""
    if not task.cancelled() and task.exception() is not None:
        logger.info("late readiness probe failed: %s", task.exception())


@dataclass
class ApiState:
    """Everything a request handler needs, stored on ``app.state.api``."""

    services: ApiServices
    config: ApiConfig
    metrics: Metrics
    reader: ImageReader
    search: MeteredSearch
    status: StatusService

    @classmethod
    def build(cls, services: ApiServices, config: ApiConfig, metrics: Metrics) -> ApiState:
        return cls(
            services=services,
            config=config,
            metrics=metrics,
            reader=ImageReader(
                config.max_image_bytes,
                config.max_image_pixels,
                services.fetcher,
                services.image_decoder,
                services.image_probe,
            ),
            search=MeteredSearch(services, metrics),
            status=StatusService(services, config),
        )

    def image_budget(self, request: HTTPConnection | None) -> ImageBudget:
        """The image budget of one request; records where the server was reached, so the
        image fetcher never fetches from the service itself."""
        if request is None:
            return ImageBudget.for_request(self.config)
        server = request.scope.get("server")
        endpoints = self.services.own_endpoints
        if endpoints is not None and server and server[0] and server[1]:
            endpoints.add((str(server[0]), int(server[1])))
        return ImageBudget.for_request(
            self.config,
            str(request.scope.get("method", "POST")),
            fetched_by_us=SELF_FETCH_HEADER in request.headers,
        )

    def absolute_url(self, url: str | None, request_base: str | None) -> str:
        """Image URLs as a browser elsewhere can load them: relative store URLs joined with
        the public URL (or the request's base URL)."""
        if not url:
            return ""
        if "://" in url:
            return url
        base = self.config.public_url or request_base or ""
        return base.rstrip("/") + "/" + url.lstrip("/")
