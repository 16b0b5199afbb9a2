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
    switch is automatic and invisible to callers.

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

Persistence
    ``flush()`` writes each changed space to ``<slug>-<hash>.npz`` (the encoder id is mapped
    to a safe file name; the exact id is stored inside): the serialised FAISS index, the row
    ids and the tag columns in one file, written to a temporary file, fsynced and moved into
    place with ``os.replace``; a reader never sees a half-written space. Spaces load lazily
    on first use. ``close()`` flushes. One process writes a directory at a time (the CLI
    ingest and a running API each hold their own copy in memory).

Concurrency
    All state sits behind one ``threading.RLock``; the async methods run their work in a
    worker thread (``asyncio.to_thread``) so index builds, searches and file writes never
    block the event loop. ``flush`` serialises the state under the lock and writes the files
    outside it (under a separate flush lock), so queries keep running during the disk write.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import faiss as _faiss
import numpy as np
import numpy.typing as npt

from domain.errors import BadInput
from domain.model import ProductFilter
from domain.ports import Vectors
from stores._util import atomic_write_bytes, remove_stale_tmp_files, safe_name

# faiss ships partial stubs (no SearchParametersHNSW, IndexFlat.get_xb, ...): use it untyped.
faiss: Any = _faiss

Kind = Literal["flat", "hnsw"]
Storage = Literal["float32", "float16"]

FORMAT_VERSION = 1
FILE_SUFFIX = ".npz"

DEFAULT_HNSW_THRESHOLD = 100_000
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_EF_SEARCH = 512
DEFAULT_EXACT_FILTER_LIMIT = 20_000
DEFAULT_COMPACT_DEAD_FRACTION = 0.25
MAX_EF_SEARCH = 4096

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


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
        self.dirty = False

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
        self.dirty = True

    def remove(self, ids: Sequence[str]) -> int:
        removed = 0
        for pid in ids:
            row = self.rows.pop(pid, None)
            if row is not None:
                self._tombstone(row)
                removed += 1
        if removed:
            self.dirty = True
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
        self.dirty = True

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

    def to_bytes(self) -> bytes:
        keys = sorted(self.tag_codes)
        meta = {
            "format": FORMAT_VERSION,
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
    def from_file(cls, path: Path) -> _Space:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes().decode("utf-8"))
                if meta.get("format") != FORMAT_VERSION:
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
        return space


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
    ) -> None:
        if hnsw_threshold < 1:
            raise ValueError("hnsw_threshold must be at least 1")
        if not 0.0 < compact_dead_fraction < 1.0:
            raise ValueError("compact_dead_fraction must be between 0 and 1")
        if hnsw_storage not in ("float32", "float16"):
            raise ValueError("hnsw_storage must be 'float32' or 'float16'")
        self.directory = Path(directory)
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.exact_filter_limit = exact_filter_limit
        self.compact_dead_fraction = compact_dead_fraction
        self.durable = durable
        self.hnsw_storage: Storage = hnsw_storage
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._spaces: dict[str, _Space] | None = None  # loaded lazily

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
        dead fraction to reach ``compact_dead_fraction``."""
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
            spaces = self._loaded()
            space = spaces.get(encoder_id)
            if space is None:
                space = _Space(
                    encoder_id, matrix.shape[1], self._new_index("flat", matrix.shape[1]), "flat"
                )
                spaces[encoder_id] = space
            elif space.dim != matrix.shape[1]:
                raise BadInput(
                    f"encoder {encoder_id!r} has {space.dim}-d vectors, got {matrix.shape[1]}-d"
                )
            space.add(ids, matrix, metadata)
            self._maintain(space)

    def query_sync(
        self,
        encoder_id: str,
        vector: Vectors,
        top_k: int,
        filter: ProductFilter | None = None,
    ) -> list[tuple[str, float]]:
        query = _as_query(vector)
        with self._lock:
            return self._query(self._loaded(), encoder_id, query, top_k, filter)

    def query_now(
        self,
        encoder_id: str,
        vector: Vectors,
        top_k: int,
        filter: ProductFilter | None = None,
    ) -> list[tuple[str, float]] | None:
        """``query_sync`` when the spaces are loaded and no other thread holds them (an
        upsert, a flush or a compaction may take seconds): None instead of waiting."""
        query = _as_query(vector)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._spaces is None:
                return None  # loading them from disk is left to a worker thread
            return self._query(self._spaces, encoder_id, query, top_k, filter)
        finally:
            self._lock.release()

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
            rows, scores = self._search(space, query, k, mask, available)
        ids = space.ids
        return [
            (pid, float(score))
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
            if row >= 0 and (pid := ids[row]) is not None
        ]

    def fetch_sync(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors]:
        with self._lock:
            space = self._loaded().get(encoder_id)
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
            spaces = self._loaded()
            targets = [encoder_id] if encoder_id is not None else list(spaces)
            for name in targets:
                space = spaces.get(name)
                if space is not None and space.remove(ids):
                    self._maintain(space)

    def count_sync(self, encoder_id: str | None = None) -> int:
        with self._lock:
            spaces = self._loaded()
            if encoder_id is not None:
                space = spaces.get(encoder_id)
                return space.n_live if space is not None else 0
            return sum(space.n_live for space in spaces.values())

    def encoder_ids_sync(self) -> list[str]:
        with self._lock:
            return sorted(name for name, space in self._loaded().items() if space.n_live)

    def kind(self, encoder_id: str) -> Kind | None:
        """ "flat" or "hnsw" for an encoder with vectors here (for tests and diagnostics)."""
        with self._lock:
            space = self._loaded().get(encoder_id)
            return space.kind if space is not None else None

    def compact_sync(self, encoder_id: str | None = None) -> None:
        with self._lock:
            spaces = self._loaded()
            for name in [encoder_id] if encoder_id is not None else list(spaces):
                space = spaces.get(name)
                if space is not None:
                    self._rebuild(space)

    def flush_sync(self) -> None:
        with self._flush_lock:
            with self._lock:
                if self._spaces is None:
                    return
                writes: list[tuple[Path, bytes | None]] = []
                written: list[_Space] = []
                for space in self._spaces.values():
                    if not space.dirty:
                        continue
                    path = self._path(space.encoder_id)
                    writes.append((path, space.to_bytes() if space.n_live else None))
                    written.append(space)
                    space.dirty = False
            try:
                for path, data in writes:
                    if data is None:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                    else:
                        atomic_write_bytes(path, data, durable=self.durable)
            except BaseException:
                with self._lock:
                    for space in written:
                        space.dirty = True
                raise

    def close_sync(self) -> None:
        self.flush_sync()
        with self._lock:
            self._spaces = None

    # -- internals (called with the lock held) -------------------------------------------

    def _loaded(self) -> dict[str, _Space]:
        if self._spaces is None:
            spaces: dict[str, _Space] = {}
            if self.directory.is_dir():
                remove_stale_tmp_files(self.directory)
                for path in sorted(self.directory.glob(f"*{FILE_SUFFIX}")):
                    space = _Space.from_file(path)
                    spaces[space.encoder_id] = space
                    self._maintain(space, dirty=False)
            self._spaces = spaces
        return self._spaces

    def _path(self, encoder_id: str) -> Path:
        return self.directory / f"{safe_name(encoder_id)}{FILE_SUFFIX}"

    def _wanted_kind(self, space: _Space) -> Kind:
        return "hnsw" if space.n_live > self.hnsw_threshold else "flat"

    def _maintain(self, space: _Space, *, dirty: bool = True) -> None:
        """Switch flat -> HNSW past the threshold; compact when too many rows are dead."""
        was_dirty = space.dirty
        too_dead = space.n_dead > self.compact_dead_fraction * space.n_rows
        if too_dead or (space.kind == "flat" and self._wanted_kind(space) == "hnsw"):
            self._rebuild(space)
        elif not dirty and space.kind == "hnsw" and self._wanted_kind(space) == "flat":
            self._rebuild(space)  # loaded with a higher threshold than it was built with
        if not dirty:
            space.dirty = was_dirty

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

    def _search(
        self, space: _Space, query: Vectors, k: int, mask: BoolArray | None, available: int
    ) -> tuple[IntArray, npt.NDArray[np.float32]]:
        if space.kind == "flat":
            if mask is None:
                scores, rows = space.index.search(query, k)
            else:
                bits = np.packbits(mask, bitorder="little")
                selector = faiss.IDSelectorBitmap(space.n_rows, faiss.swig_ptr(bits))
                params = faiss.SearchParameters(sel=selector)
                scores, rows = space.index.search(query, k, params=params)
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
