"""Prometheus metrics: requests and latency per REST route and per GraphQL operation, and the
time a search spends encoding, in the vector index and in the catalog. Each app has its own
registry (several apps in one process, as in tests, never clash); with several uvicorn workers
they are the whole server's numbers (multiprocess mode, see ``Metrics``)."""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.services import SearchTimings

CONTENT_TYPE = CONTENT_TYPE_LATEST

logger = logging.getLogger("api.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The server's metrics. With ``multiprocess_dir`` (prometheus_client's multiprocess mode:
    ``fashion-search serve`` sets PROMETHEUS_MULTIPROC_DIR before the workers start), every
    worker writes its values to files there and ``render`` sums all of them, so a scrape shows
    the whole server whichever worker answers it, and counters never go down."""

    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess_dir: str | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        self.http_requests = Counter(
            "fashion_search_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "fashion_search_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.graphql_operations = Counter(
            "fashion_search_graphql_operations_total",
            "GraphQL operations by root field(s), operation type and outcome (ok or error).",
            ["operation", "type", "outcome"],
            registry=self.registry,
        )
        self.graphql_latency = Histogram(
            "fashion_search_graphql_operation_duration_seconds",
            "GraphQL operation latency by root field(s) and operation type.",
            ["operation", "type"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encode_seconds = Histogram(
            "fashion_search_encode_duration_seconds",
            "Time a search spends encoding its query (text, image or both), by encoder.",
            ["encoder"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.index_seconds = Histogram(
            "fashion_search_index_query_duration_seconds",
            "Time a search spends in the vector index, by encoder.",
            ["encoder"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.catalog_seconds = Histogram(
            "fashion_search_catalog_fetch_duration_seconds",
            "Time a search spends loading its page of products from the catalog, by encoder.",
            ["encoder"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )

        self.body_stalls = Counter(
            "fashion_search_body_read_timeouts_total",
            "Requests cut off (408) because the client sent nothing of its body for the idle "
            "timeout.",
            registry=self.registry,
        )

    def observe_search(self, encoder_id: str, timings: SearchTimings | None) -> None:
        if timings is None:
            return
        self.encode_seconds.labels(encoder_id).observe(timings.encode_ms / 1000)
        self.index_seconds.labels(encoder_id).observe(timings.index_ms / 1000)
        self.catalog_seconds.labels(encoder_id).observe(timings.catalog_ms / 1000)

    def observe_graphql(self, operation: str, op_type: str, ok: bool, seconds: float) -> None:
        self.graphql_operations.labels(operation, op_type, "ok" if ok else "error").inc()
        self.graphql_latency.labels(operation, op_type).observe(seconds)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def process_exiting(self) -> None:
        """Multiprocess mode: this worker is going away (its live gauges go with it; its
        counters stay in the sums)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a client that went away before the answer: not a server error."""


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (``/images/{key}``, never
    the raw path, so the label set stays small); unmatched paths count as ``unmatched``.

    A client that disconnects before the response starts (mid-upload, say) is counted as 499
    and logged at DEBUG: the ``ClientDisconnect`` the body parser raises is swallowed here
    instead of reaching the server's error handler as a 500 with a traceback."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        responded = disconnected = False

        async def tracking_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not responded:
                disconnected = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status = int(message["status"])
                responded = True
            await send(message)

        try:
            await self.app(scope, tracking_receive, tracking_send)
        except ClientDisconnect:
            disconnected = not responded
            logger.debug(
                "client disconnected before the response: %s %s",
                scope.get("method"),
                scope.get("path"),
            )
        finally:
            if disconnected:
                status = CLIENT_CLOSED_REQUEST
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", "GET"))
            self.metrics.http_requests.labels(template, method, str(status)).inc()
            self.metrics.http_latency.labels(template, method).observe(
                time.perf_counter() - started
            )
