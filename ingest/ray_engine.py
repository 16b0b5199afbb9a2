"""The Ray engine of ingest (``fashion-search ingest --engine ray``): the local pipeline's
stages, spread over a Ray cluster, writing through the same one write use case.

* Reading: the driver iterates the source (the same readers); each batch's images are read,
  size-checked and hashed by reader actors (one per four encoders; ``read_ahead`` + workers
  batches in flight), so reading scales with the cluster instead of one driver thread.
* Encoding: a pool of encoder actors (one encoder per actor, one ONNX/torch thread each by
  default) takes each batch's items split evenly among them. The actors restart when their
  process dies and their call is retried, so a lost worker costs the retry, not the run.
* Planning and writing stay in the driver, through the ``Indexer``: the ledger decides what
  needs encoding *before* anything is sent to an actor (a rerun over an unchanged catalog
  encodes nothing), and each batch is written under the home's write lock, flushed and then
  recorded in the ledger, in order. Validation, the duplicate-id check, the failure report
  and progress are the local pipeline's own code: both engines report alike.

A single Ray Data pipeline (read -> encode -> write) was not used on purpose: the ledger
check has to sit between reading (which yields the content hash) and encoding, and only the
driver talks to the stores, so the stages are joined in the driver and Ray actors do the
heavy parts.

Ray is an optional dependency, imported only when this engine is used.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from domain.errors import FashionSearchError
from domain.indexer import BatchPlan, EncodedBatch, PlannedItem, encode_plan
from domain.ports import Encoder, Vectors
from ingest.pipeline import IngestPipeline, _Batch, _Raw, _read_batch
from ingest.readers import SourceItem

RAY_MISSING = "the Ray engine needs Ray, which is not installed: pip install 'fashion-search[ray]'"
ACTOR_NAME_PREFIX = "fashion-search-encoder"
"""Encoder actors are named ``<prefix>-<run>-<n>`` (operators and tests find them by it)."""
READER_CPUS = 0
"""A reader mostly waits on storage, and must not wait for a CPU the encoder actors hold
(with one encoder per core, a reader asking for any CPU would never be scheduled)."""
ENCODERS_PER_READER = 4
RAY_TEMP_DIR_PREFIX = "fs-ray-"

EncoderFactory = Callable[[], Sequence[Encoder]]
"""Builds the run's encoders inside an actor (picklable: the composition root's)."""


class RayUnavailable(FashionSearchError):
    """Ray is not installed, or the cluster at the given address cannot be reached."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    """A Ray cluster (``ray://host:10001`` or ``host:6379``); None: ``RAY_ADDRESS`` when set,
    else a local Ray with this machine's cores."""
    workers: int = 1
    """Encoder actors (one CPU each)."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


@contextmanager
def ray_runtime(options: RayOptions) -> Iterator[ModuleType]:
    """Ray, connected: an already initialised runtime is used as is (and left running);
    otherwise the given address, ``RAY_ADDRESS``, or a local Ray started for this run (no
    dashboard, no usage stats, its logs in a temporary directory) and shut down after it."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = options.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, options.workers),
                include_dashboard=False,
                log_to_driver=False,
                _temp_dir=tempfile.mkdtemp(prefix=RAY_TEMP_DIR_PREFIX),
            )
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class EncodePart:
    """An actor's share of a batch plan: the items to encode, and the items whose words
    alone are encoded again."""

    encoder_ids: list[str]
    encode: list[PlannedItem]
    reworded: list[PlannedItem]


@dataclass(frozen=True)
class EncodedPart:
    vectors: dict[str, dict[str, Vectors]]
    broken: dict[str, str]
    text_vectors: dict[str, dict[str, Vectors]]


class EncoderActor:
    """One encoder set per actor process, built once by the run's factory."""

    def __init__(self, factory: EncoderFactory) -> None:
        self._encoders = {e.id: e for e in factory()}

    def pid(self) -> int:
        return os.getpid()

    def encode(self, part: EncodePart) -> EncodedPart:
        plan = BatchPlan(
            [self._encoders[i] for i in part.encoder_ids], part.encode, [], {}, [], part.reworded
        )
        encoded = asyncio.run(encode_plan(plan))
        return EncodedPart(encoded.vectors, encoded.broken, encoded.text_vectors)


class ReaderActor:
    """Reads batches of images: the local pipeline's reading (bytes, size limit, hash).

    An actor rather than a task: Ray keeps about one idle worker per CPU, so with the CPUs
    held by encoder actors every read task started (and imported) a fresh worker process."""

    def read(self, items: list[SourceItem], max_bytes: int) -> list[_Raw]:
        return _read_batch(iter(items), len(items), max_bytes)


class ReaderPool:
    """A reader actor per ENCODERS_PER_READER encoder actors, used in turn."""

    def __init__(self, ray: ModuleType, workers: int) -> None:
        actor = ray.remote(ReaderActor).options(
            num_cpus=READER_CPUS, max_restarts=-1, max_task_retries=-1
        )
        self._ray = ray
        self._actors = [actor.remote() for _ in range(-(-workers // ENCODERS_PER_READER))]
        self._next = itertools.cycle(self._actors)

    def read(self, items: list[SourceItem], max_bytes: int) -> Any:
        """An object ref to the batch's ``_Raw`` items (await it)."""
        return next(self._next).read.remote(items, max_bytes)

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)


class EncoderPool:
    """``workers`` encoder actors; each batch is split evenly among them."""

    def __init__(self, ray: ModuleType, factory: EncoderFactory, workers: int, run: str) -> None:
        actor = ray.remote(EncoderActor)
        self._ray = ray
        self._actors = [
            actor.options(
                name=f"{ACTOR_NAME_PREFIX}-{run}-{n}",
                num_cpus=1,
                max_restarts=-1,
                max_task_retries=-1,
            ).remote(factory)
            for n in range(workers)
        ]

    async def encode(self, plan: BatchPlan) -> EncodedBatch:
        """The plan's vectors, its items split evenly among the actors (one call each)."""
        encoded = EncodedBatch(plan, {}, {}, {})
        if not plan.encode and not plan.reworded:
            return encoded
        encoder_ids = [e.id for e in plan.encoders]
        parts = [
            EncodePart(encoder_ids, encode, reworded)
            for encode, reworded in zip(
                _split(plan.encode, self.workers), _split(plan.reworded, self.workers), strict=True
            )
        ]
        calls = [
            actor.encode.remote(part)
            for actor, part in zip(self._actors, parts, strict=True)
            if part.encode or part.reworded
        ]
        done: list[EncodedPart] = await asyncio.gather(*calls)
        for part in done:
            for encoder_id, rows in part.vectors.items():
                encoded.vectors.setdefault(encoder_id, {}).update(rows)
            for space, rows in part.text_vectors.items():
                encoded.text_vectors.setdefault(space, {}).update(rows)
            encoded.broken.update(part.broken)
        return encoded

    @property
    def workers(self) -> int:
        return len(self._actors)

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)


@dataclass(frozen=True)
class RayEngine:
    """A connected Ray and the run's encoder pool."""

    ray: ModuleType
    pool: EncoderPool
    readers: ReaderPool


@contextmanager
def ray_engine(options: RayOptions, factory: EncoderFactory) -> Iterator[RayEngine]:
    """Ray connected (``ray_runtime``) and ``options.workers`` encoder actors, killed after
    the run."""
    with ray_runtime(options) as ray:
        pool = EncoderPool(ray, factory, options.workers, uuid.uuid4().hex[:8])
        readers = ReaderPool(ray, options.workers)
        try:
            yield RayEngine(ray, pool, readers)
        finally:
            readers.close()
            pool.close()


def _split(items: Sequence[PlannedItem], parts: int) -> list[list[PlannedItem]]:
    """Contiguous, nearly equal parts (the first ones one longer)."""
    size, extra = divmod(len(items), parts)
    bounds = itertools.accumulate([size + (n < extra) for n in range(parts)], initial=0)
    edges = list(bounds)
    return [list(items[a:b]) for a, b in itertools.pairwise(edges)]


class RayIngestPipeline(IngestPipeline):
    """The local pipeline with its reading and encoding on Ray actors; plan, validation,
    writes, report and progress are inherited unchanged."""

    def __init__(self, *args: Any, engine: RayEngine, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool = engine.pool
        self._readers = engine.readers

    async def _produce(
        self,
        source: Iterator[SourceItem],
        queue: asyncio.Queue[_Batch | BaseException | None],
    ) -> None:
        options = self._options
        in_flight: deque[Any] = deque()
        window = options.read_ahead + self._pool.workers
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < window:
                    items = await asyncio.to_thread(
                        lambda: list(itertools.islice(source, options.batch_size))
                    )
                    exhausted = not items
                    if items:
                        in_flight.append(self._readers.read(items, options.max_image_bytes))
                if not in_flight:
                    break
                raws: list[_Raw] = await in_flight.popleft()
                await self._fetch_remote(raws)
                await queue.put(self._validate(raws))
        except Exception as exc:
            await queue.put(exc)
            return
        await queue.put(None)

    async def _vectors(self, plan: BatchPlan) -> EncodedBatch:
        return await self._pool.encode(plan)
