"""Input types and their translation into domain values."""

from __future__ import annotations

from typing import TypeVar

import strawberry
from strawberry.file_uploads import Upload

from domain import model
from domain.errors import BadInput

T = TypeVar("T")


def opt(value: T | None) -> T | None:
    """None for an argument or field the client left out (UNSET keeps the SDL free of
    ``= null`` defaults, as in the design's contract)."""
    return None if value is strawberry.UNSET else value


@strawberry.input(description="The tag `key` must equal one of `values`.")
class TagFilter:
    key: str
    values: list[str]


@strawberry.input(description="Products whose tags satisfy every TagFilter.")
class ProductFilter:
    tags: list[TagFilter]

    def to_domain(self) -> model.ProductFilter | None:
        if len(self.tags) > model.MAX_FILTER_KEYS:
            raise BadInput(
                f"the filter has {len(self.tags):,} tags; the limit is {model.MAX_FILTER_KEYS}"
            )
        any_of: dict[str, tuple[str, ...]] = {}
        for tag in self.tags:
            key = tag.key.strip()
            if not key:
                raise BadInput("a tag filter needs a key")
            if key in any_of:
                raise BadInput(f"tag {key!r} appears twice in the filter; list its values once")
            if not tag.values:
                raise BadInput(f"the filter on {key!r} lists no values")
            any_of[key] = tuple(tag.values)
        return model.ProductFilter(any_of=any_of) if any_of else None


def filter_of(value: ProductFilter | None) -> model.ProductFilter | None:
    value = opt(value)
    return value.to_domain() if value is not None else None


@strawberry.input(
    description="An image to search with: exactly one of an http(s) URL, base64-encoded bytes "
    "or a file uploaded per the GraphQL multipart request spec."
)
class ImageInput:
    url: str | None = strawberry.UNSET
    base64: str | None = strawberry.UNSET
    upload: Upload | None = strawberry.UNSET


@strawberry.input(description="A tag of a new product.")
class TagInput:
    key: str
    value: str


def tags_of(tags: list[TagInput] | None) -> dict[str, str]:
    given = opt(tags) or []
    if len(given) > model.MAX_PRODUCT_TAGS:
        raise BadInput(f"{len(given):,} tags given; the limit is {model.MAX_PRODUCT_TAGS}")
    result: dict[str, str] = {}
    for tag in given:
        key = tag.key.strip()
        if not key:
            raise BadInput("a tag needs a key")
        if key in result:
            raise BadInput(f"tag {key!r} is given twice")
        result[key] = tag.value
    return result


@strawberry.input(description="A new product (or a replacement for the product with that id).")
class AddProductInput:
    id: strawberry.ID
    name: str
    description: str | None = strawberry.UNSET
    tags: list[TagInput] | None = strawberry.UNSET
