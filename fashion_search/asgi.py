"""The ASGI entry point: settings -> container -> app. ``uvicorn --factory
fashion_search.asgi:create_app`` (what ``fashion-search serve`` runs)."""

from __future__ import annotations

import os

from fastapi import FastAPI

from api import ApiConfig, ApiServices
from api import create_app as create_api
from encoders.images import decode_image, probe_image
from fashion_search.settings import METRICS_DIR_ENV, Settings
from fashion_search.wiring import Container, build, images_served_by_api


def api_config(settings: Settings) -> ApiConfig:
    return ApiConfig(
        api_keys=tuple(k.get_secret_value() for k in settings.api_keys if k.get_secret_value()),
        public_url=settings.public_url,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_images_per_request=settings.max_images_per_request,
        max_request_pixels=settings.max_request_pixels,
        max_url_fetches_per_request=settings.max_url_fetches_per_request,
        cors_origins=tuple(settings.cors_origins),
        body_idle_timeout_s=settings.body_idle_timeout_s,
        # Several workers share one socket: each answers only once its encoder is warm.
        serve_when_warm=True,
        # Set by `fashion-search serve` (prometheus_client's multiprocess mode).
        metrics_multiprocess_dir=os.environ.get(METRICS_DIR_ENV) or None,
        serve_images=images_served_by_api(settings),
    )


def api_services(container: Container) -> ApiServices:
    return ApiServices(
        search=container.search,
        catalog=container.catalog_service,
        encoders=container.encoders,
        index=container.index,
        catalog_store=container.catalog,
        images=container.images,
        image_decoder=decode_image,
        image_probe=probe_image,
        fetcher=container.fetcher,
        own_endpoints=container.own_endpoints,
    )


def app_for(container: Container) -> FastAPI:
    """The API over an already-built container; closes its stores on shutdown."""
    return create_api(
        api_services(container), api_config(container.settings), on_shutdown=container.aclose
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    return app_for(build(settings or Settings()))
