"""VectorIndex on Pinecone (the ``pinecone`` SDK, data plane over HTTP).

One Pinecone index holds every encoder's vectors, one namespace per encoder id (so every
encoder must have the index's dimension). Product tags are stored as vector metadata and
``ProductFilter`` is pushed down as a Pinecone metadata filter. Pinecone scores for the
cosine metric are cosine similarities, which is what the port promises.

Robustness:

* every request has a timeout (``timeout_s``) and every call an overall deadline of the same
  length, so a hung or unreachable Pinecone turns into ``UpstreamUnavailable`` in time;
* 429 and 5xx answers and connection errors are retried by the SDK's transport with
  exponential backoff (decorrelated jitter from 0.25 s, ``Retry-After`` honoured, three
  retries); the SDK does not let a data-plane client change that policy, so the deadline
  above is what bounds it;
* upserts are split into requests of at most ``MAX_VECTORS_PER_UPSERT`` vectors and
  ``MAX_UPSERT_BYTES`` of JSON (Pinecone's limits are 1000 vectors and 2 MB).

Pinecone only accepts ASCII record ids and namespace names (1-512 characters, no NUL).
Product and encoder ids that are not like that are stored under a reversible
``~b64:`` + base64url name; every other id is stored as it is.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from pinecone import AsyncIndex, AsyncPinecone, UpsertResponse
from pinecone.errors import (
    ApiError,
    ForbiddenError,
    NotFoundError,
    PineconeConnectionError,
    PineconeError,
    PineconeValueError,
    RateLimitError,
    ServiceError,
    UnauthorizedError,
)

from domain.errors import BadInput, StoreMisconfigured, UpstreamUnavailable
from domain.model import ProductFilter
from domain.ports import Vectors

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_VECTORS_PER_UPSERT = 100
MAX_UPSERT_BYTES = 2 * 1024 * 1024 - 64 * 1024
"""Pinecone caps a request at 2 MB; keep a margin for the envelope."""
MAX_IDS_PER_FETCH = 100
MAX_FETCH_ID_CHARS = 4000
"""Fetch sends ids in the query string: keep URLs well below common 8 KB limits."""
MAX_IDS_PER_DELETE = 1000
MAX_QUERY_TOP_K = 10_000
MAX_IN_VALUES = 10_000
MAX_NAME_LEN = 512
MAX_METADATA_BYTES = 40 * 1024
"""Pinecone's limit on one vector's metadata."""
DELETE_VISIBILITY_S = 120.0
"""How long a delete may take to reach Pinecone's readers (it is eventually consistent;
usually seconds): until then this process hides the deleted ids from its own results."""
MAX_HIDDEN_PER_NAMESPACE = 5_000
INDEX_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,43}[a-z0-9])?$")
"""Pinecone index names: 1-45 lowercase letters, digits and '-'."""
ENCODED_PREFIX = "~b64:"
DEFAULT_CONCURRENCY = 4


def encode_name(name: str) -> str:
    """A product or encoder id as a Pinecone record id / namespace name (reversible)."""
    if not name:
        raise BadInput("an empty id cannot be stored in Pinecone")
    if (
        name.isascii()
        and "\x00" not in name
        and len(name) <= MAX_NAME_LEN
        and not name.startswith(ENCODED_PREFIX)
    ):
        return name
    encoded = ENCODED_PREFIX + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    if len(encoded) > MAX_NAME_LEN:
        raise BadInput(f"id too long for Pinecone: {name[:40]!r}...")
    return encoded


def decode_name(stored: str) -> str:
    if not stored.startswith(ENCODED_PREFIX):
        return stored
    payload = stored[len(ENCODED_PREFIX) :]
    try:
        return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return stored


def metadata_key(key: str) -> str:
    """Tag keys as metadata field names: Pinecone reserves a leading ``$`` (operators)."""
    escaped = key.replace("%", "%25")
    return "%24" + escaped[1:] if escaped.startswith("$") else escaped


def to_pinecone_filter(flt: ProductFilter | None) -> dict[str, Any] | None:
    """ProductFilter as a Pinecone metadata filter: ``$eq`` / ``$in`` joined by ``$and``."""
    if flt is None or flt.is_empty:
        return None
    clauses: list[dict[str, Any]] = [
        {metadata_key(key): {"$eq": value}} for key, value in sorted(flt.equals.items())
    ]
    for key, values in sorted(flt.any_of.items()):
        unique = list(dict.fromkeys(values))
        if len(unique) > MAX_IN_VALUES:
            raise BadInput(f"filter on {key!r} lists more than {MAX_IN_VALUES} values")
        clauses.append({metadata_key(key): {"$in": unique}})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes of the metadata as JSON, measured generously (spaces after separators), so
    what fits here fits Pinecone's count."""
    return len(json.dumps(metadata, ensure_ascii=False).encode())


def fit_metadata(record_id: str, metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata within Pinecone's 40 KB per vector. Tags only serve filters, so the
    largest values are left out (the product then never matches a filter on those keys)
    until the rest fits; the vector is still stored and searchable, and a warning names the
    product and the keys."""
    kept = dict(metadata)
    if metadata_size(kept) <= MAX_METADATA_BYTES:
        return kept
    dropped: list[str] = []
    for key in sorted(kept, key=lambda k: len(k.encode()) + len(kept[k].encode()), reverse=True):
        del kept[key]
        dropped.append(key)
        if metadata_size(kept) <= MAX_METADATA_BYTES:
            break
    logger.warning(
        "product %r: tags %s left out of its Pinecone metadata (%d KB at most per vector); "
        "filters on them will not match it",
        record_id,
        ", ".join(repr(k) for k in dropped),
        MAX_METADATA_BYTES // 1024,
    )
    return kept


def _record(record_id: str, vector: Vectors, tags: Mapping[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": encode_name(record_id),
        "values": [float(x) for x in np.asarray(vector, dtype=np.float32).reshape(-1)],
    }
    if tags:
        metadata = {metadata_key(str(k)): str(v) for k, v in tags.items()}
        record["metadata"] = fit_metadata(record_id, metadata)
    return record


def _record_size(record: Mapping[str, Any]) -> int:
    """A generous estimate of the record's JSON size (floats print up to ~25 chars)."""
    size = 64 + len(record["id"]) * 2 + 25 * len(record["values"])
    for key, value in (record.get("metadata") or {}).items():
        size += 8 + 2 * (len(key) + len(value)) + len(key.encode()) + len(value.encode())
    return size


def plan_upsert_batches(
    records: Sequence[dict[str, Any]],
    max_vectors: int = MAX_VECTORS_PER_UPSERT,
    max_bytes: int = MAX_UPSERT_BYTES,
) -> list[list[dict[str, Any]]]:
    """Split records into requests that respect both the count and the size limit."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    current_bytes = 0
    for record in records:
        size = _record_size(record)
        if size > max_bytes:
            raise BadInput(f"vector {decode_name(record['id'])!r} is too large for one request")
        if current and (len(current) >= max_vectors or current_bytes + size > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(record)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def _fetch_batches(ids: Sequence[str]) -> list[list[str]]:
    batches: list[list[str]] = []
    current: list[str] = []
    chars = 0
    for stored in ids:
        if current and (
            len(current) >= MAX_IDS_PER_FETCH or chars + len(stored) > MAX_FETCH_ID_CHARS
        ):
            batches.append(current)
            current, chars = [], 0
        current.append(stored)
        chars += len(stored) + 5
    if current:
        batches.append(current)
    return batches


class PineconeVectorIndex:
    """The VectorIndex port on one Pinecone index (dense, cosine metric)."""

    def __init__(
        self,
        api_key: str,
        host: str | None = None,
        index_name: str | None = None,
        *,
        timeout_s: float = 5.0,
        namespace_prefix: str = "",
        concurrency: int = DEFAULT_CONCURRENCY,
        control_plane_host: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``host`` is the index's data-plane URL (``https://<index>-<project>.svc...``, or
        ``http://127.0.0.1:PORT`` for a local fake); without it the host of ``index_name``
        is looked up once, on first use. ``namespace_prefix`` lets several deployments (or
        test runs) share one index. ``clock`` times how long deleted ids stay hidden."""
        if not api_key:
            raise StoreMisconfigured("PINECONE_API_KEY is empty")
        if not host and not index_name:
            raise StoreMisconfigured("set PINECONE_HOST (or PINECONE_INDEX) to use Pinecone")
        if not host and index_name and not INDEX_NAME.match(index_name):
            raise StoreMisconfigured(
                f"PINECONE_INDEX={index_name!r} is not a Pinecone index name: 1-45 lowercase "
                "letters, digits or '-', starting and ending with a letter or digit"
            )
        self._api_key = api_key
        self._host = host or None
        self._index_name = index_name
        self._timeout = timeout_s
        self._prefix = namespace_prefix
        self._concurrency = max(1, concurrency)
        self._control_plane_host = control_plane_host
        self._index: AsyncIndex | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._dimension: int | None = None
        """The index's dimension, read once (it never changes)."""
        self._written_lsn: dict[str, int] = {}
        """namespace -> highest log position Pinecone reported for our upserts."""
        self._clock = clock
        self._hidden: dict[str, dict[str, float]] = {}
        """namespace -> stored id -> when this process deleted it: Pinecone's readers may
        still return it for a while, so this process's results leave it out."""

    # -- plumbing ------------------------------------------------------------------------

    @property
    def where(self) -> str:
        if self._host:
            return f"PINECONE_HOST={self._host}"
        return f"PINECONE_INDEX={self._index_name}"

    def _namespace(self, encoder_id: str) -> str:
        return encode_name(self._prefix + encoder_id)

    def _encoder_of(self, namespace: str) -> str | None:
        name = decode_name(namespace)
        return name[len(self._prefix) :] if name.startswith(self._prefix) else None

    async def _client(self) -> AsyncIndex:
        """The data-plane client of the running event loop (its connection pool belongs to
        one loop; the CLI runs several)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._index, self._lock, self._loop = None, asyncio.Lock(), loop
        if self._index is not None:
            return self._index
        async with self._lock:
            if self._index is None:
                if not self._host:
                    self._host = await self._call(self._resolve_host)
                self._index = AsyncIndex(
                    host=self._host, api_key=self._api_key, timeout=self._timeout
                )
            return self._index

    async def _resolve_host(self) -> str:
        assert self._index_name is not None
        async with AsyncPinecone(
            api_key=self._api_key, host=self._control_plane_host, timeout=self._timeout
        ) as pc:
            model = await pc.indexes.describe(self._index_name)
        if not model.host:
            raise UpstreamUnavailable(
                f"Pinecone index {self._index_name!r} (PINECONE_INDEX) has no host yet: "
                "is it still initialising?"
            )
        return model.host

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one SDK call under the deadline and translate its failures."""
        try:
            async with asyncio.timeout(self._timeout):
                return await operation()
        except TimeoutError as exc:  # our deadline, or PineconeTimeoutError (a TimeoutError)
            raise UpstreamUnavailable(
                f"Pinecone ({self.where}) did not answer within {self._timeout:g}s"
            ) from exc
        except PineconeConnectionError as exc:
            raise UpstreamUnavailable(f"cannot reach Pinecone ({self.where}): {exc}") from exc
        except (UnauthorizedError, ForbiddenError) as exc:
            raise UpstreamUnavailable(
                f"Pinecone ({self.where}) rejected the API key: check PINECONE_API_KEY"
            ) from exc
        except (RateLimitError, ServiceError) as exc:
            raise UpstreamUnavailable(
                f"Pinecone ({self.where}) is unavailable (HTTP {exc.status_code}) after retries"
            ) from exc
        except NotFoundError as exc:
            raise UpstreamUnavailable(
                f"Pinecone ({self.where}) answered 404: check PINECONE_HOST / PINECONE_INDEX"
            ) from exc
        except PineconeValueError as exc:
            raise BadInput(f"Pinecone rejected the request: {exc}") from exc
        except ApiError as exc:
            if 400 <= exc.status_code < 500:
                raise BadInput(f"Pinecone rejected the request: {exc.message}") from exc
            raise UpstreamUnavailable(f"Pinecone ({self.where}) failed: {exc}") from exc
        except PineconeError as exc:
            raise UpstreamUnavailable(f"Pinecone ({self.where}) failed: {exc}") from exc

    def _hide(self, namespace: str, stored_ids: Sequence[str]) -> None:
        hidden = self._hidden.setdefault(namespace, {})
        now = self._clock()
        for stored in stored_ids:
            hidden.pop(stored, None)
            hidden[stored] = now
        while len(hidden) > MAX_HIDDEN_PER_NAMESPACE:  # oldest first
            del hidden[next(iter(hidden))]

    def _unhide(self, namespace: str, stored_ids: Sequence[str]) -> None:
        hidden = self._hidden.get(namespace)
        if hidden:
            for stored in stored_ids:
                hidden.pop(stored, None)

    def _hidden_ids(self, namespace: str) -> dict[str, float]:
        """The ids deleted within DELETE_VISIBILITY_S (older ones are forgotten)."""
        hidden = self._hidden.get(namespace)
        if not hidden:
            return {}
        horizon = self._clock() - DELETE_VISIBILITY_S
        for stored in [s for s, at in hidden.items() if at < horizon]:
            del hidden[stored]
        return hidden

    async def _namespace_counts(self) -> dict[str, int]:
        """encoder id -> vector count, for this prefix's non-empty namespaces."""
        index = await self._client()
        stats = await self._call(lambda: index.describe_index_stats(timeout=self._timeout))
        counts: dict[str, int] = {}
        for namespace, summary in stats.namespaces.items():
            encoder_id = self._encoder_of(namespace)
            if encoder_id is not None and summary.vector_count > 0:
                counts[encoder_id] = summary.vector_count
        return counts

    async def _gather_limited(self, operations: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run the calls, a few at a time; the first failure cancels the others and is
        raised as it is."""
        if len(operations) == 1:
            return [await self._call(operations[0])]
        semaphore = asyncio.Semaphore(self._concurrency)

        async def run(operation: Callable[[], Awaitable[T]]) -> T:
            async with semaphore:
                return await self._call(operation)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(run(op)) for op in operations]
        except BaseExceptionGroup as failed:
            first = failed.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        return [task.result() for task in tasks]

    # -- the port ------------------------------------------------------------------------

    async def check(self) -> dict[str, int]:
        """Fails with UpstreamUnavailable naming the setting when the index cannot be used.
        Returns the vector count per encoder."""
        return await self._namespace_counts()

    async def dimension(self) -> int | None:
        if self._dimension is None:
            index = await self._client()
            stats = await self._call(lambda: index.describe_index_stats(timeout=self._timeout))
            self._dimension = stats.dimension
        return self._dimension

    async def check_dimension(self, encoder_id: str, dim: int) -> None:
        """Raise StoreMisconfigured, naming the setting and both dimensions, when vectors of
        ``dim`` cannot go into this index: found before any encoding, and a search against
        such an index is the operator's problem, never the caller's bad input."""
        index_dim = await self.dimension()
        if index_dim is not None and index_dim != dim:
            raise StoreMisconfigured(
                f"the Pinecone index ({self.where}) has dimension {index_dim} but encoder "
                f"{encoder_id!r} makes {dim}-d vectors: point PINECONE_HOST at an index of "
                f"dimension {dim} (fashion-search pinecone create-index --encoder {encoder_id}) "
                f"or set FASHION_SEARCH_ENCODER to an encoder of dimension {index_dim}"
            )

    async def upsert(
        self,
        encoder_id: str,
        ids: Sequence[str],
        vectors: Vectors,
        metadata: Sequence[Mapping[str, str]],
    ) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(ids) != vectors.shape[0] or len(ids) != len(metadata):
            raise BadInput(
                f"upsert needs as many ids ({len(ids)}), vectors ({len(vectors)}) and "
                f"metadata ({len(metadata)})"
            )
        if not ids:
            return
        if not np.isfinite(vectors).all():
            raise BadInput("vectors contain NaN or infinity")
        await self.check_dimension(encoder_id, int(vectors.shape[1]))
        # The last occurrence of a duplicated id wins, as with successive upserts.
        latest = {pid: i for i, pid in enumerate(ids)}
        records = [_record(pid, vectors[i], metadata[i]) for pid, i in latest.items()]
        namespace = self._namespace(encoder_id)
        index = await self._client()

        def send(batch: list[dict[str, Any]]) -> Callable[[], Awaitable[UpsertResponse]]:
            return lambda: index.upsert(vectors=batch, namespace=namespace, timeout=self._timeout)

        batches = plan_upsert_batches(records)
        self._unhide(namespace, [record["id"] for record in records])
        for response in await self._gather_limited([send(batch) for batch in batches]):
            info = response.response_info
            lsn = info.lsn_committed if info is not None else None
            if lsn is not None:
                self._written_lsn[namespace] = max(lsn, self._written_lsn.get(namespace, lsn))
        logger.debug(
            "upserted %d vectors into %r in %d requests", len(records), namespace, len(batches)
        )

    async def query(
        self,
        encoder_id: str,
        vector: Vectors,
        top_k: int,
        filter: ProductFilter | None = None,
    ) -> list[tuple[str, float]]:
        if top_k <= 0:
            return []
        values = [float(x) for x in np.asarray(vector, dtype=np.float32).reshape(-1)]
        if not all(math.isfinite(x) for x in values):
            raise BadInput("the query vector contains NaN or infinity")
        pinecone_filter = to_pinecone_filter(filter)
        await self.check_dimension(encoder_id, len(values))
        namespace = self._namespace(encoder_id)
        hidden = self._hidden_ids(namespace)
        index = await self._client()
        response = await self._call(
            lambda: index.query(
                # Ask for as many more as may be deleted but still seen, so a page stays full.
                top_k=min(top_k + len(hidden), MAX_QUERY_TOP_K),
                vector=values,
                namespace=namespace,
                filter=pinecone_filter,
                timeout=self._timeout,
            )
        )
        matches = [match for match in response.matches if match.id not in hidden]
        return [(decode_name(match.id), float(match.score)) for match in matches[:top_k]]

    async def fetch(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors]:
        stored = list(dict.fromkeys(encode_name(pid) for pid in ids))
        if not stored:
            return {}
        namespace = self._namespace(encoder_id)
        index = await self._client()

        def get(batch: list[str]) -> Callable[[], Awaitable[Any]]:
            return lambda: index.fetch(ids=batch, namespace=namespace, timeout=self._timeout)

        hidden = self._hidden_ids(namespace)
        found: dict[str, Vectors] = {}
        for response in await self._gather_limited([get(b) for b in _fetch_batches(stored)]):
            for stored_id, record in response.vectors.items():
                if stored_id not in hidden:
                    found[decode_name(stored_id)] = np.asarray(record.values, dtype=np.float32)
        return {pid: found[pid] for pid in ids if pid in found}

    async def delete(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        stored = list(dict.fromkeys(encode_name(pid) for pid in ids))
        if not stored:
            return
        if encoder_id is not None:
            namespaces = [self._namespace(encoder_id)]
        else:
            namespaces = [self._namespace(e) for e in await self._namespace_counts()]
        index = await self._client()

        def remove(namespace: str, batch: list[str]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                # Serverless answers 404 for a namespace that does not exist.
                with contextlib.suppress(NotFoundError):
                    await index.delete(ids=batch, namespace=namespace, timeout=self._timeout)

            return run

        await self._gather_limited(
            [
                remove(namespace, stored[i : i + MAX_IDS_PER_DELETE])
                for namespace in namespaces
                for i in range(0, len(stored), MAX_IDS_PER_DELETE)
            ]
        )
        for namespace in namespaces:
            self._hide(namespace, stored)

    async def count(self, encoder_id: str | None = None) -> int:
        counts = await self._namespace_counts()
        if encoder_id is not None:
            return counts.get(encoder_id, 0)
        return sum(counts.values())

    async def encoder_ids(self) -> list[str]:
        return sorted(await self._namespace_counts())

    async def flush(self) -> None:
        """Nothing to do: Pinecone has made a write durable when it acknowledges it. (Reads
        are eventually consistent; see ``wait_until_fresh``.)"""
        return None

    async def wait_until_fresh(
        self, encoder_id: str, expected_ids: Sequence[str], timeout_s: float = 60.0
    ) -> None:
        """Poll until queries of ``encoder_id`` see every upsert made through this object
        (the LSN Pinecone reports on writes has been reconciled) and return exactly
        ``expected_ids``, and the stats count them: how tests against a live, eventually
        consistent index make reads follow writes. Raises UpstreamUnavailable when the index
        has not caught up within ``timeout_s``."""
        want = {encode_name(pid) for pid in expected_ids}
        namespace = self._namespace(encoder_id)
        target = self._written_lsn.get(namespace)
        dim = await self.dimension()
        probe = [1.0] + [0.0] * ((dim or 1) - 1)
        index = await self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            response = await self._call(
                lambda: index.query(
                    top_k=min(len(want) + 1, MAX_QUERY_TOP_K),
                    vector=probe,
                    namespace=namespace,
                    timeout=self._timeout,
                )
            )
            info = response.response_info
            caught_up = target is None or (info is not None and info.is_reconciled(target))
            seen = {match.id for match in response.matches}
            counts = await self._namespace_counts()
            if caught_up and seen == want and counts.get(encoder_id, 0) == len(want):
                return
            if loop.time() > deadline:
                raise UpstreamUnavailable(
                    f"Pinecone ({self.where}) did not reflect the writes to {encoder_id!r} "
                    f"within {timeout_s:g}s"
                )
            await asyncio.sleep(0.25)

    async def clear(self) -> None:
        """Delete every vector of this object's namespaces (all encoders, this prefix)."""
        index = await self._client()
        for encoder_id in await self._namespace_counts():
            namespace = self._namespace(encoder_id)

            async def drop(namespace: str = namespace) -> None:
                with contextlib.suppress(NotFoundError):
                    await index.delete(delete_all=True, namespace=namespace, timeout=self._timeout)

            await self._call(drop)

    async def close(self) -> None:
        index, loop = self._index, self._loop
        self._index, self._loop = None, None
        if index is not None and loop is asyncio.get_running_loop():
            await index.close()
