"""The Ray engine of ingest (``fashion-search ingest --engine ray``): a Ray Data pipeline,
writing through the same one write use case as the local engine.

The source's rows become Ray Datasets of WINDOW_ROWS rows each, run one after the other
(blocks of one batch of pickled items, put in the object store as the driver reads the
manifest, so the driver holds one batch of rows and every stage gets one input per batch to
spread over its workers), then:

1. **read** (``map_batches`` tasks): each image is read (local file, zip member or ``s3://``
   object), size-checked and hashed; a missing or oversized image becomes the item's failure;
2. **ledger check** (``map_batches`` on one small actor, on the driver's node): which
   encoders each image still needs, from the ledger (one round trip per batch), so a rerun
   over an unchanged catalog encodes nothing;
3. **encode** (``map_batches`` on an ``ActorPoolStrategy(size=workers)``, one CPU each): one
   encoder set per actor (one ONNX/torch thread each), the items that need it encoded in
   batches (``encode_plan``, as the local engine), an image the encoder rejects marked broken;
4. **write**, on the driver, from ``iter_batches`` (order preserved): the local pipeline's own
   validation (duplicate ids, image type), then the Indexer's plan (authoritative: it reads the
   ledger and products again), the actors' vectors taken for what the plan encodes (anything
   they did not compute, e.g. an http(s) image fetched by the driver or new words of an
   unchanged image, is encoded on the driver), and the batch written under the home's write
   lock, flushed and recorded in the ledger, in order.

So the guarantees are the local engine's: idempotent by content hash, a crash of the driver
or of a worker costs at most the unacknowledged batches (Ray Data restarts a dead actor and
retries its batch; a rerun skips what the ledger records), bad images in the same report,
progress per written batch. Ray is an optional dependency, imported only by this engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from domain.errors import FashionSearchError
from domain.images import sniff_image_type
from domain.indexer import BatchPlan, EncodedBatch, IndexItem, PlannedItem, encode_plan
from domain.model import Modality, product_text_space
from domain.ports import Catalog, Encoder, Vectors, encoder_version, versioned_entry
from ingest.pipeline import IngestOptions, IngestPipeline, _Batch, _Raw, _read_batch
from ingest.readers import SourceItem

if TYPE_CHECKING:
    import pyarrow as pa

RAY_MISSING = "the Ray engine needs Ray, which is not installed: pip install 'fashion-search[ray]'"
ENCODER_PROCESS_TITLE = b"ray::MapWorker(MapBatches(EncodeImages))"
"""How Ray titles the encoder actors' processes (``ps``; benches and tests find them by it)."""
READ_CPUS = 0
"""Reading mostly waits on storage, and must not wait for a CPU the encoder actors hold
(with one encoder per core, a task asking for any CPU would never be scheduled)."""
ENCODERS_PER_READER = 2
"""Read tasks running at once per encoder actor, rounded up."""
WINDOW_ROWS = 50_000
"""Source rows per Dataset: a catalog of millions is run as a sequence of datasets, so the
first batch is encoded after reading 50,000 rows, not the whole manifest, and the object
store holds one window's rows; each window starts its actors again (a model load, a few
seconds against the minutes its encoding takes)."""
RAY_TEMP_DIR_PREFIX = "fs-ray-"
ITEM, RAW, NEEDS, ENCODED = "item", "raw", "needs", "encoded"

EncoderFactory = Callable[[], Sequence[Encoder]]
"""Builds the run's encoders inside an actor (picklable: the composition root's)."""
CatalogFactory = Callable[[], Catalog]
"""Opens the catalog (read for the ledger) inside an actor (picklable)."""


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
        import ray.data
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


@contextmanager
def ray_runtime(options: RayOptions) -> Iterator[ModuleType]:
    """Ray, connected: an already initialised runtime is used as is (and left running);
    otherwise the given address, ``RAY_ADDRESS``, or a local Ray started for this run (no
    dashboard, no usage stats, its logs in a temporary directory) and shut down after it."""
    ray = import_ray()
    _quiet_ray_data(ray)
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


def _quiet_ray_data(ray: ModuleType) -> None:
    """Our progress bar is the progress (Ray Data's bars and plan logs would interleave with
    it), and the write stage needs the source's order (the first of two equal ids is kept)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # a catalog of fewer batches than actors is fine: say nothing
    warnings.filterwarnings("ignore", "The minimum number of concurrent actors", UserWarning)


@dataclass(frozen=True)
class Precomputed:
    """What the encoder actors computed for one image (by content hash)."""

    digest: str
    vectors: dict[str, Vectors]
    """Encoder id -> the image vector."""
    text: dict[str, Vectors]
    """Product text space -> the vector of the words."""
    broken: str | None = None
    """Why the encoder rejected the image."""

    def covers(self, planned: PlannedItem, text_spaces: dict[str, str]) -> bool:
        """Whether it holds every vector the plan wants for the item."""
        return all(
            e in self.vectors and (e not in text_spaces or text_spaces[e] in self.text)
            for e in planned.needs
        )


# -- the stages (run in Ray workers) -----------------------------------------------------------


def _objects(table: pa.Table, column: str) -> list[Any]:
    return [pickle.loads(b) if b is not None else None for b in table.column(column).to_pylist()]


def _binary(values: Sequence[object]) -> pa.Array:
    import pyarrow as pa

    return pa.array([None if v is None else pickle.dumps(v) for v in values], pa.large_binary())


def read_images(batch: pa.Table, max_bytes: int) -> pa.Table:
    """Stage 1 (tasks): the images read, size-checked and hashed (the local pipeline's
    reading)."""
    import pyarrow as pa

    items: list[SourceItem] = _objects(batch, ITEM)
    raws = _read_batch(iter(items), len(items), max_bytes)
    return pa.table({RAW: _binary(raws)})


class LedgerCheck:
    """Stage 2 (one actor): which encoders each readable image still needs."""

    def __init__(self, catalog: CatalogFactory, versions: dict[str, str], reindex: bool) -> None:
        self._loop = asyncio.new_event_loop()  # the catalog's client stays on one loop
        self._catalog = catalog()
        self._versions = versions
        self._reindex = reindex

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        raws: list[_Raw] = _objects(batch, RAW)
        readable = [r for r in raws if r.failure is None and r.digest is not None]
        ledger: dict[str, dict[str, str]] = {}
        if readable and not self._reindex:
            ids = [r.item.id for r in readable]
            lookup = self._catalog.ledger_entries(list(self._versions), ids)
            ledger = self._loop.run_until_complete(lookup)
        needs = [
            [
                encoder_id
                for encoder_id, version in self._versions.items()
                if ledger.get(encoder_id, {}).get(r.item.id) != versioned_entry(r.digest, version)
            ]
            if r.failure is None and r.digest is not None
            else []
            for r in raws
        ]
        return batch.append_column(NEEDS, pa.array(needs, pa.list_(pa.string())))


class EncodeImages:
    """Stage 3 (the actor pool): one encoder set per actor, built once by the run's
    factory; each batch's images that need it encoded as the local engine does."""

    def __init__(self, factory: EncoderFactory) -> None:
        self._loop = asyncio.new_event_loop()
        self._encoders = list(factory())

    def __call__(self, batch: pa.Table) -> pa.Table:
        raws: list[_Raw] = _objects(batch, RAW)
        needs: list[list[str]] = batch.column(NEEDS).to_pylist()
        planned: dict[str, PlannedItem] = {}
        for raw, need in zip(raws, needs, strict=True):
            content_type = sniff_image_type(raw.data) if raw.data else None
            if not need or raw.digest is None or content_type is None:
                continue
            item = raw.item
            # the first of two equal ids only: the driver keeps the first one
            planned.setdefault(
                item.id,
                PlannedItem(
                    IndexItem(
                        id=item.id,
                        name=item.name,
                        image=raw.data or b"",
                        content_type=content_type,
                        digest=raw.digest,
                        description=item.description,
                        tags=item.tags,
                    ),
                    key="",
                    needs=list(need),
                ),
            )
        plan = BatchPlan(self._encoders, list(planned.values()), [], {}, [], [])
        encoded = self._loop.run_until_complete(encode_plan(plan)) if planned else None
        results: list[Precomputed | None] = []
        for raw in raws:
            item_plan = planned.get(raw.item.id)
            if encoded is None or item_plan is None or item_plan.item.digest != raw.digest:
                results.append(None)
                continue
            pid = raw.item.id
            results.append(
                Precomputed(
                    digest=item_plan.item.digest,
                    vectors={e: v[pid] for e, v in encoded.vectors.items() if pid in v},
                    text={s: v[pid] for s, v in encoded.text_vectors.items() if pid in v},
                    broken=encoded.broken.get(pid),
                )
            )
            planned.pop(pid)  # a later equal id is not this item
        return batch.append_column(ENCODED, _binary(results))


# -- the engine (driver side) ------------------------------------------------------------------


@dataclass(frozen=True)
class RayEngine:
    """A connected Ray and what its stages need from the composition root."""

    ray: ModuleType
    workers: int
    encoders: EncoderFactory
    catalog: CatalogFactory
    window_rows: int = WINDOW_ROWS

    def dataset(
        self, source: Iterator[SourceItem], encoders: Sequence[Encoder], options: IngestOptions
    ) -> Any | None:
        """The pipeline over the source's next ``window_rows`` rows (None when none are
        left). Reads them into the object store a batch at a time."""
        import pyarrow as pa

        ray = self.ray
        size = options.batch_size
        blocks = []
        window = itertools.islice(source, self.window_rows)
        while chunk := list(itertools.islice(window, size)):
            blocks.append(ray.put(pa.table({ITEM: _binary(chunk)})))
        if not blocks:
            return None
        node = ray.get_runtime_context().get_node_id()
        versions = {e.id: encoder_version(e) for e in encoders}
        return (
            ray.data.from_arrow_refs(blocks)
            .map_batches(
                read_images,
                fn_kwargs={"max_bytes": options.max_image_bytes},
                batch_size=size,
                batch_format="pyarrow",
                num_cpus=READ_CPUS,
                compute=ray.data.TaskPoolStrategy(size=-(-self.workers // ENCODERS_PER_READER)),
            )
            .map_batches(
                LedgerCheck,
                fn_constructor_args=(self.catalog, versions, options.reindex),
                batch_size=size,
                batch_format="pyarrow",
                num_cpus=0,
                compute=ray.data.ActorPoolStrategy(size=1),
                # an embedded home's catalog is a file on the driver's machine (pinned as Ray
                # Data pins its local:// reads)
                label_selector={ray._raylet.RAY_NODE_ID_KEY: node},
            )
            .map_batches(
                EncodeImages,
                fn_constructor_args=(self.encoders,),
                batch_size=size,
                batch_format="pyarrow",
                num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=self.workers),
            )
        )


@contextmanager
def ray_engine(
    options: RayOptions, encoders: EncoderFactory, catalog: CatalogFactory
) -> Iterator[RayEngine]:
    """Ray connected (``ray_runtime``); each run's dataset starts ``options.workers``
    encoder actors and stops them when it is done."""
    with ray_runtime(options) as ray:
        yield RayEngine(ray, options.workers, encoders, catalog)


class RayIngestPipeline(IngestPipeline):
    """The local pipeline fed by the Ray Data pipeline: validation, plan, writes, report and
    progress are inherited unchanged; vectors come from the encoder actors."""

    def __init__(self, *args: Any, engine: RayEngine, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine = engine
        self._precomputed: dict[str, Precomputed] = {}
        """By product id, until its batch is planned (a later equal id never overwrites)."""

    async def _produce(
        self,
        source: Iterator[SourceItem],
        queue: asyncio.Queue[_Batch | BaseException | None],
    ) -> None:
        options = self._options
        engine, encoders = self._engine, self._encoders
        try:
            while (
                dataset := await asyncio.to_thread(engine.dataset, source, encoders, options)
            ) is not None:
                batches = iter(
                    dataset.iter_batches(
                        batch_size=options.batch_size,
                        batch_format="pyarrow",
                        prefetch_batches=options.read_ahead,
                    )
                )
                while (table := await asyncio.to_thread(next, batches, None)) is not None:
                    raws: list[_Raw] = _objects(table, RAW)
                    for raw, done in zip(raws, _objects(table, ENCODED), strict=True):
                        if done is not None:
                            self._precomputed.setdefault(raw.item.id, done)
                    await self._fetch_remote(raws)
                    await queue.put(self._validate(raws))
        except Exception as exc:
            await queue.put(exc)
            return
        await queue.put(None)

    async def _vectors(self, plan: BatchPlan) -> EncodedBatch:
        """The actors' vectors for what the plan encodes; the rest (none, usually) encoded
        here."""
        encoded = EncodedBatch(plan, {}, {}, {})
        text_spaces = {
            e.id: product_text_space(e.id) for e in plan.encoders if Modality.TEXT in e.modalities
        }
        rest: list[PlannedItem] = []
        for planned in plan.encode:
            done = self._take(planned.item)
            if done is not None and done.broken is not None:
                encoded.broken[planned.item.id] = done.broken
            elif done is None or not done.covers(planned, text_spaces):
                rest.append(planned)
            else:
                for encoder_id in planned.needs:
                    encoded.vectors.setdefault(encoder_id, {})[planned.item.id] = done.vectors[
                        encoder_id
                    ]
                    if encoder_id in text_spaces:
                        space = text_spaces[encoder_id]
                        encoded.text_vectors.setdefault(space, {})[planned.item.id] = done.text[
                            space
                        ]
        for planned in plan.retag:
            self._take(planned.item)
        for product_id in plan.skipped:
            self._precomputed.pop(product_id, None)
        if rest or plan.reworded:
            here = await self._indexer.encode(
                BatchPlan(plan.encoders, rest, [], {}, [], plan.reworded)
            )
            for encoder_id, rows in here.vectors.items():
                encoded.vectors.setdefault(encoder_id, {}).update(rows)
            for space, rows in here.text_vectors.items():
                encoded.text_vectors.setdefault(space, {}).update(rows)
            encoded.broken.update(here.broken)
        return encoded

    def _take(self, item: IndexItem) -> Precomputed | None:
        done = self._precomputed.pop(item.id, None)
        return done if done is not None and done.digest == item.digest else None
