"""Output types, mapped from domain objects."""

from __future__ import annotations

import strawberry

from api.graphql.context import GraphQLContext
from api.graphql.decorators import field
from domain import model


@strawberry.type(description="A tag of a product: category, colour, gender, ...")
class Tag:
    key: str
    value: str


@strawberry.type(description="A catalog product.")
class Product:
    id: strawberry.ID
    name: str
    description: str | None
    image_url: str = strawberry.field(
        description="Absolute URL of the product's primary image (empty when it has none)."
    )
    tags: list[Tag]

    @classmethod
    def from_domain(cls, product: model.Product, image_url: str) -> Product:
        return cls(
            id=strawberry.ID(product.id),
            name=product.name,
            description=product.description,
            image_url=image_url,
            tags=[Tag(key=k, value=v) for k, v in sorted(product.tags.items())],
        )


def product_of(context: GraphQLContext, product: model.Product) -> Product:
    url = context.state.services.catalog.image_url(product)
    return Product.from_domain(product, context.absolute_url(url))


@strawberry.type(description="One result of a search.")
class SearchHit:
    rank: int = strawberry.field(description="1-based position in the whole ranking.")
    score: float = strawberry.field(description="Cosine similarity; higher is closer.")
    product: Product


@strawberry.type(description="A page of search results.")
class SearchPage:
    hits: list[SearchHit]
    encoder: str = strawberry.field(description="Id of the encoder that answered.")
    took_ms: float
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` to get the next page; null on the last page."
    )

    @classmethod
    def from_domain(cls, context: GraphQLContext, page: model.SearchPage) -> SearchPage:
        context.remember(*(hit.product for hit in page.hits))
        return cls(
            hits=[
                SearchHit(
                    rank=hit.rank,
                    score=hit.score,
                    product=Product.from_domain(hit.product, context.absolute_url(hit.image_url)),
                )
                for hit in page.hits
            ],
            encoder=page.encoder_id,
            took_ms=page.took_ms,
            next_cursor=page.next_cursor,
        )


@strawberry.type(description="A page of products in id order.")
class ProductConnection:
    items: list[Product]
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` to get the next page; null on the last page."
    )
    filter: strawberry.Private[model.ProductFilter | None]

    @field(description="Number of products matching the filter, over all pages.")
    async def total_count(self, info: strawberry.Info[GraphQLContext, None]) -> int:
        return await info.context.state.services.catalog.count(self.filter)


@strawberry.type(description="How many products carry one value of a tag.")
class FacetValue:
    value: str
    count: int


@strawberry.type(description="The values of one tag key, most frequent first.")
class Facet:
    key: str
    values: list[FacetValue]


@strawberry.type(description="An encoder this server can search with.")
class EncoderInfo:
    id: str
    dim: int
    modalities: list[str] = strawberry.field(description='"text" and/or "image".')
    is_default: bool

    @field(description="Number of products indexed with this encoder.")
    async def indexed_count(self, info: strawberry.Info[GraphQLContext, None]) -> int:
        return await info.context.state.status.indexed_count(self.id)
