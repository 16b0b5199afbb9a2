"""Embedded vector index on FAISS: one index per encoder id, persisted under one directory.

Layout and ids
    Each encoder gets its own *space*: a FAISS index, the product id of every row and the
    row's tags. The int64 FAISS id of a vector is its row number in the space, so the stored
    vectors can be read back without a copy (``IndexFlat`` storage) for ``fetch`` and for
    exact re-ranking; product ids map to rows through a dict. Upserting an id appends a new
    row and tombstones the old one; deleting tombstones the row. Tombstones are filtered out
    at query time and dropped by *compaction*: when more than ``compact_dead_fraction`` of
    the rows are dead, the space is rebuilt from its live rows (this is also how HNSW, which
    has no ``remove_ids``, forgets vectors).

Exact or HNSW
    A space with at most ``hnsw_threshold`` live vectors is an ``IndexFlatIP`` (exact inner
    product; vectors are unit length, so that is cosine similarity). When it grows past the
    threshold it is rebuilt as an ``IndexHNSWFlat`` with the inner-product metric; a
    compaction that leaves it at or below the threshold turns it back into a flat index. The
    switch is automatic and invisible to callers. A flat space of ``PREFILTER_MIN_ROWS`` or
    more is scanned through an 8-bit copy first (``int8_copy.Int8Copy``; or a float16 copy,
    ``_Float16Copy``), whose scores only choose the rows the float32 scan then scores: the
    same answers for a fraction of the bytes read.

HNSW storage
    ``hnsw_storage="float32"`` (the default) keeps the vectors as they came. With
    ``"float16"`` an HNSW space stores them as IEEE half floats (``IndexHNSWSQ`` with
    ``QT_fp16``): half the vector bytes, so 1M x 256-d vectors take about 0.8x their float32
    size with the graph instead of 1.3x (see bench/), queries run a little faster and recall
    stays the same; stored vectors (``fetch``) and scores then carry float16 rounding (about
    1e-3). Exact (flat) spaces always store float32. A space keeps the storage it was built
    with until its next rebuild.

HNSW parameters
    ``M=32`` links per node, ``efConstruction=128``, ``efSearch=512`` (raised to ``top_k``
    when larger). Chosen on 50k x 512-d unit vectors, 300 held-out queries, recall@10
    against exact search, 2 busy cores:

    * clustered vectors with a low intrinsic dimension (the shape of real embeddings):
      recall@10 = 1.000 from efSearch=64 up, with either efConstruction;
    * a hard case (200 clusters with isotropic 512-d noise, i.e. a high intrinsic
      dimension): efC=128 gives 0.893 / 0.946 / 0.972 / 0.989 at efSearch 256 / 384 / 512 /
      768; efC=200 gives 0.928 / 0.958 / 0.977 / 0.991 but builds 1.75x slower; M=48 adds
      < 0.01.

    So efSearch=512 keeps recall@10 >= 0.95 even on the hard case, and efC=128 keeps the
    one-off rebuilds (crossing the threshold, compactions) cheap. A query costs about 1-4 ms
    at that size, small next to encoding the query.

Filters
    Tags are stored per row as integer-coded columns (one int32 array per tag key). A filter
    becomes a boolean mask over rows (live rows only), which is pushed down to FAISS as an
    ``IDSelectorBitmap`` in ``SearchParameters``. With HNSW a selective filter would starve
    the graph walk, so: a selection of at most ``exact_filter_limit`` rows is searched
    exactly (a matrix product over the selected rows); a larger one runs HNSW with
    ``efSearch`` scaled by the inverse selectivity, and falls back to the exact search
    whenever HNSW returns fewer than ``top_k`` results. ``top_k`` results always come back
    when that many rows match.

Persistence: a snapshot plus an append-only log per space
    Each space lives in ``<slug>-<hash>.npz`` (the encoder id is mapped to a safe file
    name; the exact id is stored inside), its *snapshot*: the serialised FAISS index, the
    row ids and the tag columns, with the snapshot's *epoch*; and in ``<slug>-<hash>.<epoch>.log``,
    the changes (upserts, deletes) made since that snapshot, as checksummed records (see
    delta_log.py). Loading reads the snapshot and replays its log. ``flush()`` appends the
    changes made since the last flush to the log with one write and one fsync, so it costs
    about the size of the changes, not of the index: cheap enough for every ingest batch and
    every mutation. When the log grows past ``fold_fraction`` of the snapshot (and at least
    ``fold_min_bytes``), the flush *folds* instead: it writes the whole space as a snapshot
    of the next epoch (an empty log of that epoch first, then the snapshot through a
    temporary file, fsync and ``os.replace``), then removes the old log. A crash at any point
    leaves a snapshot and its complete log, plus at most a torn record at the log's end,
    which loading ignores and the next writer cuts off; nothing a ``flush()`` returned from
    is lost. A space whose vectors are all deleted has its files removed. Spaces load
    lazily on first use.

Several processes: readers pick up new generations, writers never write back stale copies
    Every flush ends by bumping a counter in ``generation`` (a tiny file replaced
    atomically). Each call (query, count, upsert, ...) first reads it, with the folder's
    mtime and the size of each loaded log (a few stat calls, microseconds; the sizes also
    reveal records of a writer killed before its bump). When any of them changed, the
    index re-syncs with the files: for a space whose snapshot is the
    one it has loaded it replays only the new log records, otherwise it loads the new
    snapshot. So serving workers see what an ingest or another worker wrote, without a
    restart, at the cost of the records written since. Changes are kept as records until
    flushed, and a flush holds an exclusive ``flock`` on ``.flush.lock`` while it re-syncs
    with the files, applies its own records on top (reloading the space first when another
    process wrote to it meanwhile) and appends them: a process only ever adds its own
    changes to the newest files and never rewrites a space from a stale copy, and
    ``close()`` only flushes what the process itself changed. (The home's writers are also
    serialised one level up, by the ``WriteLock`` held around each batch; this lock keeps
    the index consistent on its own.)

Concurrency within a process
    All state sits behind one ``threading.RLock``; the async methods run their work in a
    worker thread (``asyncio.to_thread``) so index builds, searches and file writes never
    block the event loop. ``flush`` collects its records under the lock and writes the files
    outside it (under a separate flush lock), so queries keep running during the disk write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from domain.errors import BadInput
from domain.model import ProductFilter
from domain.ports import SpaceQuery, Vectors
from stores._util import atomic_write_bytes, fsync_dir, remove_orphaned_tmp_files, safe_name
from stores.locks import exclusive_flock
from stores.vectors.delta_log import Change, decode
from stores.vectors.int8_copy import Int8Copy

# faiss ships partial stubs (no SearchParametersHNSW, IndexFlat.get_xb, ...): use it untyped.
faiss: Any = _faiss

Kind = Literal["flat", "hnsw"]
Storage = Literal["float32", "float16"]
Prefilter = Literal["int8", "float16", "off"]
PREFILTERS: tuple[Prefilter, ...] = ("int8", "float16", "off")

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
"""Format 1 (before the logs) is a snapshot of epoch 0 with no log."""
FILE_SUFFIX = ".npz"
LOG_SUFFIX = ".log"
GENERATION_FILE = "generation"
FLUSH_LOCK_FILE = ".flush.lock"
DEFAULT_FOLD_MIN_BYTES = 32 * 1024 * 1024
DEFAULT_FOLD_FRACTION = 0.5
MAX_SYNC_ATTEMPTS = 5

DEFAULT_HNSW_THRESHOLD = 100_000
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_EF_SEARCH = 512
DEFAULT_EXACT_FILTER_LIMIT = 20_000
DEFAULT_COMPACT_DEAD_FRACTION = 0.25
MAX_EF_SEARCH = 4096
PREFILTER_MIN_ROWS = 4096
"""A flat space of at least this many rows is scanned in 8 bits or float16 first."""
PREFILTER_MARGIN = 32
"""The float16 scan returns top_k plus this many (or half top_k, when more) candidates;
with no more rows than that to choose from, either prefilter leaves the full scan."""
FLOAT16_CHUNK_ROWS = 8192
KERNEL_CHECK_ROWS = 512
"""Rows ``_kernel_agrees`` compares."""
THRESHOLD_SAMPLE_PER_ROW = 8
THRESHOLD_SAMPLE_MIN = 1024
"""The 8-bit pass's cut is found on a sample of its lower bounds holding this many values
per row asked, and at least THRESHOLD_SAMPLE_MIN (``_cut``)."""
RESCORE_WITH_KERNEL = True
"""The 8-bit pass's candidates are scored with FAISS's inner-product kernel on their rows
(``fvec_inner_products_by_idx``: the kernel the flat scan scores with, checked once per
copy, ``_kernel_agrees``) instead of a flat search restricted to them, which visits every
row of the space to test the selector. False: the restricted search (the public path)."""
FLOAT32_ROUNDING = 2.0**-24
FLOAT16_MAX = 65504.0

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Identity = tuple[int, int, int]
"""(inode, mtime in ns, size) of a snapshot file: a replaced snapshot has another one."""
Signature = tuple[str, int, tuple[int, ...]]
"""(generation, folder mtime in ns, size of each loaded log): see ``_signature``."""


@dataclass
class _OnDisk:
    """The files a loaded space was read from, and how much of its log is applied."""

    identity: Identity
    epoch: int
    log_offset: int
    snapshot_bytes: int


class _Moved(Exception):
    """A snapshot's log vanished while being read: another process folded the space."""


class _Column:
    """A growable 1-D array (amortised O(1) appends)."""

    def __init__(self, dtype: npt.DTypeLike, fill: Any, size: int = 0) -> None:
        self._fill = fill
        self._buf: npt.NDArray[Any] = np.full(max(16, size), fill, dtype=dtype)
        self._n = size

    @classmethod
    def of(cls, values: npt.NDArray[Any], fill: Any) -> _Column:
        column = cls(values.dtype, fill, 0)
        column.extend(values)
        return column

    def __len__(self) -> int:
        return self._n

    @property
    def values(self) -> npt.NDArray[Any]:
        return self._buf[: self._n]

    def extend(self, values: npt.NDArray[Any]) -> None:
        needed = self._n + len(values)
        if needed > len(self._buf):
            grown = np.full(max(needed, 2 * len(self._buf)), self._fill, dtype=self._buf.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : needed] = values
        self._n = needed

    def __setitem__(self, row: int, value: Any) -> None:
        self._buf[row] = value

    def take(self, rows: IntArray) -> _Column:
        return _Column.of(self.values[rows], self._fill)


class _Float16Copy:
    """A float16 copy of a flat space's vectors, scanned before the float32 rows so that an
    exact search reads half the bytes (a flat scan is bound by memory, not arithmetic) and
    still answers exactly what the float32 scan alone answers.

    Each float16 score is within ``bound`` of the float32 score FAISS computes for the row:
    Cauchy-Schwarz on the rounding (the largest ``|x - half(x)|`` of any row, times ``|q|``)
    plus the rounding of two float32 dot products (``2 d u |q| |x|``, doubled for safety). So
    a row can be in the float32 top k only if its float16 score is at least the k-th best
    float16 score minus twice the bound; those candidates (a few more than k for real
    embeddings) are scored by the same float32 scan restricted to them, which FAISS
    computes, orders and breaks ties exactly as the full scan (tested). When the float16
    top list is too short to hold every candidate, the full scan answers instead.

    Built on the first search of the space (in a serving process only), extended as rows
    are appended, rebuilt when the flat index is replaced (a compaction). Memory: half the
    space's vector bytes."""

    def __init__(self, source: Any, dim: int) -> None:
        self.source = source  # the flat index it copies
        self.index = faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        self.rows = 0
        self.residual = 0.0
        """The largest distance between a row and its float16 copy."""
        self.norm = 0.0
        """The largest norm of a row or of its float16 copy."""
        self.usable = True

    def extend(self, vectors: Vectors) -> None:
        wide = np.asarray(vectors, dtype=np.float64)
        if not len(wide):
            return
        if float(np.abs(wide).max()) >= FLOAT16_MAX:
            self.usable = False  # not representable in float16: the full scan answers
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        stored = faiss.rev_swig_ptr(self.index.codes.data(), int(self.index.codes.size()))
        halves = stored.view(np.float16).reshape(-1, self.index.d)[self.rows :].astype(np.float64)
        self.residual = max(self.residual, float(np.linalg.norm(wide - halves, axis=1).max()))
        norms = (np.linalg.norm(wide, axis=1).max(), np.linalg.norm(halves, axis=1).max())
        self.norm = max(self.norm, *map(float, norms))
        self.rows += len(wide)

    def bound(self, query: Vectors) -> float:
        """How far a float16 score may be from the float32 one, for this query."""
        size = float(np.linalg.norm(query.astype(np.float64)))
        rounding = 2 * 2 * int(self.index.d) * FLOAT32_ROUNDING * size * self.norm
        return (size * self.residual + rounding) * (1 + 1e-6) + 1e-9


class _Space:
    """The vectors of one encoder. Not thread-safe: the owning index holds the lock."""

    def __init__(self, encoder_id: str, dim: int, index: Any, kind: Kind) -> None:
        self.encoder_id = encoder_id
        self.dim = dim
        self.index = index
        self.kind: Kind = kind
        self.ids: list[str | None] = []  # per row; None for a tombstone
        self.rows: dict[str, int] = {}  # live product id -> row
        self.live = _Column(np.bool_, False)
        self.tag_codes: dict[str, _Column] = {}  # key -> int32 code per row (-1: absent)
        self.tag_values: dict[str, dict[str, int]] = {}  # key -> value -> code
        self.disk: _OnDisk | None = None  # None: not on disk (yet, or any more)
        self.pending: list[Change] = []  # applied here, not flushed yet
        self.fold_wanted = False  # write a snapshot at the next flush (after a compaction)
        self.half: _Float16Copy | None = None  # see float16_copy
        self.eight: Int8Copy | None = None  # see int8_copy
        self.kernel_checked: tuple[Any, bool] | None = None  # see _kernel_agrees

    # -- sizes ---------------------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @property
    def n_live(self) -> int:
        return len(self.rows)

    @property
    def n_dead(self) -> int:
        return self.n_rows - self.n_live

    def vectors(self) -> npt.NDArray[np.float32] | npt.NDArray[np.float16]:
        """Every stored row, as a zero-copy view of FAISS's storage (valid until the next
        add or rebuild): float32, or float16 for an HNSW space with float16 storage."""
        storage = self.index if self.kind == "flat" else faiss.downcast_index(self.index.storage)
        n = int(storage.ntotal)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if isinstance(storage, faiss.IndexScalarQuantizer):  # QT_fp16: IEEE halves, row-major
            codes = faiss.rev_swig_ptr(storage.codes.data(), n * int(storage.code_size))
            half: npt.NDArray[np.float16] = codes.view(np.float16).reshape(n, self.dim)
            return half
        view: Vectors = faiss.rev_swig_ptr(storage.get_xb(), n * self.dim).reshape(n, self.dim)
        return view

    def float16_copy(self) -> _Float16Copy | None:
        """The flat space's float16 copy, brought up to date; None for HNSW or small spaces."""
        if self.kind != "flat" or self.n_rows < PREFILTER_MIN_ROWS:
            return None
        copy = self.half
        if copy is None or copy.source is not self.index or copy.rows > self.n_rows:
            copy = self.half = _Float16Copy(self.index, self.dim)
        while copy.rows < self.n_rows:  # in chunks: float64 temporaries of a bounded size
            chunk = self.vectors()[copy.rows : copy.rows + FLOAT16_CHUNK_ROWS]
            copy.extend(np.asarray(chunk, dtype=np.float32))
        return copy if copy.usable else None

    def int8_copy(self) -> Int8Copy | None:
        """The flat space's 8-bit copy, rebuilt when it is stale; None for HNSW, small spaces
        or a copy whose integer products were not exact."""
        if self.kind != "flat" or self.n_rows < PREFILTER_MIN_ROWS:
            return None
        copy = self.eight
        if copy is None or copy.stale(self.index, self.n_rows):
            copy = self.eight = Int8Copy(self.index, self.vectors(), self.live.values)
        return copy if copy.usable else None

    def take(self, rows: IntArray) -> Vectors:
        """float32 copies of the given rows, whatever the storage."""
        taken: Vectors = np.ascontiguousarray(self.vectors()[rows], dtype=np.float32)
        return taken

    # -- writes --------------------------------------------------------------------------

    def add(self, ids: Sequence[str], vectors: Vectors, tags: Sequence[Mapping[str, str]]) -> None:
        """Append rows (ids unique within the call), tombstoning earlier rows of those ids."""
        for pid in ids:
            old = self.rows.pop(pid, None)
            if old is not None:
                self._tombstone(old)
        first = self.n_rows
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        pending: dict[str, npt.NDArray[np.int32]] = {
            key: np.full(len(ids), -1, dtype=np.int32) for key in self.tag_codes
        }
        for j, row_tags in enumerate(tags):
            for key, value in row_tags.items():
                key, value = str(key), str(value)
                if key not in pending:
                    pending[key] = np.full(len(ids), -1, dtype=np.int32)
                    self.tag_codes[key] = _Column(np.int32, -1, first)
                    self.tag_values[key] = {}
                codes = self.tag_values[key]
                pending[key][j] = codes.setdefault(value, len(codes))
        for key, codes_of_batch in pending.items():
            self.tag_codes[key].extend(codes_of_batch)
        for offset, pid in enumerate(ids):
            self.rows[pid] = first + offset
        self.ids.extend(ids)
        self.live.extend(np.ones(len(ids), dtype=np.bool_))

    def apply(self, change: Change) -> None:
        if change.operation == "upsert":
            assert change.vectors is not None
            self.add(change.ids, change.vectors, change.tags)
        else:
            self.remove(change.ids)

    def remove(self, ids: Sequence[str]) -> int:
        removed = 0
        for pid in ids:
            row = self.rows.pop(pid, None)
            if row is not None:
                self._tombstone(row)
                removed += 1
        return removed

    def _tombstone(self, row: int) -> None:
        self.ids[row] = None
        self.live[row] = False

    def rebuild(self, index: Any, kind: Kind) -> None:
        """Replace the index with ``index`` (empty, same dim) holding the live rows only."""
        keep: IntArray = np.flatnonzero(self.live.values).astype(np.int64)
        if len(keep):
            index.add(self.take(keep))
        self.index = index
        self.kind = kind
        kept_ids = [self.ids[int(r)] for r in keep]
        self.ids = kept_ids
        self.rows = {pid: i for i, pid in enumerate(kept_ids) if pid is not None}
        self.live = _Column(np.bool_, False)
        self.live.extend(np.ones(len(keep), dtype=np.bool_))
        self.tag_codes = {key: column.take(keep) for key, column in self.tag_codes.items()}

    # -- reads ---------------------------------------------------------------------------

    def selection(self, flt: ProductFilter | None) -> BoolArray | None:
        """Rows a query may return; None when every row may (no filter, no tombstones)."""
        if (flt is None or flt.is_empty) and self.n_dead == 0:
            return None
        mask: BoolArray = self.live.values.copy()
        if flt is None:
            return mask
        for key, value in flt.equals.items():
            code = self.tag_values.get(key, {}).get(value)
            if code is None:
                return np.zeros(self.n_rows, dtype=np.bool_)
            mask &= self.tag_codes[key].values == code
        for key, values in flt.any_of.items():
            known = self.tag_values.get(key, {})
            codes = [known[v] for v in values if v in known]
            if not codes:
                return np.zeros(self.n_rows, dtype=np.bool_)
            mask &= np.isin(self.tag_codes[key].values, np.asarray(codes, dtype=np.int32))
        return mask

    # -- persistence ---------------------------------------------------------------------

    def to_bytes(self, epoch: int) -> bytes:
        keys = sorted(self.tag_codes)
        meta = {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "encoder_id": self.encoder_id,
            "dim": self.dim,
            "kind": self.kind,
            "ids": self.ids,
            "tag_keys": keys,
            "tag_values": {
                key: sorted(self.tag_values[key], key=self.tag_values[key].__getitem__)
                for key in keys
            },
        }
        arrays: dict[str, npt.NDArray[Any]] = {
            "index": faiss.serialize_index(self.index),
            "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        }
        for i, key in enumerate(keys):
            arrays[f"tag_{i}"] = self.tag_codes[key].values
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_file(cls, handle: IO[bytes], path: Path) -> tuple[_Space, int]:
        """The space a snapshot holds, and the snapshot's epoch."""
        try:
            with np.load(handle, allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes().decode("utf-8"))
                if meta.get("format") not in READABLE_FORMATS:
                    raise ValueError(f"unsupported format {meta.get('format')!r}")
                index = faiss.deserialize_index(np.ascontiguousarray(data["index"]))
                keys: list[str] = meta["tag_keys"]
                columns = {
                    key: _Column.of(data[f"tag_{i}"].astype(np.int32), -1)
                    for i, key in enumerate(keys)
                }
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise RuntimeError(f"cannot load the vector index file {path}: {exc}") from exc
        space = cls(str(meta["encoder_id"]), int(meta["dim"]), index, meta["kind"])
        space.ids = list(meta["ids"])
        if int(index.ntotal) != len(space.ids):
            raise RuntimeError(f"vector index file {path} is inconsistent (rows and ids differ)")
        space.rows = {pid: row for row, pid in enumerate(space.ids) if pid is not None}
        space.live = _Column.of(
            np.fromiter((pid is not None for pid in space.ids), dtype=np.bool_), False
        )
        space.tag_codes = columns
        space.tag_values = {
            key: {value: code for code, value in enumerate(values)}
            for key, values in meta["tag_values"].items()
        }
        return space, int(meta.get("epoch", 0))


@dataclass(frozen=True)
class _Step:
    """What one flush writes for one space."""

    space: _Space
    changes: list[Change]
    fold: bool  # a fold was asked for (compaction)
    action: Literal["append", "fold", "remove"]
    data: bytes  # the records to append, or the snapshot
    path: Path  # the snapshot's
    disk: _OnDisk | None  # the files before the step
    obsolete: list[Path]  # files the step removes
    epoch: int = 0  # of the new snapshot (fold)


_file_stem = functools.lru_cache(maxsize=1024)(safe_name)
"""safe_name hashes the id: cached, as the per-call check names each space's log."""


def _identity(stat: os.stat_result) -> Identity:
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class FaissVectorIndex:
    """The embedded ``VectorIndex`` (see the module docstring for the design)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
        exact_filter_limit: int = DEFAULT_EXACT_FILTER_LIMIT,
        compact_dead_fraction: float = DEFAULT_COMPACT_DEAD_FRACTION,
        durable: bool = True,
        hnsw_storage: Storage = "float32",
        fold_min_bytes: int = DEFAULT_FOLD_MIN_BYTES,
        fold_fraction: float = DEFAULT_FOLD_FRACTION,
        prefilter: Prefilter = "int8",
    ) -> None:
        """``prefilter``: flat spaces scan an 8-bit copy (``Int8Copy``) or a float16 copy
        (``_Float16Copy``) first, for the same answers; "off": the float32 rows only."""
        if hnsw_threshold < 1:
            raise ValueError("hnsw_threshold must be at least 1")
        if not 0.0 < compact_dead_fraction < 1.0:
            raise ValueError("compact_dead_fraction must be between 0 and 1")
        if hnsw_storage not in ("float32", "float16"):
            raise ValueError("hnsw_storage must be 'float32' or 'float16'")
        if prefilter not in PREFILTERS:
            raise ValueError(f"prefilter must be one of {', '.join(PREFILTERS)}")
        if fold_min_bytes < 0 or fold_fraction < 0:
            raise ValueError("fold_min_bytes and fold_fraction must not be negative")
        self.directory = Path(directory)
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.exact_filter_limit = exact_filter_limit
        self.compact_dead_fraction = compact_dead_fraction
        self.durable = durable
        self.hnsw_storage: Storage = hnsw_storage
        self.fold_min_bytes = fold_min_bytes
        self.fold_fraction = fold_fraction
        self.prefilter: Prefilter = prefilter
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._spaces: dict[str, _Space] | None = None  # loaded lazily
        self._seen: Signature | None = None  # of the files the spaces reflect
        self._flushing = False  # this process is writing the files (no re-sync meanwhile)
        self._side: ThreadPoolExecutor | None = None  # query_several_now's second core

    # -- the port (async) ----------------------------------------------------------------

    async def upsert(
        self,
        encoder_id: str,
        ids: Sequence[str],
        vectors: Vectors,
        metadata: Sequence[Mapping[str, str]],
    ) -> None:
        await asyncio.to_thread(self.upsert_sync, encoder_id, ids, vectors, metadata)

    async def query(
        self,
        encoder_id: str,
        vector: Vectors,
        top_k: int,
        filter: ProductFilter | None = None,
    ) -> list[tuple[str, float]]:
        return await asyncio.to_thread(self.query_sync, encoder_id, vector, top_k, filter)

    async def query_several(self, queries: Sequence[SpaceQuery]) -> list[list[tuple[str, float]]]:
        return await asyncio.to_thread(self.query_several_sync, queries)

    async def fetch(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors]:
        return await asyncio.to_thread(self.fetch_sync, encoder_id, ids)

    async def delete(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        await asyncio.to_thread(self.delete_sync, ids, encoder_id)

    async def count(self, encoder_id: str | None = None) -> int:
        return await asyncio.to_thread(self.count_sync, encoder_id)

    async def encoder_ids(self) -> list[str]:
        return await asyncio.to_thread(self.encoder_ids_sync)

    async def flush(self) -> None:
        await asyncio.to_thread(self.flush_sync)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    async def compact(self, encoder_id: str | None = None) -> None:
        """Drop tombstones now (and pick flat or HNSW by size) instead of waiting for the
        dead fraction to reach ``compact_dead_fraction``; the next flush writes a snapshot."""
        await asyncio.to_thread(self.compact_sync, encoder_id)

    # -- the same, synchronous (for scripts, benchmarks and the worker threads) ----------

    def upsert_sync(
        self,
        encoder_id: str,
        ids: Sequence[str],
        vectors: Vectors,
        metadata: Sequence[Mapping[str, str]],
    ) -> None:
        matrix = _as_matrix(vectors)
        ids = [str(pid) for pid in ids]
        if not (len(ids) == matrix.shape[0] == len(metadata)):
            raise BadInput(
                f"upsert needs as many ids ({len(ids)}), vectors ({matrix.shape[0]}) "
                f"and metadata ({len(metadata)})"
            )
        if not ids:
            return
        if any(not pid for pid in ids):
            raise BadInput("vector ids must be non-empty")
        if not np.isfinite(matrix).all():
            raise BadInput("vectors contain NaN or infinite values")
        # The last occurrence of an id within one call wins.
        last = {pid: j for j, pid in enumerate(ids)}
        if len(last) != len(ids):
            keep = sorted(last.values())
            ids = [ids[j] for j in keep]
            matrix = matrix[keep]
            metadata = [metadata[j] for j in keep]
        with self._lock:
            spaces = self._refresh()
            space = spaces.get(encoder_id)
            if space is None:
                space = self._empty_space(encoder_id, matrix.shape[1])
                spaces[encoder_id] = space
            elif space.dim != matrix.shape[1]:
                raise BadInput(
                    f"encoder {encoder_id!r} has {space.dim}-d vectors, got {matrix.shape[1]}-d"
                )
            self._record(space, Change.upsert(ids, matrix, metadata))

    def query_sync(
        self,
        encoder_id: str,
        vector: Vectors,
        top_k: int,
        filter: ProductFilter | None = None,
    ) -> list[tuple[str, float]]:
        query = _as_query(vector)
        with self._lock:
            return self._query(self._refresh(), encoder_id, query, top_k, filter)

    def query_now(
        self,
        encoder_id: str,
        vector: Vectors,
        top_k: int,
        filter: ProductFilter | None = None,
    ) -> list[tuple[str, float]] | None:
        """``query_sync`` when the spaces are loaded and current and no other thread holds
        them (an upsert, a flush or a compaction may take seconds): None instead of waiting
        (or re-syncing with the files, which is left to a worker thread)."""
        query = _as_query(vector)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._spaces is None or self._signature() != self._seen:
                return None
            return self._query(self._spaces, encoder_id, query, top_k, filter)
        finally:
            self._lock.release()

    def fetch_now(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors] | None:
        """``fetch_sync`` when the spaces are loaded and current and no other thread holds
        them: None instead of waiting (as ``query_now``)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._spaces is None or self._signature() != self._seen:
                return None
            return self._fetch(self._spaces, encoder_id, ids)
        finally:
            self._lock.release()

    def query_several_sync(self, queries: Sequence[SpaceQuery]) -> list[list[tuple[str, float]]]:
        """``query_sync`` of each, in one hold of the lock."""
        vectors = [_as_query(q.vector) for q in queries]
        with self._lock:
            spaces = self._refresh()
            return [
                self._query(spaces, q.space, v, q.top_k, q.filter)
                for q, v in zip(queries, vectors, strict=True)
            ]

    def query_several_now(
        self, queries: Sequence[SpaceQuery]
    ) -> list[list[tuple[str, float]]] | None:
        """``query_several_sync`` when ``query_now`` would answer, the first query on the
        calling thread and the others meanwhile on a second thread (FAISS releases the GIL
        while it scans, so two spaces take about the time of one on two idle cores)."""
        vectors = [_as_query(q.vector) for q in queries]
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._spaces is None or self._signature() != self._seen:
                return None
            asks = [
                (self._spaces, q.space, v, q.top_k, q.filter)
                for q, v in zip(queries, vectors, strict=True)
            ]
            if len(asks) < 2 or len({q.space for q in queries}) < len(queries):
                return [self._query(*ask) for ask in asks]  # a space is one thread's at a time
            others: list[Future[list[tuple[str, float]]]] = [
                self._side_thread().submit(self._query, *ask) for ask in asks[1:]
            ]
            try:
                first = self._query(*asks[0])
            finally:
                wait_all(others)  # the lock guards what they read until they are done
            return [first, *(f.result() for f in others)]
        finally:
            self._lock.release()

    def _side_thread(self) -> ThreadPoolExecutor:
        """Lock held."""
        if self._side is None:
            self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss-side")
        return self._side

    def _query(
        self,
        spaces: dict[str, _Space],
        encoder_id: str,
        query: Vectors,
        top_k: int,
        filter: ProductFilter | None,
    ) -> list[tuple[str, float]]:
        """Lock held."""
        space = spaces.get(encoder_id)
        if space is None or space.n_live == 0 or top_k <= 0:
            return []
        if query.shape[1] != space.dim:
            raise BadInput(
                f"encoder {encoder_id!r} has {space.dim}-d vectors, got a {query.shape[1]}-d query"
            )
        mask = space.selection(filter)
        available = space.n_live if mask is None else int(np.count_nonzero(mask))
        k = min(top_k, available)
        if k == 0:
            return []
        with _one_omp_thread():
            rows, scores = self._ranked(space, query, k, mask, available)
        ids = space.ids
        return [
            (pid, float(score))
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
            if row >= 0 and (pid := ids[row]) is not None
        ]

    def fetch_sync(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors]:
        with self._lock:
            return self._fetch(self._refresh(), encoder_id, ids)

    @staticmethod
    def _fetch(
        spaces: Mapping[str, _Space], encoder_id: str, ids: Sequence[str]
    ) -> dict[str, Vectors]:
        space = spaces.get(encoder_id)
        if space is None:
            return {}
        found = {pid: row for pid in ids if (row := space.rows.get(pid)) is not None}
        if not found:
            return {}
        taken = space.take(np.fromiter(found.values(), dtype=np.int64, count=len(found)))
        return {pid: taken[i] for i, pid in enumerate(found)}

    def delete_sync(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        if not ids:
            return
        with self._lock:
            spaces = self._refresh()
            targets = [encoder_id] if encoder_id is not None else list(spaces)
            for name in targets:
                space = spaces.get(name)
                if space is None:
                    continue
                present = [pid for pid in dict.fromkeys(ids) if pid in space.rows]
                if present:
                    self._record(space, Change.delete(present))

    def count_sync(self, encoder_id: str | None = None) -> int:
        with self._lock:
            spaces = self._refresh()
            if encoder_id is not None:
                space = spaces.get(encoder_id)
                return space.n_live if space is not None else 0
            return sum(space.n_live for space in spaces.values())

    def encoder_ids_sync(self) -> list[str]:
        with self._lock:
            return sorted(name for name, space in self._refresh().items() if space.n_live)

    def kind(self, encoder_id: str) -> Kind | None:
        """ "flat" or "hnsw" for an encoder with vectors here (for tests and diagnostics)."""
        with self._lock:
            space = self._refresh().get(encoder_id)
            return space.kind if space is not None else None

    def compact_sync(self, encoder_id: str | None = None) -> None:
        with self._lock:
            spaces = self._refresh()
            for name in [encoder_id] if encoder_id is not None else list(spaces):
                space = spaces.get(name)
                if space is not None:
                    self._rebuild(space)
                    space.fold_wanted = True

    def flush_sync(self) -> None:
        """Append every change this process made since its last flush to the files (or fold;
        see the module docstring), durably, then tell the other processes (generation)."""
        with self._flush_lock:
            with self._lock:
                if self._spaces is None or not any(
                    s.pending or s.fold_wanted for s in self._spaces.values()
                ):
                    return
            self.directory.mkdir(parents=True, exist_ok=True)
            with exclusive_flock(self.directory / FLUSH_LOCK_FILE):
                with self._lock:
                    spaces = self._refresh(force=True)  # other processes' records first
                    steps = [
                        self._plan(space)
                        for space in spaces.values()
                        if space.pending or space.fold_wanted
                    ]
                    self._flushing = True
                try:
                    written = [self._write(step) for step in steps]
                    self._bump_generation()
                    for step in steps:
                        if step.action == "fold":  # the old log, once the new is announced
                            self._remove_files(step.obsolete)
                except BaseException:
                    with self._lock:
                        for step in steps:
                            step.space.pending[:0] = step.changes
                            step.space.fold_wanted = step.space.fold_wanted or step.fold
                        self._seen = None  # re-sync with whatever was written
                        self._flushing = False
                    raise
                with self._lock:
                    for step, disk in zip(steps, written, strict=True):
                        step.space.disk = disk
                    self._seen = self._signature()  # the files hold exactly this state
                    self._flushing = False

    def close_sync(self) -> None:
        """Flush this process's own changes (never a stale copy of the others') and forget."""
        self.flush_sync()
        with self._lock:
            self._spaces = None
            self._seen = None
            side, self._side = self._side, None
        if side is not None:
            side.shutdown(wait=True)

    # -- internals: changes (lock held) --------------------------------------------------

    def _record(self, space: _Space, change: Change) -> None:
        self._apply(space, change)
        space.pending.append(change)

    def _apply(self, space: _Space, change: Change) -> None:
        space.apply(change)
        self._maintain(space)

    def _empty_space(self, encoder_id: str, dim: int) -> _Space:
        return _Space(encoder_id, dim, self._new_index("flat", dim), "flat")

    # -- internals: reading the files (lock held) ----------------------------------------

    def _read_generation(self) -> str:
        try:
            fd = os.open(self.directory / GENERATION_FILE, os.O_RDONLY)
        except FileNotFoundError:
            return ""
        try:
            return os.read(fd, 64).decode("ascii", errors="replace")
        finally:
            os.close(fd)

    def _signature(self) -> Signature:
        """What changes whenever another process changes the files: the generation (bumped
        by every flush), the folder's mtime (a snapshot written, replaced or removed) and the
        size of each loaded log (records appended, even by a writer killed before it could
        bump the generation). A few stat calls: cheap enough for every call."""
        try:
            folder = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            folder = 0
        sizes: list[int] = []
        for name, space in sorted((self._spaces or {}).items()):
            if space.disk is not None:
                log = self._log_path(self._path(name), space.disk.epoch)
                try:
                    sizes.append(os.stat(log).st_size)
                except FileNotFoundError:
                    sizes.append(0)  # a snapshot from before the logs
        return self._read_generation(), folder, tuple(sizes)

    def _as_read(self, before: Signature) -> Signature:
        """The signature of what a sync that started at ``before`` has read: the log sizes
        are the bytes applied, so anything past them (a record being appended right now,
        one whose writer died before its bump) makes the next call look again."""
        applied = tuple(
            space.disk.log_offset
            for _, space in sorted((self._spaces or {}).items())
            if space.disk is not None
        )
        return before[0], before[1], applied

    def _refresh(self, *, force: bool = False) -> dict[str, _Space]:
        """The spaces, brought up to date with the files when another process changed them
        (or always, with ``force``)."""
        if self._spaces is None:
            self._spaces = {}
            self._seen = None
            remove_orphaned_tmp_files(self.directory)
        if self._flushing and not force:
            return self._spaces  # this process is writing: its own state is the newest
        signature = self._signature()
        if not force and signature == self._seen:
            return self._spaces
        for _ in range(MAX_SYNC_ATTEMPTS):
            # Taken before reading the files: a change made while they are read shows later.
            signature = self._signature()
            try:
                self._sync_with_files(self._spaces)
            except _Moved:
                continue
            self._seen = self._as_read(signature)
            return self._spaces
        raise RuntimeError(f"the vector index in {self.directory} kept changing while read")

    def _sync_with_files(self, spaces: dict[str, _Space]) -> None:
        on_disk: dict[Path, Identity] = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.glob(f"*{FILE_SUFFIX}")):
                with contextlib.suppress(FileNotFoundError):
                    on_disk[path] = _identity(path.stat())
        by_path = {self._path(name): name for name in spaces}
        for path, name in by_path.items():
            space = spaces[name]
            if path in on_disk or space.disk is None:
                continue
            # Removed by another process (every vector deleted): keep only our own changes.
            if space.pending:
                spaces[name] = self._replayed(self._empty_space(name, space.dim), space.pending)
            else:
                del spaces[name]
        for path, identity in on_disk.items():
            known = by_path.get(path)
            followed = self._follow(path, identity, spaces.get(known) if known else None)
            spaces[followed.encoder_id] = followed

    def _follow(self, path: Path, identity: Identity, space: _Space | None) -> _Space:
        """``space`` brought up to date with its files: the new log records applied when the
        snapshot is the one it was loaded from and it has no unflushed changes; else loaded
        afresh, with those changes applied on top."""
        if space is not None and space.disk is not None and space.disk.identity == identity:
            changes, offset = self._read_log(path, space.disk, space.dim)
            if not changes:
                return space
            if not space.pending:
                for change in changes:
                    self._apply(space, change)
                space.disk.log_offset = offset
                return space
        loaded = self._load(path)
        if space is not None and space.pending:
            loaded = self._replayed(loaded, space.pending)
        return loaded

    def _replayed(self, space: _Space, changes: list[Change]) -> _Space:
        """``space`` with our unflushed ``changes`` applied on top, still pending."""
        for change in changes:
            self._apply(space, change)
        space.pending = list(changes)
        return space

    def _load(self, path: Path) -> _Space:
        """A space from its snapshot and log."""
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            space, epoch = _Space.from_file(handle, path)
        disk = _OnDisk(_identity(stat), epoch, 0, stat.st_size)
        changes, disk.log_offset = self._read_log(path, disk, space.dim)
        for change in changes:
            space.apply(change)
        self._maintain(space, loaded=True)
        space.disk = disk
        return space

    def _read_log(self, path: Path, disk: _OnDisk, dim: int) -> tuple[list[Change], int]:
        """The complete records of the log after what is applied, and the new offset."""
        try:
            with open(self._log_path(path, disk.epoch), "rb") as handle:
                handle.seek(disk.log_offset)
                data = handle.read()
        except FileNotFoundError:
            if disk.epoch == 0:
                return [], disk.log_offset  # a snapshot from before the logs
            raise _Moved(path) from None
        changes, used = decode(data, dim)
        return changes, disk.log_offset + used

    def _path(self, encoder_id: str) -> Path:
        return self.directory / f"{_file_stem(encoder_id)}{FILE_SUFFIX}"

    @staticmethod
    def _log_path(snapshot: Path, epoch: int) -> Path:
        return snapshot.with_name(f"{snapshot.stem}.{epoch}{LOG_SUFFIX}")

    # -- internals: writing the files (flush lock and .flush.lock held) ------------------

    def _plan(self, space: _Space) -> _Step:
        """What to write for this space (self._lock held): takes its pending changes."""
        changes, space.pending = space.pending, []
        fold, space.fold_wanted = space.fold_wanted, False
        path = self._path(space.encoder_id)
        disk = space.disk
        if space.n_live == 0:
            obsolete = [path, *self._logs_of(path)] if disk is not None else []
            return _Step(space, changes, fold, "remove", b"", path, disk, obsolete)
        records = b"".join(change.encode() for change in changes)
        if disk is not None and not fold:
            log_bytes = disk.log_offset + len(records)
            if log_bytes <= max(self.fold_min_bytes, self.fold_fraction * disk.snapshot_bytes):
                return _Step(space, changes, fold, "append", records, path, disk, [])
        epoch = disk.epoch + 1 if disk is not None else 1
        obsolete = [log for log in self._logs_of(path) if log != self._log_path(path, epoch)]
        snapshot = space.to_bytes(epoch)
        return _Step(space, changes, fold, "fold", snapshot, path, disk, obsolete, epoch)

    def _logs_of(self, snapshot: Path) -> list[Path]:
        return sorted(self.directory.glob(f"{snapshot.stem}.*{LOG_SUFFIX}"))

    def _write(self, step: _Step) -> _OnDisk | None:
        """Write one step's files; the space's new ``_OnDisk`` (None once removed)."""
        if step.action == "remove":  # before the announcement: no reader keeps the old files
            self._remove_files(step.obsolete)
            return None
        if step.action == "append":
            assert step.disk is not None
            self._append(self._log_path(step.path, step.disk.epoch), step.data, step.disk)
            disk = step.disk
            return _OnDisk(
                disk.identity, disk.epoch, disk.log_offset + len(step.data), disk.snapshot_bytes
            )
        # Fold: an empty log of the new epoch first, so a snapshot never lacks its log.
        log = self._log_path(step.path, step.epoch)
        with open(log, "wb") as handle:
            if self.durable:
                os.fsync(handle.fileno())
        atomic_write_bytes(step.path, step.data, durable=self.durable)
        stat = step.path.stat()
        return _OnDisk(_identity(stat), step.epoch, 0, stat.st_size)

    def _append(self, log: Path, records: bytes, disk: _OnDisk) -> None:
        existed = log.exists()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < disk.log_offset:
                raise RuntimeError(f"vector log {log} is shorter than what was read from it")
            if size > disk.log_offset:
                os.ftruncate(fd, disk.log_offset)  # a torn record from a crashed writer
            view = memoryview(records)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self.durable and not existed:
            fsync_dir(self.directory)

    def _bump_generation(self) -> None:
        current = self._read_generation()
        generation = str(int(current) + 1 if current.isdigit() else 1)
        # Not fsynced: only live processes compare generations; after a restart (even of
        # the machine) every process reads the files afresh.
        atomic_write_bytes(self.directory / GENERATION_FILE, generation.encode(), durable=False)

    def _remove_files(self, paths: Sequence[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if paths and self.durable:
            fsync_dir(self.directory)

    # -- internals: index maintenance (lock held) ----------------------------------------

    def _wanted_kind(self, space: _Space) -> Kind:
        return "hnsw" if space.n_live > self.hnsw_threshold else "flat"

    def _maintain(self, space: _Space, *, loaded: bool = False) -> None:
        """Switch flat -> HNSW past the threshold; compact when too many rows are dead."""
        too_dead = space.n_dead > self.compact_dead_fraction * space.n_rows
        if too_dead or (space.kind == "flat" and self._wanted_kind(space) == "hnsw"):
            self._rebuild(space)
        elif loaded and space.kind == "hnsw" and self._wanted_kind(space) == "flat":
            self._rebuild(space)  # loaded with a higher threshold than it was built with

    def _rebuild(self, space: _Space) -> None:
        kind = self._wanted_kind(space)
        space.rebuild(self._new_index(kind, space.dim), kind)

    def _new_index(self, kind: Kind, dim: int) -> Any:
        if kind == "flat":
            return faiss.IndexFlatIP(dim)
        if self.hnsw_storage == "float16":
            index = faiss.IndexHNSWSQ(
                dim, faiss.ScalarQuantizer.QT_fp16, self.hnsw_m, faiss.METRIC_INNER_PRODUCT
            )
        else:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def _ranked(
        self, space: _Space, query: Vectors, k: int, mask: BoolArray | None, available: int
    ) -> tuple[IntArray, npt.NDArray[np.float32]]:
        """The top k, equal scores in row order, so that any top k is the start of a larger
        one. FAISS picks among equal scores at the cut by its heap's order, which changes
        with k: the pages of a search (each asks down to its own depth) would repeat one
        product sharing a photo with others and skip another. So the search goes one row
        past the cut, and further while the k-th score still ties at the end."""
        depth = k
        while True:
            depth = min(depth + 1, available)
            rows, scores = self._search(space, query, depth, mask, available)
            found = rows >= 0
            rows, scores = rows[found], scores[found]
            if len(rows) <= k or depth >= available or scores[-1] < scores[k - 1]:
                break
            depth *= 2
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order]

    def _search(
        self, space: _Space, query: Vectors, k: int, mask: BoolArray | None, available: int
    ) -> tuple[IntArray, npt.NDArray[np.float32]]:
        if space.kind == "flat":
            if self.prefilter != "off":
                first_pass = _prefiltered_int8 if self.prefilter == "int8" else _prefiltered
                answered = first_pass(space, query, k, mask, available)
                if answered is not None:
                    return answered
            if mask is None:
                scores, rows = space.index.search(query, k)
            else:
                scores, rows = space.index.search(query, k, params=_only(mask))
            return rows[0], scores[0]
        # HNSW.
        if mask is not None and available <= self.exact_filter_limit:
            selected = np.flatnonzero(mask)
            return _exact(space.take(selected), query, k, selected)
        selectivity = available / max(space.n_rows, 1)
        ef = min(max(self.ef_search, k, int(self.ef_search / selectivity)), MAX_EF_SEARCH)
        params = faiss.SearchParametersHNSW(efSearch=max(ef, k))
        if mask is not None:
            bits = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(space.n_rows, faiss.swig_ptr(bits))
            params.sel = selector
        scores, rows = space.index.search(query, k, params=params)
        found = int(np.count_nonzero(rows[0] >= 0))
        if found < k:
            candidates = (
                np.flatnonzero(mask) if mask is not None else np.flatnonzero(space.live.values)
            )
            return _exact(space.take(candidates), query, k, candidates)
        return rows[0], scores[0]


def _only(mask: BoolArray) -> Any:
    """Search parameters restricting a search to the rows of ``mask`` (they keep the bitmap
    the selector points into alive)."""
    bits = np.packbits(mask, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    params = faiss.SearchParameters(sel=selector)
    params.referenced_objects = [selector, bits]
    return params


def _prefiltered(
    space: _Space, query: Vectors, k: int, mask: BoolArray | None, available: int
) -> tuple[IntArray, npt.NDArray[np.float32]] | None:
    """The flat search's answer through the space's float16 copy (see _Float16Copy), or
    None when the full scan has to answer."""
    copy = space.float16_copy()
    wanted = k + max(PREFILTER_MARGIN, k // 2)
    if copy is None or available <= wanted:
        return None
    params = None if mask is None else _only(mask)
    approx, rows = (a[0] for a in copy.index.search(query, wanted, params=params))
    threshold = float(approx[k - 1]) - 2 * copy.bound(query)
    if rows[-1] < 0 or float(approx[-1]) >= threshold:
        return None  # candidates may lie past the list's end
    chosen = np.zeros(space.n_rows, dtype=np.bool_)
    chosen[rows[approx >= threshold]] = True
    scores, found = space.index.search(query, k, params=_only(chosen))
    return found[0], scores[0]


def _prefiltered_int8(
    space: _Space, query: Vectors, k: int, mask: BoolArray | None, available: int
) -> tuple[IntArray, npt.NDArray[np.float32]] | None:
    """The flat search's answer through the space's 8-bit copy (see int8_copy): the float32
    scan restricted to the rows whose score bounds reach the k-th best lower bound; None
    when the full scan has to answer."""
    copy = space.int8_copy()
    if copy is None or available <= k + max(PREFILTER_MARGIN, k // 2):
        return None
    rows, approx, bound = copy.scores(query, space.vectors()[copy.covered :])
    allowed = (space.live.values if mask is None else mask)[rows]
    lower = approx - bound
    if not allowed.all():
        lower[~allowed] = -np.inf
    candidates = rows[allowed & (approx + bound >= _cut(lower, k))]
    if RESCORE_WITH_KERNEL and _kernel_agrees(space):
        return _rescored(space, query, k, candidates)
    chosen = np.zeros(space.n_rows, dtype=np.bool_)
    chosen[candidates] = True
    scores, found = space.index.search(query, k, params=_only(chosen))
    return found[0], scores[0]


def _cut(lower: npt.NDArray[np.float64], k: int) -> float:
    """A value at most the k-th largest of ``lower``: every row whose upper bound reaches it
    is a candidate. A full partition of the bounds costs more than the rest of the pass, so
    the value is taken from a strided sample, at about twice the k-th largest's rank, and
    checked (at least k bounds reach it); the exact k-th largest when the check fails."""
    n = len(lower)
    stride = n // max(THRESHOLD_SAMPLE_PER_ROW * k, THRESHOLD_SAMPLE_MIN)
    if stride >= 2:
        sample = lower[::stride]
        rank = min(len(sample), -(-2 * k * len(sample) // n))
        guess = float(np.partition(sample, len(sample) - rank)[len(sample) - rank])
        if guess > -np.inf and np.count_nonzero(lower >= guess) >= k:
            return guess
    return float(np.partition(lower, n - k)[n - k])


def _rescored(
    space: _Space, query: Vectors, k: int, candidates: IntArray
) -> tuple[IntArray, npt.NDArray[np.float32]]:
    """The top k of the candidate rows (ascending), scored by FAISS's own inner-product
    kernel: the float32 scores the flat scan gives them; equal scores in row order."""
    scores = np.empty(len(candidates), dtype=np.float32)
    rows = np.ascontiguousarray(candidates, dtype=np.int64)
    vectors = space.vectors()
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(scores), faiss.swig_ptr(query), faiss.swig_ptr(vectors),
        faiss.swig_ptr(rows), space.dim, 1, len(rows),
    )  # fmt: skip
    best = np.lexsort((rows, -scores))[:k]
    return rows[best], scores[best]


def _kernel_agrees(space: _Space) -> bool:
    """Whether ``fvec_inner_products_by_idx`` gives the flat scan's scores, bit for bit, on
    this space's rows (checked once per index: a FAISS release could score with another
    kernel, and then the restricted search answers)."""
    if space.kernel_checked is not None and space.kernel_checked[0] is space.index:
        return space.kernel_checked[1]
    n = min(space.n_rows, KERNEL_CHECK_ROWS)
    query = _as_query(np.asarray(space.vectors()[n // 2], dtype=np.float32) + 0.5)
    rows = np.arange(n, dtype=np.int64)
    kernel = np.empty(n, dtype=np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(kernel), faiss.swig_ptr(query), faiss.swig_ptr(space.vectors()),
        faiss.swig_ptr(rows), space.dim, 1, n,
    )  # fmt: skip
    chosen = np.zeros(space.n_rows, dtype=np.bool_)
    chosen[rows] = True
    scores, found = space.index.search(query, n, params=_only(chosen))
    scanned = np.full(n, np.nan, dtype=np.float32)
    scanned[found[0][found[0] >= 0]] = scores[0][found[0] >= 0]
    agrees = bool(np.array_equal(kernel, scanned))
    space.kernel_checked = (space.index, agrees)
    return agrees


@contextlib.contextmanager
def _one_omp_thread() -> Iterator[None]:
    """Run FAISS single-threaded in this thread for the block. One query vector gains
    nothing from OpenMP, and on a busy machine the threads' barrier waits cost more than the
    search (measured: 70 ms instead of 7 ms for 15k x 512-d). OpenMP's thread count is a
    per-thread setting, so index builds in other threads keep every core."""
    previous = int(faiss.omp_get_max_threads())
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _exact(
    rows: Vectors, query: Vectors, k: int, candidates: IntArray
) -> tuple[IntArray, npt.NDArray[np.float32]]:
    """Exact top-k inner product over the candidate rows (``rows[i]`` is the vector of row
    ``candidates[i]``), best first."""
    scores: npt.NDArray[np.float32] = rows @ query[0]
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    order = top[np.argsort(-scores[top], kind="stable")]
    return candidates[order].astype(np.int64), scores[order]


def _as_query(vector: Vectors) -> Vectors:
    query = _as_matrix(vector)
    if query.shape[0] != 1:
        raise BadInput(f"query one vector at a time, got {query.shape[0]}")
    return query


def _as_matrix(vectors: Vectors) -> Vectors:
    """A C-contiguous float32 [n, d] matrix from a [d] or [n, d] array."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise BadInput(f"vectors must be [n, dim], got shape {np.shape(vectors)}")
    return np.ascontiguousarray(matrix)
