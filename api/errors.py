"""One mapping from domain errors to what clients see: a GraphQL ``extensions.code`` or a REST
status with ``{"detail", "code"}``. Unexpected exceptions are logged here with their traceback
and reach clients only as a generic INTERNAL_SERVER_ERROR."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.errors import FashionSearchError

logger = logging.getLogger("api.errors")

BAD_USER_INPUT = "BAD_USER_INPUT"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
NOT_FOUND = "NOT_FOUND"
UNAUTHENTICATED = "UNAUTHENTICATED"
UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
ENCODER_UNAVAILABLE = "ENCODER_UNAVAILABLE"
WRITER_BUSY = "WRITER_BUSY"
INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
INTERNAL_MESSAGE = "Internal server error"

STATUS_BY_CODE: dict[str, int] = {
    BAD_USER_INPUT: 400,
    UNAUTHENTICATED: 401,
    NOT_FOUND: 404,
    PAYLOAD_TOO_LARGE: 413,
    UPSTREAM_UNAVAILABLE: 503,
    ENCODER_UNAVAILABLE: 503,
    WRITER_BUSY: 503,
    INTERNAL_SERVER_ERROR: 500,
}


def code_of(exc: FashionSearchError) -> str:
    """The public code of a domain error; the base class means a bug, not bad input."""
    return exc.code if exc.code in STATUS_BY_CODE else INTERNAL_SERVER_ERROR


def code_for_status(status: int) -> str:
    if status == 401:
        return UNAUTHENTICATED
    if status == 404:
        return NOT_FOUND
    if status == 413:
        return PAYLOAD_TOO_LARGE
    if status == 503:
        return UPSTREAM_UNAVAILABLE
    if 400 <= status < 500:
        return BAD_USER_INPUT
    return INTERNAL_SERVER_ERROR


def error_body(detail: str, code: str) -> dict[str, str]:
    return {"detail": detail, "code": code}


def error_response(status: int, detail: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(detail, code or code_for_status(status)), status_code=status)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":  # its location is a character offset
            parts.append("the body is not valid JSON")
            continue
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid value"))
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FashionSearchError)
    code = code_of(exc)
    if code == INTERNAL_SERVER_ERROR:
        logger.error("unexpected domain error", exc_info=exc)
        return error_response(500, INTERNAL_MESSAGE, code)
    return error_response(STATUS_BY_CODE[code], str(exc), code)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, _validation_detail(exc), BAD_USER_INPUT)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers: dict[str, Any] | None = getattr(exc, "headers", None)
    response = error_response(exc.status_code, str(exc.detail))
    if headers:
        response.headers.update(headers)
    return response


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, INTERNAL_MESSAGE, INTERNAL_SERVER_ERROR)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FashionSearchError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
