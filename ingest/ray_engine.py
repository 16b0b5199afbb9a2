"""The Ray engine of ingest (``fashion-search ingest --engine ray``): a Ray Data pipeline,
writing through the same one write use case as the local engine.

The source's rows are run a window of WINDOW_ROWS rows at a time, each window checked
against the ledger before anything heavy happens:

1. **ledger check**: the driver looks the window's ids up in the ledger (one round trip per
   batch); an id the ledger knows has its image read, size-checked and hashed by read tasks
   (``hash_images``, a Ray Dataset of tasks only) that keep no bytes, and compared with
   its entries; an unchanged image goes no further (no bytes carried, no decoding, no
   actor), and the driver counts it skipped once the catalog confirms its product;
2. **read** (``map_batches`` tasks) of the new and changed images only: read (local file,
   zip member or ``s3://`` object), size-checked and hashed; a missing or oversized image
   becomes the item's failure;
3. **encode** (``map_batches`` on an ``ActorPoolStrategy(size=workers)``, one CPU each): one
   encoder set per actor (one ONNX/torch thread each), the items that need it encoded in
   batches (``encode_plan``, as the local engine), an image the encoder rejects marked
   broken; this Dataset is only built (its actors only started) when a window has images
   to encode;
4. **write**, on the driver, in source order: the local pipeline's own validation
   (duplicate ids, image type), then the Indexer's plan (authoritative: it reads the ledger
   and products again), the actors' vectors taken for what the plan encodes (anything they
   did not compute, e.g. an http(s) image fetched by the driver or new words of an unchanged
   image, is encoded on the driver), and the batch written under the home's write lock,
   flushed and recorded in the ledger, in order.

So the guarantees are the local engine's: idempotent by content hash, a crash of the driver
or of a worker costs at most the unacknowledged batches (Ray Data restarts a dead actor and
retries its batch; a rerun skips what the ledger records), bad images in the same report,
progress per written batch. Ray is an optional dependency, imported only by this engine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from domain.errors import FashionSearchError, InvalidImage
from domain.images import content_hash, sniff_image_type
from domain.indexer import (
    BatchPlan,
    EncodedBatch,
    IndexItem,
    PlannedItem,
    encode_image_group,
    encode_words,
    stored_image_key,
)
from domain.model import Modality, product_text_space
from domain.ports import Encoder, PreparingEncoder, Vectors, encoder_version, versioned_entry
from ingest.pipeline import (
    IngestOptions,
    IngestPipeline,
    _Batch,
    _index_item,
    _Raw,
    _read_batch,
)
from ingest.readers import RemoteImage, SourceItem
from ingest.report import IngestSummary

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
ITEM, RAW, NEEDS, ENCODED, EXPECTED = "item", "raw", "needs", "encoded", "expected"
PREPARED, BROKEN = "prepared|", "broken|"
"""Column prefixes of an encoder's prepared arrays and of why it rejected an image."""

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
        import ray.data
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


@contextmanager
def ray_runtime(options: RayOptions) -> Iterator[ModuleType]:
    """Ray, connected: an already initialised runtime is used as is (and left running);
    otherwise the given address, ``RAY_ADDRESS``, or a local Ray started for this run (no
    dashboard, no usage stats, its logs in a temporary directory, removed after a run that
    succeeded and kept after one that failed) and shut down after it."""
    ray = import_ray()
    _quiet_ray_data(ray)
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = options.address or os.environ.get("RAY_ADDRESS")
    logs: str | None = None
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            logs = tempfile.mkdtemp(prefix=RAY_TEMP_DIR_PREFIX)
            ray.init(
                num_cpus=max(os.cpu_count() or 1, options.workers),
                include_dashboard=False,
                log_to_driver=False,
                _temp_dir=logs,
            )
    except (OSError, ValueError) as exc:  # refused, timed out, or a local Ray that cannot start
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray"
        raise RayUnavailable(f"cannot {where}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()
    if logs is not None:  # a nightly run leaves no directory behind
        shutil.rmtree(logs, ignore_errors=True)


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


def hash_images(batch: pa.Table, max_bytes: int, versions: dict[str, str]) -> pa.Table:
    """The ledger check (tasks): each image read, size-checked and hashed against the
    ledger entries the driver looked up (``EXPECTED``); the encoders it still needs. The
    bytes are dropped here, also for the images that need encoding (the encode stage reads
    them again): what comes back is a few hundred bytes a row."""
    import pyarrow as pa

    items: list[SourceItem] = _objects(batch, ITEM)
    expected: list[dict[str, str]] = _objects(batch, EXPECTED)
    raws = _read_batch(iter(items), len(items), max_bytes)
    needs: list[list[str]] = []
    for raw, entries in zip(raws, expected, strict=True):
        if raw.failure is not None or raw.digest is None:
            needs.append([])
            continue
        needs.append(
            [e for e, v in versions.items() if entries.get(e) != versioned_entry(raw.digest, v)]
        )
        raw.content_type = sniff_image_type(raw.data or b"")
        raw.unchanged = not needs[-1]
        raw.data = None
    return pa.table({RAW: _binary(raws), NEEDS: pa.array(needs, pa.list_(pa.string()))})


def _preparing(factory: EncoderFactory) -> list[PreparingEncoder]:
    """The run's encoders that prepare images apart from their networks, built once per
    worker process (no model is loaded to prepare)."""
    key = pickle.dumps(factory)
    if key not in _PREPARING:
        _PREPARING[key] = [e for e in factory() if isinstance(e, PreparingEncoder)]
    return _PREPARING[key]


_PREPARING: dict[bytes, list[PreparingEncoder]] = {}


def _prepared_column(encoder_id: str, name: str) -> str:
    return f"{PREPARED}{encoder_id}|{name}"


def _broken_column(encoder_id: str) -> str:
    return f"{BROKEN}{encoder_id}"


def prepare_images(
    batch: pa.Table, max_bytes: int, factory: EncoderFactory
) -> dict[str, npt.NDArray[Any]]:
    """Stage 1 of the encode pipeline (tasks): the images read, size-checked and hashed (the
    local pipeline's reading), then decoded and preprocessed for each encoder that needs
    them and can prepare apart from its networks (``PreparingEncoder``): arrays the actors
    read from the object store without a copy; an image an encoder rejects is marked broken
    for it. Rows not prepared for an encoder hold zeros."""
    items: list[SourceItem] = _objects(batch, ITEM)
    needs: list[list[str]] = batch.column(NEEDS).to_pylist()
    raws = _read_batch(iter(items), len(items), max_bytes)
    out: dict[str, npt.NDArray[Any]] = {
        RAW: _object_array([pickle.dumps(raw) for raw in raws]),
        NEEDS: _object_array([json.dumps(need) for need in needs]),
    }
    for encoder in _preparing(factory):
        prepared: list[dict[str, npt.NDArray[np.float32]] | None] = []
        broken: list[str] = []
        for raw, need in zip(raws, needs, strict=True):
            arrays, why = None, ""
            if encoder.id in need and raw.data and sniff_image_type(raw.data):
                try:
                    arrays = encoder.prepare_image(raw.data)
                except InvalidImage as exc:
                    why = str(exc) or "the encoder cannot decode this image"
            prepared.append(arrays)
            broken.append(why)
        out[_broken_column(encoder.id)] = _object_array(broken)
        done = [arrays for arrays in prepared if arrays is not None]
        if not done:
            continue
        for name, first in done[0].items():
            blank = np.zeros_like(first)
            out[_prepared_column(encoder.id, name)] = np.stack(
                [arrays[name] if arrays is not None else blank for arrays in prepared]
            )
    return out


def _object_array(values: Sequence[object]) -> npt.NDArray[Any]:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


class EncodeImages:
    """Stage 2 (the actor pool): one encoder set per actor, built once by the run's
    factory; each batch's images that need it encoded as the local engine does: from the
    prepared arrays (only the networks run here), or from the bytes for an encoder that
    does not prepare apart."""

    def __init__(self, factory: EncoderFactory) -> None:
        self._loop = asyncio.new_event_loop()
        self._encoders = list(factory())

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        raws: list[_Raw] = [pickle.loads(b) for b in batch[RAW]]
        planned: dict[str, tuple[int, PlannedItem]] = {}
        for row, (raw, need) in enumerate(zip(raws, batch[NEEDS], strict=True)):
            content_type = sniff_image_type(raw.data) if raw.data else None
            needs = json.loads(need)
            if not needs or raw.digest is None or content_type is None:
                continue
            # the first of two equal ids only: the driver keeps the first one
            if raw.item.id not in planned:
                item = _index_item(raw.item, raw.data or b"", content_type, raw.digest)
                planned[raw.item.id] = (row, PlannedItem(item, key="", needs=needs))
        encoded = self._loop.run_until_complete(self._encode(batch, planned)) if planned else None
        results: list[Precomputed | None] = []
        for raw in raws:
            row_plan = planned.get(raw.item.id)
            if encoded is None or row_plan is None or row_plan[1].item.digest != raw.digest:
                results.append(None)
                continue
            pid = raw.item.id
            vectors, text, broken = encoded
            results.append(
                Precomputed(
                    digest=raw.digest,
                    vectors={e: v[pid] for e, v in vectors.items() if pid in v},
                    text={s: v[pid] for s, v in text.items() if pid in v},
                    broken=broken.get(pid),
                )
            )
            planned.pop(pid)  # a later equal id is not this item
        return {RAW: batch[RAW], ENCODED: _object_array([pickle.dumps(r) for r in results])}

    async def _encode(
        self, batch: dict[str, npt.NDArray[Any]], planned: dict[str, tuple[int, PlannedItem]]
    ) -> tuple[dict[str, dict[str, Vectors]], dict[str, dict[str, Vectors]], dict[str, str]]:
        """Image vectors by encoder, word vectors by text space, broken images (as
        ``encode_plan``: an image one encoder rejects is not encoded by the next ones)."""
        vectors: dict[str, dict[str, Vectors]] = {}
        broken: dict[str, str] = {}
        for encoder in self._encoders:
            group = [
                (row, p)
                for row, p in planned.values()
                if encoder.id in p.needs and p.item.id not in broken
            ]
            if not group:
                continue
            if _broken_column(encoder.id) in batch:
                vectors[encoder.id] = await self._from_prepared(encoder, batch, group, broken)
            else:
                items = [p for _, p in group]
                vectors[encoder.id] = await encode_image_group(encoder, items, broken)
        text: dict[str, dict[str, Vectors]] = {}
        for encoder in self._encoders:
            words = [
                p for _, p in planned.values() if p.item.id not in broken and encoder.id in p.needs
            ]
            if Modality.TEXT in encoder.modalities and words:
                text[product_text_space(encoder.id)] = await encode_words(encoder, words)
        return vectors, text, broken

    @staticmethod
    async def _from_prepared(
        encoder: Encoder,
        batch: dict[str, npt.NDArray[Any]],
        group: list[tuple[int, PlannedItem]],
        broken: dict[str, str],
    ) -> dict[str, Vectors]:
        assert isinstance(encoder, PreparingEncoder)
        reasons = batch[_broken_column(encoder.id)]
        for row, planned in group:
            if reasons[row]:
                broken[planned.item.id] = str(reasons[row])
        ok = [(row, p) for row, p in group if not reasons[row]]
        if not ok:
            return {}
        rows = np.array([row for row, _ in ok])
        prefix = _prepared_column(encoder.id, "")
        every_row = len(rows) == len(reasons) and bool((rows == np.arange(len(rows))).all())
        prepared = {
            column.removeprefix(prefix): values if every_row else values[rows]
            for column, values in batch.items()
            if column.startswith(prefix)
        }
        matrix = await asyncio.to_thread(encoder.encode_prepared, prepared)
        if matrix.shape[0] != len(ok):
            raise FashionSearchError(
                f"encoder {encoder.id!r} returned {matrix.shape[0]} vectors for {len(ok)} images"
            )
        return {p.item.id: matrix[i] for i, (_, p) in enumerate(ok)}


# -- the engine (driver side) ------------------------------------------------------------------


@dataclass
class RayRunStats:
    """What a run sent to Ray (countable: a rerun that changes nothing sends no image to the
    encoders and starts no encoder actor)."""

    images_hashed: int = 0
    """Images read by the ledger check tasks (their bytes dropped there)."""
    images_to_encoders: int = 0
    """Rows given to the encode stage (read again, decoded, encoded by the actors)."""
    encoder_datasets: int = 0
    """Datasets run with an encoder actor pool (each starts ``workers`` actors)."""


@dataclass(frozen=True)
class RayEngine:
    """A connected Ray and what its stages need from the composition root."""

    ray: ModuleType
    workers: int
    encoders: EncoderFactory
    window_rows: int = WINDOW_ROWS

    def _blocks(self, columns: dict[str, Sequence[object]], size: int) -> list[Any]:
        """The rows in the object store, one block per batch (each stage gets one input per
        batch to spread over its workers)."""
        import pyarrow as pa

        rows = len(next(iter(columns.values())))
        return [
            self.ray.put(
                pa.table(
                    {
                        name: _binary(values[start : start + size])
                        if name != NEEDS
                        else pa.array(values[start : start + size], pa.list_(pa.string()))
                        for name, values in columns.items()
                    }
                )
            )
            for start in range(0, rows, size)
        ]

    def _readers(self) -> Any:
        return self.ray.data.TaskPoolStrategy(size=-(-self.workers // ENCODERS_PER_READER))

    def _hashers(self, blocks: int) -> Any:
        """The ledger check runs before any actor: it may take every CPU of the cluster (one
        task per block at most)."""
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        return self.ray.data.TaskPoolStrategy(size=max(min(cpus, blocks), 1))

    def hashed(
        self,
        items: Sequence[SourceItem],
        expected: Sequence[dict[str, str]],
        versions: dict[str, str],
        options: IngestOptions,
    ) -> Iterator[pa.Table]:
        """The ledger check of items the ledger knows (``hash_images``): tasks only, no
        encoder actor; batches of RAW (bytes dropped) and NEEDS, in order."""
        size = options.batch_size
        blocks = self._blocks({ITEM: items, EXPECTED: expected}, size)
        dataset = self.ray.data.from_arrow_refs(blocks).map_batches(
            hash_images,
            fn_kwargs={"max_bytes": options.max_image_bytes, "versions": versions},
            batch_size=size,
            batch_format="pyarrow",
            num_cpus=READ_CPUS,
            compute=self._hashers(len(blocks)),
        )
        return iter(dataset.iter_batches(batch_size=size, batch_format="pyarrow"))

    def encoded(
        self, items: Sequence[SourceItem], needs: Sequence[list[str]], options: IngestOptions
    ) -> Iterator[pa.Table]:
        """Items to encode: read (tasks), encoded (the actor pool); batches of RAW and
        ENCODED, in order."""
        ray, size = self.ray, options.batch_size
        dataset = (
            ray.data.from_arrow_refs(self._blocks({ITEM: items, NEEDS: needs}, size))
            .map_batches(
                prepare_images,
                fn_kwargs={"max_bytes": options.max_image_bytes, "factory": self.encoders},
                batch_size=size,
                batch_format="pyarrow",
                num_cpus=READ_CPUS,
                compute=self._readers(),
            )
            .map_batches(
                EncodeImages,
                fn_constructor_args=(self.encoders,),
                batch_size=size,
                batch_format="numpy",
                zero_copy_batch=True,
                num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=self.workers),
            )
        )
        return iter(
            dataset.iter_batches(
                batch_size=size, batch_format="pyarrow", prefetch_batches=options.read_ahead
            )
        )


@contextmanager
def ray_engine(options: RayOptions, encoders: EncoderFactory) -> Iterator[RayEngine]:
    """Ray connected (``ray_runtime``); each window that has images to encode starts
    ``options.workers`` encoder actors and stops them when it is done."""
    with ray_runtime(options) as ray:
        yield RayEngine(ray, options.workers, encoders)


class _Window:
    """One window's rows in source order, filled in as the stages answer; handed on to the
    validation in batches, in order, as soon as a prefix is complete."""

    def __init__(self, size: int) -> None:
        self.rows: list[_Raw | None] = [None] * size
        """Each row once it is known (read, hashed or encoded), by position."""
        self.sent = 0
        self.to_hash: list[int] = []
        """Positions of the rows whose ids the ledger knows, and their ``expected`` entries."""
        self.expected: list[dict[str, str]] = []
        self.to_encode: list[int] = []
        """Positions of the rows to encode, and each one's ``needs`` (encoder ids)."""
        self.needs: dict[int, list[str]] = {}

    def ready(self, batch_size: int, final: bool) -> Iterator[list[_Raw]]:
        while self.sent < len(self.rows):
            end = min(self.sent + batch_size, len(self.rows))
            if not final and end - self.sent < batch_size:
                return
            chunk = self.rows[self.sent : end]
            if any(raw is None for raw in chunk):
                return
            self.sent = end
            yield [raw for raw in chunk if raw is not None]


class RayIngestPipeline(IngestPipeline):
    """The local pipeline fed by the Ray Data pipeline: validation, plan, writes, report and
    progress are inherited unchanged; vectors come from the encoder actors.

    Each window of source rows is checked against the ledger first: the driver looks the
    ids up (one round trip per batch); images of ids the ledger knows are hashed by read
    tasks that keep no bytes; only new or changed images go on to the encode stage (read
    again, encoded by the actor pool, which is not started when nothing needs encoding).
    Unchanged items reach the writer without their bytes, and are counted as skipped once
    the catalog confirms their product (name, description, tags, image key) is unchanged;
    otherwise their image is read here and goes through the plan as usual."""

    def __init__(self, *args: Any, engine: RayEngine, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine = engine
        self._precomputed: dict[str, Precomputed] = {}
        """By product id, until its batch is planned (a later equal id never overwrites)."""
        self.stats = RayRunStats()

    async def run(self, items: Iterable[SourceItem], total: int | None = None) -> IngestSummary:
        summary = await super().run(items, total)
        summary.engine_counters = asdict(self.stats)  # in the report: what went to Ray
        return summary

    async def _produce(
        self,
        source: Iterator[SourceItem],
        queue: asyncio.Queue[_Batch | BaseException | None],
    ) -> None:
        rows = self._engine.window_rows
        try:
            while items := await asyncio.to_thread(lambda: list(itertools.islice(source, rows))):
                await self._run_window(items, queue)
        except Exception as exc:
            await queue.put(exc)
            return
        await queue.put(None)

    async def _run_window(
        self, items: list[SourceItem], queue: asyncio.Queue[_Batch | BaseException | None]
    ) -> None:
        versions = {e.id: encoder_version(e) for e in self._encoders}
        window = _Window(len(items))
        await self._look_up_ledger(items, window, versions)
        if window.to_hash:
            await self._hash_known(items, window, versions)
        await self._hand_on(window, queue, final=not window.to_encode)
        if window.to_encode:
            await self._encode(items, window, queue)

    async def _look_up_ledger(
        self, items: list[SourceItem], window: _Window, versions: dict[str, str]
    ) -> None:
        """Sort the window's rows: a bad row or an image URL is the driver's (as locally); an
        id the ledger knows is to be hashed; any other is to be encoded by every encoder."""
        options = self._options
        for start in range(0, len(items), options.batch_size):
            local = []
            for at in range(start, min(start + options.batch_size, len(items))):
                item = items[at]
                if item.problem is not None or isinstance(item.image, RemoteImage):
                    window.rows[at] = _read_batch(iter([item]), 1, options.max_image_bytes)[0]
                else:
                    local.append(at)
            ledger: dict[str, dict[str, str]] = {}
            if local and not options.reindex:
                ids = [items[at].id for at in local]
                ledger = await self._catalog.ledger_entries(list(versions), ids)
            for at in local:
                pid = items[at].id
                known = {e: rows[pid] for e, rows in ledger.items() if pid in rows}
                if known:
                    window.to_hash.append(at)
                    window.expected.append(known)
                else:
                    window.to_encode.append(at)
                    window.needs[at] = list(versions)

    async def _hash_known(
        self, items: list[SourceItem], window: _Window, versions: dict[str, str]
    ) -> None:
        """The ledger check by content hash (tasks, no bytes kept): unchanged rows are done,
        new or changed images join the rows to encode (in source order)."""
        self.stats.images_hashed += len(window.to_hash)
        positions = iter(window.to_hash)
        hashed = self._engine.hashed(
            [items[at] for at in window.to_hash], window.expected, versions, self._options
        )
        while (table := await asyncio.to_thread(next, hashed, None)) is not None:
            for raw, need in zip(
                _objects(table, RAW), table.column(NEEDS).to_pylist(), strict=True
            ):
                at = next(positions)
                if raw.failure is None and need:
                    window.to_encode.append(at)
                    window.needs[at] = need
                else:
                    window.rows[at] = raw
        window.to_encode.sort()

    async def _encode(
        self,
        items: list[SourceItem],
        window: _Window,
        queue: asyncio.Queue[_Batch | BaseException | None],
    ) -> None:
        """The rows to encode through the read/prepare tasks and the actor pool; each batch
        handed on as soon as the rows before it are complete."""
        self.stats.images_to_encoders += len(window.to_encode)
        self.stats.encoder_datasets += 1
        encoded = self._engine.encoded(
            [items[at] for at in window.to_encode],
            [window.needs[at] for at in window.to_encode],
            self._options,
        )
        positions = iter(window.to_encode)
        while (table := await asyncio.to_thread(next, encoded, None)) is not None:
            for raw, done in zip(_objects(table, RAW), _objects(table, ENCODED), strict=True):
                window.rows[next(positions)] = raw
                if done is not None:
                    self._precomputed.setdefault(raw.item.id, done)
            await self._hand_on(window, queue, final=False)
        await self._hand_on(window, queue, final=True)

    async def _hand_on(
        self,
        window: _Window,
        queue: asyncio.Queue[_Batch | BaseException | None],
        final: bool,
    ) -> None:
        """The window's next complete batches to the validation and the writer, in order."""
        for raws in window.ready(self._options.batch_size, final):
            await self._fetch_remote(raws)
            batch = self._validate(raws)
            await self._confirm_unchanged(batch)
            await queue.put(batch)

    async def _confirm_unchanged(self, batch: _Batch) -> None:
        """Items the ledger knows by content hash are skipped when the catalog holds their
        product as the source describes it (what the Indexer's plan would decide, but for a
        product stored without a colour histogram: a local ingest rerun adds those); the
        others (new name, tags, ...) have their image read here and are planned as usual."""
        if not batch.unchanged:
            return
        existing = await self._catalog.get_many([i.id for i in batch.unchanged])
        for item in batch.unchanged:
            stored = existing.get(item.id)
            key = stored_image_key(item.id, item.digest, item.content_type, stored)
            # the stored colour histogram is of this very photo (same content hash)
            if stored is not None and stored == item.product(key, stored.colour):
                batch.skipped.append(item.id)
                continue
            source, limit = batch.sources[item.id], self._options.max_image_bytes
            raw = (await asyncio.to_thread(_read_batch, iter([source]), 1, limit))[0]
            if raw.failure is not None:
                batch.failures.append(raw.failure)
                continue
            data = raw.data or b""
            content_type = sniff_image_type(data) or item.content_type
            batch.ready.append(
                replace(item, image=data, digest=content_hash(data), content_type=content_type)
            )
        batch.unchanged.clear()

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
