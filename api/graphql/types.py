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


# Registered on the domain enums themselves (strawberry marks the class), so fields are
# annotated with the domain types.
strawberry.enum(
    model.SearchMode,
    name="SearchMode",
    description="Which signals rank a search. HYBRID (default): the products' images, their "
    "words (BM25) and their words' meaning (text vectors), fused with query-adaptive weights. "
    "VISUAL: the images only. TEXT: the words only (lexical and semantic).",
)
strawberry.enum(
    model.MatchQuality,
    name="MatchQuality",
    description="How good the best match of a search is. STRONG: a product is named by the "
    "query, has every word of it, or looks or reads very close. NONE: no product has any "
    "word of the query and none is close: show 'no close matches' rather than the grid. "
    "WEAK: in between. Thresholds: README, Search.",
)


@strawberry.type(
    description="What each relevance signal said about a hit (null: that signal did not "
    "find it among its top results, or was not asked)."
)
class HitSignals:
    visual: float | None = strawberry.field(
        description="Cosine similarity of the query to the product's image vector."
    )
    lexical: float | None = strawberry.field(
        description="BM25 over the product's name, description and tags, relative to the "
        "best lexical match of this search (0..1)."
    )
    semantic: float | None = strawberry.field(
        description="Cosine similarity of the query to the vector of the product's words."
    )
    colour: float | None = strawberry.field(
        description="Share of the garment's pixels (in the product's photo) in the colours "
        "the query names (0..1); null when the query names no colour or the product has no "
        "colour histogram."
    )


@strawberry.type(description="One result of a search.")
class SearchHit:
    rank: int = strawberry.field(description="1-based position in the whole ranking.")
    score: float = strawberry.field(
        description="Relevance, higher is closer: the fused score when several signals rank "
        "the search (not a cosine: mostly 0..1, above 1 for a product that stands out of "
        "every signal), else that one signal's score (cosine for images). Exact matches "
        "(exactMatch) come first, and a HYBRID search naming a colour its words do not "
        "answer re-ranks its top by the garments' colour (signals.colour), so the order "
        "may differ from the scores'."
    )
    product: Product
    signals: HitSignals
    exact_match: bool = strawberry.field(
        description="The query is this product's name or id (case and spacing aside): such "
        "products come first."
    )


@strawberry.type(description="How many products carry one value of a tag.")
class FacetValue:
    value: str
    count: int


@strawberry.type(description="The values of one tag key, most frequent first.")
class Facet:
    key: str
    values: list[FacetValue]


def facets_of(counts: dict[str, dict[str, int]], keys: list[str] | None) -> list[Facet]:
    """Facets in the order of ``keys`` (sorted keys when None), values most frequent first."""
    order = keys if keys is not None else sorted(counts)
    return [
        Facet(
            key=key,
            values=[
                FacetValue(value=value, count=count)
                for value, count in sorted(counts[key].items(), key=lambda vc: (-vc[1], vc[0]))
            ],
        )
        for key in dict.fromkeys(order)
        if key in counts
    ]


@strawberry.type(description="A page of search results.")
class SearchPage:
    hits: list[SearchHit]
    encoder: str = strawberry.field(description="Id of the encoder that answered.")
    took_ms: float
    next_cursor: str | None = strawberry.field(
        description="Pass as `after` to get the next page; null on the last page."
    )
    match_quality: model.MatchQuality = strawberry.field(
        description="How good the best match is (the same on every page of a search)."
    )
    mode: model.SearchMode = strawberry.field(description="The signals that ranked this search.")
    page: strawberry.Private[model.SearchPage]

    @field(
        description="Tag values with their counts among the top 200 results of this search "
        "(so they follow the query and its filter), for narrowing it down; all keys when "
        "`keys` is null. Canonical keys (colour, type, category, audience, pattern, season, "
        "usage) are the same across catalogs: README, Facets."
    )
    async def facets(
        self,
        info: strawberry.Info[GraphQLContext, None],
        keys: list[str] | None = strawberry.UNSET,
    ) -> list[Facet]:
        wanted = model.check_facet_keys(None if keys is strawberry.UNSET else keys)
        counts = await info.context.state.search.facet_counts(self.page, wanted)
        return facets_of(counts, wanted)

    @classmethod
    def from_domain(cls, context: GraphQLContext, page: model.SearchPage) -> SearchPage:
        context.remember(*(hit.product for hit in page.hits))
        return cls(
            hits=[
                SearchHit(
                    rank=hit.rank,
                    score=hit.score,
                    product=Product.from_domain(hit.product, context.absolute_url(hit.image_url)),
                    signals=HitSignals(
                        visual=hit.signals.visual,
                        lexical=hit.signals.lexical,
                        semantic=hit.signals.semantic,
                        colour=hit.signals.colour,
                    ),
                    exact_match=hit.exact,
                )
                for hit in page.hits
            ],
            encoder=page.encoder_id,
            took_ms=page.took_ms,
            next_cursor=page.next_cursor,
            match_quality=page.match_quality,
            mode=page.mode,
            page=page,
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


@strawberry.type(description="An encoder this server can search with.")
class EncoderInfo:
    id: str
    dim: int
    modalities: list[str] = strawberry.field(description='"text" and/or "image".')
    is_default: bool

    @field(description="Number of products indexed with this encoder.")
    async def indexed_count(self, info: strawberry.Info[GraphQLContext, None]) -> int:
        return await info.context.state.status.indexed_count(self.id)
