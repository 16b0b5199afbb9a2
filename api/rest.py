"""REST shims, exactly as the legacy clients call them."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from api.services import ApiState
from domain.errors import BadInput, NotFound
from domain.model import ImageQuery, SearchHit, SearchQuery, TextQuery

SIMILAR_RESULTS = 3
MatchQualityName = Literal["strong", "weak", "none"]
_WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""What str.strip() removes, spelled out for the OpenAPI pattern (regex engines disagree on
what \\s matches)."""


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]


class TextSearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"examples": [{"text": "white sneakers"}]}
    )
    text: str = Field(
        description="What the product looks like, in words (not only whitespace, no NUL).",
        json_schema_extra={"pattern": f"^[^\\x00]*[^\\x00{_WHITESPACE}][^\\x00]*$"},
    )


_PRODUCT_EXAMPLE: dict[str, Any] = {
    "id": "0108775015",
    "name": "Strap top",
    "image_url": "http://127.0.0.1:8000/images/0108775015-3c1f0a9e5b7d2c4e8f10.jpg",
    "score": 0.8123,
    "tags": {"product_type": "Vest top", "colour": "Black"},
}


class ProductResult(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_PRODUCT_EXAMPLE]})
    id: str
    name: str
    image_url: str = Field(description="Absolute URL of the product's image.")
    score: float = Field(
        description="Relevance, higher is closer: the fused score of a text search (not a "
        "cosine; it can pass 1 for a product that stands out of every signal), the cosine "
        "similarity of an image search."
    )
    tags: dict[str, str]


class TextSearchResult(ProductResult):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_PRODUCT_EXAMPLE, "match_quality": "strong"}]}
    )
    match_quality: MatchQualityName = Field(
        description="How good this best match is: strong, weak or none (none: nothing in "
        "the catalog matches the text well; see the README's Search section)."
    )


class SimilarImagesResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {**_PRODUCT_EXAMPLE, "score": 0.9312},
                        {
                            **_PRODUCT_EXAMPLE,
                            "id": "0108775051",
                            "image_url": "http://127.0.0.1:8000/images/"
                            "0108775051-8d2e4b1c7a9f3e5d6c20.jpg",
                            "score": 0.8845,
                            "tags": {"product_type": "Vest top", "colour": "White"},
                        },
                        {
                            **_PRODUCT_EXAMPLE,
                            "id": "0599580038",
                            "name": "Timeless Midrise Brief",
                            "image_url": "http://127.0.0.1:8000/images/"
                            "0599580038-1b7c9e2d4f6a8c0e3a51.jpg",
                            "score": 0.7421,
                            "tags": {"product_type": "Bikini bottom", "colour": "Black"},
                        },
                    ],
                    "match_quality": "strong",
                }
            ]
        }
    )
    results: list[ProductResult] = Field(description="The three closest products, best first.")
    match_quality: MatchQualityName = Field(
        description="How good the best match is: strong, weak or none."
    )


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"detail": "the search text is empty", "code": "BAD_USER_INPUT"}]
        }
    )
    detail: str
    code: str = Field(
        description="BAD_USER_INPUT, PAYLOAD_TOO_LARGE, NOT_FOUND, UPSTREAM_UNAVAILABLE, "
        "ENCODER_UNAVAILABLE or INTERNAL_SERVER_ERROR"
    )


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Bad input: empty text, not an image, invalid base64, a refused URL, ...",
        404: "Nothing to return (empty catalog) or unknown encoder.",
        413: "The image or the request body is above the size limit.",
        415: "The request body is neither JSON nor multipart form data.",
        422: "The JSON body does not have the documented shape.",
        503: "The image URL or a store did not answer, or the encoder cannot be loaded.",
    }
    return {s: {"model": ErrorBody, "description": described[s]} for s in statuses}


_SIMILAR_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The query image: a multipart `file`, or JSON with `url` or `image_base64`.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A JPEG, PNG or WebP image.",
                        }
                    },
                }
            },
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["url"],
                            "properties": {"url": {"type": "string", "format": "uri"}},
                        },
                        {
                            "type": "object",
                            "required": ["image_base64"],
                            "properties": {"image_base64": {"type": "string", "format": "byte"}},
                        },
                    ]
                },
                "examples": {
                    "url": {
                        "summary": "An image on the web",
                        "value": {"url": "https://example.com/photos/red-dress.jpg"},
                    },
                    "base64": {
                        "summary": "Base64-encoded image bytes (a 1x1 PNG)",
                        "value": {
                            "image_base64": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1Pe"
                            "AAAADElEQVR42mM4IScHAAK2AQUKW6YGAAAAAElFTkSuQmCC"
                        },
                    },
                },
            },
        },
    }
}


def _result(state: ApiState, request: Request, hit: SearchHit) -> ProductResult:
    return ProductResult(
        id=hit.product.id,
        name=hit.product.name,
        image_url=state.absolute_url(hit.image_url, str(request.base_url)),
        score=hit.score,
        tags=dict(hit.product.tags),
    )


router = APIRouter(tags=["legacy REST"])


@router.post(
    "/get_image_by_text",
    response_model=TextSearchResult,
    summary="The product that best matches a text",
    responses=_errors(400, 404, 413, 422, 503),
)
async def get_image_by_text(
    body: TextSearchRequest, request: Request, state: State
) -> TextSearchResult:
    page = await state.search.search(SearchQuery(text=TextQuery(body.text), top_k=1))
    if not page.hits:
        raise NotFound("no products are indexed yet")
    best = _result(state, request, page.hits[0])
    return TextSearchResult(**best.model_dump(), match_quality=page.match_quality.value)


@router.post(
    "/get_similar_images",
    response_model=SimilarImagesResponse,
    summary="The three products that look most like an image",
    description="Send the image as multipart form data in a field named `file`, or as JSON "
    '`{"url": "https://..."}` or `{"image_base64": "..."}`.',
    responses=_errors(400, 413, 415, 503),
    openapi_extra=_SIMILAR_BODY,
)
async def get_similar_images(request: Request, state: State) -> SimilarImagesResponse:
    data = await _query_image(request, state)
    page = await state.search.search(
        SearchQuery(image=ImageQuery(data=data), top_k=SIMILAR_RESULTS)
    )
    return SimilarImagesResponse(
        results=[_result(state, request, h) for h in page.hits],
        match_quality=page.match_quality.value,
    )


async def _query_image(request: Request, state: ApiState) -> bytes:
    budget = state.image_budget(request)
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise BadInput("the multipart body needs the image in a file field named 'file'")
            return await state.reader.from_upload(upload, budget)
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadInput("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadInput('send {"url": ...} or {"image_base64": ...}')
        url, encoded = body.get("url"), body.get("image_base64")
        if (url is None) == (encoded is None):
            raise BadInput('send exactly one of "url" or "image_base64"')
        if url is not None:
            if not isinstance(url, str):
                raise BadInput('"url" must be a string')
            return await state.reader.from_url(url, budget)
        if not isinstance(encoded, str):
            raise BadInput('"image_base64" must be a string')
        return await state.reader.from_base64(encoded, budget)
    raise HTTPException(
        415, "send the image as multipart/form-data (field 'file') or as application/json"
    )


__all__ = ["ErrorBody", "ProductResult", "SimilarImagesResponse", "router"]
