"""The FastAPI app factory: GraphQL at /graphql (GraphiQL in a browser), the REST shims, the
local image store under /images, health, readiness and metrics, OpenAPI at /docs; GraphiQL
and Swagger UI load their scripts from /static (vendored), never from a CDN."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.config import ApiConfig, ApiServices
from api.docs_ui import docs_router, mount_static
from api.errors import install_error_handlers
from api.graphql.context import GraphQLContext
from api.graphql.multipart import MultipartLimits
from api.graphql.router import ApiGraphQLRouter
from api.graphql.schema import build_schema
from api.limits import BodyLimitsMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.rest import router as rest_router
from api.routes import health_router, images_router
from api.services import ApiState

DESCRIPTION = """Visual search over a fashion catalog.

* **GraphQL** at [`/graphql`](/graphql) (open it in a browser for GraphiQL): search by text,
  by image (URL, base64 or upload) and by product, browse and filter products, add and delete
  products (mutations need an `X-API-Key` header).
* **REST shims** for legacy clients: `POST /get_image_by_text`, `POST /get_similar_images`.
* Operations: `/healthz`, `/readyz`, `/metrics`.

Errors are JSON `{"detail": ..., "code": ...}`.
"""


def create_app(
    services: ApiServices,
    config: ApiConfig | None = None,
    *,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    config = config or ApiConfig()
    metrics = Metrics(multiprocess_dir=config.metrics_multiprocess_dir)
    state = ApiState.build(services, config, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if config.warm_up_encoder:
            state.status.start_warmup()
            if config.serve_when_warm:
                await state.status.warmed_up()
        try:
            yield
        finally:
            await state.status.aclose()
            if on_shutdown is not None:
                await on_shutdown()
            metrics.process_exiting()

    app = FastAPI(
        title=config.title,
        version=config.version,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # our /docs serves the vendored Swagger UI (works offline)
        redoc_url=None,
    )
    app.state.api = state
    install_error_handlers(app)

    async def get_context() -> GraphQLContext:
        return GraphQLContext(state)

    graphql = ApiGraphQLRouter(
        build_schema(config, metrics),
        path="/graphql",
        graphql_ide="graphiql" if config.graphiql else None,
        context_getter=get_context,
        multipart_uploads_enabled=True,
        tags=["GraphQL"],
        max_document_chars=config.max_document_chars,
        multipart_limits=MultipartLimits(config.max_upload_files, config.max_form_fields),
    )
    app.include_router(graphql)
    app.include_router(rest_router)
    app.include_router(health_router)
    app.include_router(docs_router(config.title, app.openapi_url or "/openapi.json"))
    mount_static(app)
    if config.serve_images:
        app.include_router(images_router)

    # Last added runs first: CORS, then metrics (so rejected bodies are counted), then limits.
    app.add_middleware(
        BodyLimitsMiddleware,
        max_bytes=config.body_limit,
        idle_timeout_s=config.body_idle_timeout_s,
        on_stall=metrics.body_stalls.inc,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["content-type", "x-api-key", "apollo-require-preflight"],
            max_age=600,
        )
    return app
