"""Operational routes: liveness, readiness, metrics and the local image store."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from api.errors import error_response
from api.metrics import CONTENT_TYPE
from api.rest import ErrorBody
from api.services import ApiState
from domain.errors import NotFound
from domain.images import sniff_image_type

IMAGE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
IMMUTABLE = "public, max-age=31536000, immutable"


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]

health_router = APIRouter(tags=["operations"])


@health_router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health_router.get(
    "/readyz",
    summary="Readiness: default encoder loaded and every store reachable",
    responses={503: {"description": "Something is down; `down` names it."}},
)
async def readyz(state: State) -> JSONResponse:
    checks = await state.status.readiness()
    down = sorted(name for name, check in checks.items() if not check.ok)
    body = {
        "status": "unavailable" if down else "ready",
        "down": down,
        "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
    }
    return JSONResponse(body, status_code=503 if down else 200)


@health_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


images_router = APIRouter(tags=["images"])


@images_router.get(
    "/images/{key}",
    summary="A product image from the local image store",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}},
        404: {"description": "No image with that key."},
        422: {"model": ErrorBody, "description": "The key is longer than 255 characters."},
    },
)
async def image(
    request: Request,
    state: State,
    key: Annotated[str, Path(max_length=255)],
) -> Response:
    if not IMAGE_KEY.fullmatch(key) or ".." in key:
        return error_response(404, "no such image")
    etag = f'"{key}"'
    if request.headers.get("if-none-match") in (etag, f"W/{etag}"):
        # The ETag is the key, so a client can name any key: only a stored one is "not
        # modified"; a missing key is 404 whatever the client sends.
        if not await state.services.images.exists(key):
            return error_response(404, "no such image")
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": IMMUTABLE})
    try:
        data = await state.services.images.get(key)
    except NotFound:
        return error_response(404, "no such image")
    content_type = sniff_image_type(data)
    if content_type is None:
        return error_response(404, "no such image")
    headers = {
        "Cache-Control": IMMUTABLE,
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'",
    }
    body = b"" if request.method == "HEAD" else data
    response = Response(body, media_type=content_type, headers=headers)
    if request.method == "HEAD":
        response.headers["content-length"] = str(len(data))
    return response


images_router.add_api_route("/images/{key}", image, methods=["HEAD"], include_in_schema=False)
