"""A small, faithful fake of Pinecone's HTTP API, served by uvicorn on a free loopback port.

Data plane (API version 2026-07, as the ``pinecone`` SDK speaks it): ``POST /vectors/upsert``,
``POST /query``, ``GET /vectors/fetch``, ``POST /vectors/delete``,
``POST|GET /describe_index_stats``, with the request and response JSON of the real service
(camelCase fields, ``{"code", "message", "details"}`` errors, the ``x-pinecone-request-lsn`` /
``x-pinecone-max-indexed-lsn`` headers) and its limits: fixed dimension per index, at most
1000 vectors and 2 MB per upsert, ``topK`` 1-10000 (1000 with values or metadata), ASCII ids
of 1-512 characters, metadata keys not starting with ``$`` and at most 40 KB of metadata per
vector, at most 1000 ids per fetch or delete, ASCII namespace names of at most 512
characters, index names of 1-45 lowercase letters, digits and ``-``, 404 when deleting from a
namespace that does not exist (serverless behaviour). Cosine scores.

Pinecone is eventually consistent; ``eventual = True`` makes the fake so too, deterministically:
writes are acknowledged (with their log position) but reads (query, fetch, stats) see them
only once the test calls ``settle()``.

Control plane, just enough for ``indexes.create`` / ``indexes.describe``: ``POST /indexes``
and ``GET /indexes/{name}``.

One server holds many indexes; index ``name`` is served under ``http://127.0.0.1:PORT/name``
(the SDK accepts a host with a path), so each test gets a fresh index without a new server.
Every request must carry the ``Api-Key`` header. ``fail_next`` / ``slow_next`` inject 429/5xx
answers and slow responses for the retry and timeout tests.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.uvicorn_thread import UvicornThread, loopback_socket

MAX_UPSERT_VECTORS = 1000
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_TOP_K = 10_000
MAX_TOP_K_WITH_DATA = 1000
MAX_ID_LEN = 512
MAX_NAMESPACE_LEN = 512
MAX_METADATA_BYTES = 40 * 1024
MAX_IDS_PER_REQUEST = 1000
INDEX_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,43}[a-z0-9])?$")


class FakeError(Exception):
    """An API error: HTTP status, gRPC-style code and message."""

    GRPC_CODES: Mapping[int, int] = {400: 3, 401: 16, 404: 5, 413: 3, 429: 8, 500: 13, 503: 14}

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        if self.status == 401:
            body: dict[str, Any] = {
                "error": {"code": "UNAUTHENTICATED", "message": self.message},
                "status": 401,
            }
        else:
            body = {
                "code": self.GRPC_CODES.get(self.status, 2),
                "message": self.message,
                "details": [],
            }
        return JSONResponse(body, status_code=self.status)


@dataclass
class Record:
    values: np.ndarray
    metadata: dict[str, Any] | None


@dataclass
class FakeIndex:
    name: str
    dimension: int
    metric: str = "cosine"
    namespaces: dict[str, dict[str, Record]] = field(default_factory=dict)
    pending: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    """Acknowledged writes readers do not see yet (namespace, apply), in log order."""


@dataclass
class Injected:
    """Answer the next ``count`` matching requests with ``status`` (after ``delay_s``), or
    just delay them when ``status`` is None."""

    count: int
    status: int | None = None
    delay_s: float = 0.0
    path: str | None = None
    retry_after: str | None = None


@dataclass(frozen=True)
class Seen:
    method: str
    index: str
    path: str
    body_bytes: int
    vectors: int
    status: int
    namespace: str | None


def _matches_value(stored: Any, op: str, operand: Any) -> bool:
    values = stored if isinstance(stored, list) else [stored]
    if op == "$eq":
        return stored is not None and any(v == operand for v in values)
    if op == "$ne":
        return stored is None or all(v != operand for v in values)
    if op == "$in":
        return stored is not None and any(v in operand for v in values)
    if op == "$nin":
        return stored is None or all(v not in operand for v in values)
    if op == "$exists":
        return (stored is not None) == bool(operand)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if not isinstance(stored, int | float) or isinstance(stored, bool):
            return False
        number = float(stored)
        bound = float(operand)
        return {
            "$gt": number > bound,
            "$gte": number >= bound,
            "$lt": number < bound,
            "$lte": number <= bound,
        }[op]
    raise FakeError(400, f"Unsupported filter operator {op}")


def _check_filter(flt: Any) -> None:
    if not isinstance(flt, dict) or not flt:
        raise FakeError(400, "Invalid filter: must be a non-empty object")
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise FakeError(400, f"Invalid filter: {key} needs a non-empty array")
            for sub in cond:
                _check_filter(sub)
        elif key.startswith("$"):
            raise FakeError(400, f"Invalid filter: unknown operator {key}")
        elif isinstance(cond, dict):
            for op, operand in cond.items():
                if op in ("$in", "$nin"):
                    if not isinstance(operand, list) or len(operand) > 10_000:
                        raise FakeError(400, f"Invalid filter: {op} needs an array of <= 10000")
                elif op not in ("$eq", "$ne", "$exists", "$gt", "$gte", "$lt", "$lte"):
                    raise FakeError(400, f"Invalid filter: unknown operator {op}")


def filter_matches(flt: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> bool:
    meta = metadata or {}
    for key, cond in flt.items():
        if key == "$and":
            if not all(filter_matches(sub, meta) for sub in cond):
                return False
        elif key == "$or":
            if not any(filter_matches(sub, meta) for sub in cond):
                return False
        elif isinstance(cond, dict):
            if not all(_matches_value(meta.get(key), op, v) for op, v in cond.items()):
                return False
        elif not _matches_value(meta.get(key), "$eq", cond):
            return False
    return True


def _check_id(record_id: Any) -> str:
    if not isinstance(record_id, str) or not 1 <= len(record_id) <= MAX_ID_LEN:
        raise FakeError(400, "Invalid id: ids must be strings of 1-512 characters")
    if not record_id.isascii() or "\x00" in record_id:
        raise FakeError(400, f"Invalid id {record_id!r}: ids must be ASCII without NUL")
    return record_id


def _check_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise FakeError(400, "Invalid metadata: must be an object")
    for key, value in metadata.items():
        if key.startswith("$"):
            raise FakeError(400, f"Invalid metadata key {key!r}: must not start with '$'")
        ok = isinstance(value, str | bool | int | float) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        if not ok:
            raise FakeError(400, f"Invalid metadata value for {key!r}")
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise FakeError(
            400,
            f"Metadata size is {size} bytes, which exceeds the limit of {MAX_METADATA_BYTES} "
            "bytes per vector",
        )
    return dict(metadata)


def _check_namespace(namespace: Any) -> str:
    if namespace is None or namespace == "":
        return "__default__"
    if (
        not isinstance(namespace, str)
        or len(namespace) > MAX_NAMESPACE_LEN
        or not namespace.isascii()
        or "\x00" in namespace
    ):
        raise FakeError(
            400, f"Invalid namespace {namespace!r}: ASCII without NUL, at most 512 characters"
        )
    return namespace


class FakePinecone:
    """The fake's state and its HTTP server. Thread-safe: tests call it from their own
    thread while uvicorn serves from another."""

    def __init__(self, api_key: str = "fake-pinecone-key") -> None:
        self.api_key = api_key
        self.indexes: dict[str, FakeIndex] = {}
        self.seen: list[Seen] = []
        self._injected: list[Injected] = []
        self._lsn = 0
        self._indexed_lsn = 0
        self.eventual = False
        """When True, writes become visible to reads only at ``settle()``."""
        self._deployments: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._server: UvicornThread | None = None
        self.port = 0
        self.app = self._build_app()

    # -- test controls -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_index(self, name: str, dimension: int, metric: str = "cosine") -> str:
        """A fresh, empty index; returns its host URL."""
        if not INDEX_NAME.match(name):
            raise ValueError(f"Pinecone would refuse the index name {name!r}")
        with self._lock:
            self.indexes[name] = FakeIndex(name, dimension, metric)
        return self.host_of(name)

    def host_of(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def fail_next(
        self,
        count: int,
        status: int = 429,
        *,
        path: str | None = None,
        delay_s: float = 0.0,
        retry_after: str | None = None,
    ) -> None:
        with self._lock:
            self._injected.append(Injected(count, status, delay_s, path, retry_after))

    def slow_next(self, count: int, delay_s: float, *, path: str | None = None) -> None:
        with self._lock:
            self._injected.append(Injected(count, None, delay_s, path))

    def settle(self, name: str | None = None) -> int:
        """Make the acknowledged writes (of one index, or all) visible to reads, in order;
        returns how many were applied."""
        with self._lock:
            applied = 0
            for index in self.indexes.values():
                if name is None or index.name == name:
                    for _, apply in index.pending:
                        apply()
                    applied += len(index.pending)
                    index.pending.clear()
            if not any(index.pending for index in self.indexes.values()):
                self._indexed_lsn = self._lsn
            return applied

    def stored(self, name: str, namespace: str) -> dict[str, Record]:
        """What readers of the index see in a namespace (a copy)."""
        with self._lock:
            return dict(self.indexes[name].namespaces.get(namespace, {}))

    def clear_failures(self) -> None:
        with self._lock:
            self._injected.clear()

    def requests_to(self, index: str, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.index == index and (path is None or s.path == path)]

    # -- server --------------------------------------------------------------------------

    def start(self) -> FakePinecone:
        self._server = UvicornThread(
            self.app, loopback_socket(), log_level="warning", lifespan="off", access_log=False
        ).start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    # -- HTTP ----------------------------------------------------------------------------

    def _take_injection(self, path: str) -> Injected | None:
        with self._lock:
            for rule in self._injected:
                if rule.count > 0 and (rule.path is None or path.endswith(rule.path)):
                    rule.count -= 1
                    return Injected(1, rule.status, rule.delay_s, rule.path, rule.retry_after)
            return None

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.api_route("/{full_path:path}", methods=["GET", "POST", "DELETE", "PATCH"])
        async def dispatch(request: Request, full_path: str) -> Response:
            body = await request.body()
            path = "/" + full_path
            index_name, _, rest = full_path.partition("/")
            op_path = "/" + rest if rest else "/"
            if index_name == "indexes":
                index_name, op_path = "", path
            status = 500
            namespace: str | None = None
            vectors = 0
            try:
                if request.headers.get("api-key") != self.api_key:
                    raise FakeError(401, "Invalid API Key")
                rule = self._take_injection(path)
                if rule is not None:
                    if rule.delay_s:
                        await asyncio.sleep(rule.delay_s)
                    if rule.status is not None:
                        headers = {"retry-after": rule.retry_after} if rule.retry_after else {}
                        message = "Too many requests" if rule.status == 429 else "Injected failure"
                        err = FakeError(rule.status, message).response()
                        err.headers.update(headers)
                        status = rule.status
                        return err
                payload: Any = None
                if body:
                    try:
                        payload = json.loads(body)
                    except ValueError:
                        raise FakeError(400, "Invalid JSON body") from None
                if len(body) > MAX_REQUEST_BYTES:
                    raise FakeError(
                        413,
                        f"Request size {len(body)} exceeds the maximum supported size of "
                        f"{MAX_REQUEST_BYTES} bytes",
                    )
                if isinstance(payload, dict):
                    ns = payload.get("namespace")
                    namespace = ns if isinstance(ns, str) else None
                    if isinstance(payload.get("vectors"), list):
                        vectors = len(payload["vectors"])
                response = self._handle(request.method, index_name, op_path, payload, request)
                status = response.status_code
                return response
            except FakeError as exc:
                status = exc.status
                return exc.response()
            finally:
                with self._lock:
                    self.seen.append(
                        Seen(
                            request.method,
                            index_name,
                            op_path,
                            len(body),
                            vectors,
                            status,
                            namespace,
                        )
                    )

        return app

    def _index(self, name: str) -> FakeIndex:
        index = self.indexes.get(name)
        if index is None:
            raise FakeError(404, f"Index {name!r} not found")
        return index

    def _handle(
        self, method: str, index_name: str, path: str, payload: Any, request: Request
    ) -> Response:
        with self._lock:
            if path == "/indexes" and method == "POST":
                return self._create_index(payload)
            if path.startswith("/indexes/") and method == "GET":
                return JSONResponse(self._index_model(self._index(path.split("/", 2)[2])))
            index = self._index(index_name)
            body = payload if isinstance(payload, dict) else {}
            if path == "/vectors/upsert" and method == "POST":
                return self._upsert(index, body)
            if path == "/query" and method == "POST":
                return self._query(index, body)
            if path == "/vectors/fetch" and method == "GET":
                return self._fetch(index, request.query_params.getlist("ids"), request)
            if path == "/vectors/delete" and method == "POST":
                return self._delete(index, body)
            if path == "/describe_index_stats" and method in ("POST", "GET"):
                return self._stats(index, body)
        raise FakeError(404, f"Not found: {method} {path}")

    # -- operations (called with the lock held) ------------------------------------------

    def _lsn_headers(self, header: str) -> dict[str, str]:
        lsn = self._indexed_lsn if header == "x-pinecone-max-indexed-lsn" else self._lsn
        return {header: str(lsn)}

    def _write(self, index: FakeIndex, namespace: str, apply: Callable[[], None]) -> None:
        """Apply an acknowledged write now, or (eventual mode) when the test settles."""
        self._lsn += 1
        if self.eventual:
            index.pending.append((namespace, apply))
        else:
            apply()
            self._indexed_lsn = self._lsn

    def _upsert(self, index: FakeIndex, body: dict[str, Any]) -> Response:
        records = body.get("vectors")
        if not isinstance(records, list) or not records:
            raise FakeError(400, "Invalid request: vectors must be a non-empty array")
        if len(records) > MAX_UPSERT_VECTORS:
            raise FakeError(
                400,
                f"Invalid request: batch size {len(records)} exceeds the maximum of "
                f"{MAX_UPSERT_VECTORS} vectors per upsert",
            )
        parsed: list[tuple[str, Record]] = []
        for raw in records:
            if not isinstance(raw, dict):
                raise FakeError(400, "Invalid vector: must be an object")
            record_id = _check_id(raw.get("id"))
            values = raw.get("values")
            if not isinstance(values, list) or not all(
                isinstance(v, int | float) and math.isfinite(v) for v in values
            ):
                raise FakeError(400, f"Invalid values for vector {record_id!r}")
            if len(values) != index.dimension:
                raise FakeError(
                    400,
                    f"Vector dimension {len(values)} does not match the dimension of the "
                    f"index {index.dimension}",
                )
            array = np.asarray(values, dtype=np.float32)
            if index.metric == "cosine" and not array.any():
                raise FakeError(400, "Dense vectors must contain at least one non-zero value")
            parsed.append((record_id, Record(array, _check_metadata(raw.get("metadata")))))
        namespace = _check_namespace(body.get("namespace"))

        def apply() -> None:
            space = index.namespaces.setdefault(namespace, {})
            for record_id, record in parsed:
                space[record_id] = record

        self._write(index, namespace, apply)
        return JSONResponse(
            {"upsertedCount": len(parsed)}, headers=self._lsn_headers("x-pinecone-request-lsn")
        )

    def _query(self, index: FakeIndex, body: dict[str, Any]) -> Response:
        top_k = body.get("topK")
        include_values = bool(body.get("includeValues"))
        include_metadata = bool(body.get("includeMetadata"))
        limit = MAX_TOP_K_WITH_DATA if include_values or include_metadata else MAX_TOP_K
        if not isinstance(top_k, int) or not 1 <= top_k <= limit:
            raise FakeError(400, f"Invalid request: topK must be between 1 and {limit}")
        namespace = _check_namespace(body.get("namespace"))
        space = index.namespaces.get(namespace, {})
        if "vector" in body and "id" in body:
            raise FakeError(400, "Cannot provide both 'id' and 'vector' at the same time")
        if "vector" in body:
            query = np.asarray(body["vector"], dtype=np.float32)
            if query.shape != (index.dimension,):
                raise FakeError(
                    400,
                    f"Query vector dimension {query.size} does not match the dimension of "
                    f"the index {index.dimension}",
                )
        elif "id" in body:
            found = space.get(_check_id(body["id"]))
            if found is None:
                return self._query_response(namespace, [])
            query = found.values
        else:
            raise FakeError(400, "Invalid request: provide a vector or an id")
        flt = body.get("filter")
        if flt is not None:
            _check_filter(flt)
        qnorm = float(np.linalg.norm(query)) or 1.0
        scored: list[tuple[float, str, Record]] = []
        for record_id, record in space.items():
            if flt is not None and not filter_matches(flt, record.metadata):
                continue
            if index.metric == "cosine":
                score = float(np.dot(record.values, query)) / (
                    (float(np.linalg.norm(record.values)) or 1.0) * qnorm
                )
            elif index.metric == "dotproduct":
                score = float(np.dot(record.values, query))
            else:
                score = float(np.linalg.norm(record.values - query) ** 2)
            scored.append((score, record_id, record))
        descending = index.metric != "euclidean"
        scored.sort(key=lambda item: ((-item[0] if descending else item[0]), item[1]))
        matches = []
        for score, record_id, record in scored[:top_k]:
            match: dict[str, Any] = {"id": record_id, "score": score, "values": []}
            if include_values:
                match["values"] = [float(v) for v in record.values]
            if include_metadata and record.metadata:
                match["metadata"] = record.metadata
            matches.append(match)
        return self._query_response(namespace, matches)

    def _query_response(self, namespace: str, matches: list[dict[str, Any]]) -> Response:
        return JSONResponse(
            {
                "results": [],
                "matches": matches,
                "namespace": namespace,
                "usage": {"readUnits": 1 + len(matches) // 10},
            },
            headers=self._lsn_headers("x-pinecone-max-indexed-lsn"),
        )

    def _fetch(self, index: FakeIndex, ids: list[str], request: Request) -> Response:
        if not ids:
            raise FakeError(400, "Invalid request: ids must not be empty")
        if len(ids) > MAX_IDS_PER_REQUEST:
            raise FakeError(
                400,
                f"Invalid request: fetch takes at most {MAX_IDS_PER_REQUEST} ids, got {len(ids)}",
            )
        namespace = _check_namespace(request.query_params.get("namespace"))
        space = index.namespaces.get(namespace, {})
        vectors: dict[str, Any] = {}
        for record_id in ids:
            record = space.get(_check_id(record_id))
            if record is not None:
                entry: dict[str, Any] = {
                    "id": record_id,
                    "values": [float(v) for v in record.values],
                }
                if record.metadata:
                    entry["metadata"] = record.metadata
                vectors[record_id] = entry
        return JSONResponse({"vectors": vectors, "namespace": namespace, "usage": {"readUnits": 1}})

    def _delete(self, index: FakeIndex, body: dict[str, Any]) -> Response:
        ids = body.get("ids")
        delete_all = bool(body.get("deleteAll"))
        flt = body.get("filter")
        given = sum(1 for x in (ids is not None, delete_all, flt is not None) if x)
        if given != 1:
            raise FakeError(400, "Invalid request: give exactly one of ids, deleteAll or filter")
        namespace = _check_namespace(body.get("namespace"))
        known = namespace in index.namespaces or any(ns == namespace for ns, _ in index.pending)
        if not known:
            raise FakeError(404, "Namespace not found")
        if ids is not None:
            if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS_PER_REQUEST:
                raise FakeError(400, "Invalid request: ids must list 1-1000 ids")
            doomed = [_check_id(record_id) for record_id in ids]
        elif flt is not None:
            _check_filter(flt)
        condition = flt if isinstance(flt, dict) else None

        def apply() -> None:
            space = index.namespaces.get(namespace, {})
            if ids is not None:
                for record_id in doomed:
                    space.pop(record_id, None)
            elif delete_all:
                space.clear()
            elif condition is not None:
                for record_id in [
                    r for r, rec in space.items() if filter_matches(condition, rec.metadata)
                ]:
                    del space[record_id]
            if not space:
                index.namespaces.pop(namespace, None)

        self._write(index, namespace, apply)
        return JSONResponse({}, headers=self._lsn_headers("x-pinecone-request-lsn"))

    def _stats(self, index: FakeIndex, body: dict[str, Any]) -> Response:
        if body.get("filter") is not None:
            raise FakeError(400, "describe_index_stats does not support filters on serverless")
        namespaces = {ns: {"vectorCount": len(space)} for ns, space in index.namespaces.items()}
        return JSONResponse(
            {
                "namespaces": namespaces,
                "dimension": index.dimension,
                "indexFullness": 0.0,
                "totalVectorCount": sum(len(s) for s in index.namespaces.values()),
                "metric": index.metric,
                "vectorType": "dense",
            }
        )

    def _create_index(self, payload: Any) -> Response:
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            raise FakeError(400, "Invalid request: name is required")
        name = payload["name"]
        if not INDEX_NAME.match(name):
            raise FakeError(
                400,
                f"Invalid index name {name!r}: 1-45 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit",
            )
        fields = (payload.get("schema") or {}).get("fields") or {}
        dense = fields.get("_values")
        if not isinstance(dense, dict) or dense.get("type") != "dense_vector":
            raise FakeError(400, "Invalid request: this fake only creates vector indexes")
        if name in self.indexes:
            return JSONResponse(
                {"error": {"code": "ALREADY_EXISTS", "message": "Resource already exists"}},
                status_code=409,
            )
        self.indexes[name] = FakeIndex(name, int(dense["dimension"]), dense.get("metric", "cosine"))
        self._deployments[name] = payload.get("deployment") or {
            "deployment_type": "managed",
            "cloud": "aws",
            "region": "us-east-1",
        }
        return JSONResponse(self._index_model(self.indexes[name]), status_code=201)

    def _index_model(self, index: FakeIndex) -> dict[str, Any]:
        return {
            "name": index.name,
            "host": self.host_of(index.name),
            "status": {"ready": True, "state": "Ready"},
            "schema": {
                "fields": {
                    "_values": {
                        "type": "dense_vector",
                        "dimension": index.dimension,
                        "metric": index.metric,
                    }
                }
            },
            "deployment": self._deployments.get(
                index.name, {"deployment_type": "managed", "cloud": "aws", "region": "us-east-1"}
            ),
            "deletion_protection": "disabled",
        }
