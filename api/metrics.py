"""Prometheus metrics: requests and latency per REST route and per GraphQL operation, and the
time a search spends encoding, in the vector index and in the catalog. Each app has its own
registry (several apps in one process, as in tests, never clash); with several uvicorn workers
each worker reports its own numbers."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.services import SearchTimings

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (``/images/{key}``, never
    the raw path, so the label set stays small); unmatched paths count as ``unmatched``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", "GET"))
            self.metrics.http_requests.labels(template, method, str(status)).inc()
            self.metrics.http_latency.labels(template, method).observe(
                time.perf_counter() - started
            )
