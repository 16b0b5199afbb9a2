"""Query and Mutation, and the schema with its limits and error handling."""

from __future__ import annotations

import functools
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.file_uploads import Upload
from strawberry.types.execution import ExecutionContext

from api.config import ApiConfig
from api.graphql.context import GraphQLContext
from api.graphql.decorators import field, mutation
from api.graphql.execution import FastExecutionContext
from api.graphql.extensions import (
    DocumentCache,
    ErrorCodes,
    OperationMetrics,
    RejectEmptySelectionSets,
    RequireOperationName,
)
from api.graphql.inputs import (
    AddProductInput,
    ImageInput,
    ProductFilter,
    filter_of,
    opt,
    tags_of,
)
from api.graphql.permissions import ApiKeyRequired
from api.graphql.types import (
    EncoderInfo,
    Facet,
    Product,
    ProductConnection,
    SearchPage,
    facets_of,
    product_of,
)
from api.metrics import Metrics
from domain import model
from domain.errors import BadInput
from domain.model import (
    DEFAULT_TOP_K,
    ImageQuery,
    SearchQuery,
    TextQuery,
    check_facet_keys,
    check_mode,
    check_new_product,
    check_product_id,
    check_search_cursor,
    validate_top_k,
)

Info = strawberry.Info[GraphQLContext, None]


async def _image_bytes(context: GraphQLContext, image: ImageInput) -> bytes:
    url, encoded, upload = opt(image.url), opt(image.base64), opt(image.upload)
    if sum(v is not None for v in (url, encoded, upload)) != 1:
        raise BadInput("give exactly one of image.url, image.base64 or image.upload")
    reader, budget = context.state.reader, context.image_budget
    if url is not None:
        return await reader.from_url(url, budget)
    if encoded is not None:
        return await reader.from_base64(encoded, budget)
    return await reader.from_upload(upload, budget)


@strawberry.type
class Query:
    @field(
        description="Products that best match a text: by their images, their words and their "
        "words' meaning, fused (`mode`, default HYBRID). A product whose name or id is the "
        "text comes first; `matchQuality` says when nothing matches well."
    )
    async def search_by_text(
        self,
        info: Info,
        text: str,
        top_k: int = DEFAULT_TOP_K,
        filter: ProductFilter | None = strawberry.UNSET,
        encoder: str | None = strawberry.UNSET,
        after: str | None = strawberry.UNSET,
        mode: model.SearchMode = model.SearchMode.HYBRID,
    ) -> SearchPage:
        query = SearchQuery(
            text=TextQuery(text),
            filter=filter_of(filter),
            top_k=top_k,
            encoder_id=opt(encoder),
            cursor=opt(after),
            mode=mode,
        )
        return SearchPage.from_domain(info.context, await info.context.state.search.search(query))

    @field(
        description="Products that look like an image, optionally steered by a text modifier "
        "(`textWeight` 0..1 is the share of the text in the query; default 0.5). The modifier "
        "counts through the same signals as a text search (the blended vector against the "
        "images, the text against the products' words and their meaning); `mode` VISUAL "
        "keeps only the images."
    )
    async def search_by_image(
        self,
        info: Info,
        image: ImageInput,
        top_k: int = DEFAULT_TOP_K,
        filter: ProductFilter | None = strawberry.UNSET,
        encoder: str | None = strawberry.UNSET,
        after: str | None = strawberry.UNSET,
        text: str | None = strawberry.UNSET,
        text_weight: float | None = strawberry.UNSET,
        mode: model.SearchMode = model.SearchMode.HYBRID,
    ) -> SearchPage:
        text, text_weight = opt(text), opt(text_weight)
        weight = 0.5 if text_weight is None else text_weight
        # Cheap checks first, so bad arguments never cost an upload read or a URL fetch.
        validate_top_k(top_k)
        if not 0.0 <= weight <= 1.0:
            raise BadInput("textWeight must be between 0 and 1")
        modifier = TextQuery(text) if text is not None else None
        check_mode(mode, modifier is not None)
        domain_filter = filter_of(filter)
        check_search_cursor(opt(after), top_k)
        data = await _image_bytes(info.context, image)
        query = SearchQuery(
            image=ImageQuery(data=data),
            text=modifier,
            text_weight=weight,
            filter=domain_filter,
            top_k=top_k,
            encoder_id=opt(encoder),
            cursor=opt(after),
            mode=mode,
        )
        return SearchPage.from_domain(info.context, await info.context.state.search.search(query))

    @field(description="Products that look like an existing product (itself excluded).")
    async def similar_products(
        self,
        info: Info,
        product_id: strawberry.ID,
        top_k: int = DEFAULT_TOP_K,
        filter: ProductFilter | None = strawberry.UNSET,
        encoder: str | None = strawberry.UNSET,
        after: str | None = strawberry.UNSET,
    ) -> SearchPage:
        query = SearchQuery(
            image=ImageQuery(product_id=str(product_id)),
            filter=filter_of(filter),
            top_k=top_k,
            encoder_id=opt(encoder),
            cursor=opt(after),
        )
        return SearchPage.from_domain(info.context, await info.context.state.search.search(query))

    @field(description="One product, or null when there is no product with that id.")
    async def product(self, info: Info, id: strawberry.ID) -> Product | None:
        found = await info.context.products.load(check_product_id(str(id)))
        return product_of(info.context, found) if found is not None else None

    @field(description="Products in id order, a page at a time (`first` 1..100).")
    async def products(
        self,
        info: Info,
        filter: ProductFilter | None = strawberry.UNSET,
        first: int = 20,
        after: str | None = strawberry.UNSET,
    ) -> ProductConnection:
        domain_filter = filter_of(filter)
        page = await info.context.state.services.catalog.list(domain_filter, opt(after), first)
        info.context.remember(*page.items)
        return ProductConnection(
            items=[product_of(info.context, p) for p in page.items],
            next_cursor=page.next_cursor,
            filter=domain_filter,
        )

    @field(
        description="Tag keys with their values and product counts, for building filters "
        "(all keys when `keys` is null; counts among the products matching `filter`)."
    )
    async def facets(
        self,
        info: Info,
        keys: list[str] | None = strawberry.UNSET,
        filter: ProductFilter | None = strawberry.UNSET,
    ) -> list[Facet]:
        keys = check_facet_keys(opt(keys))
        counts = await info.context.state.services.catalog.facets(keys, filter_of(filter))
        return facets_of(counts, keys)

    @field(
        description="Encoders this server has, the default first; a search can name one once "
        "products are indexed with it (`indexedCount` > 0), else it is NOT_FOUND."
    )
    async def encoders(self, info: Info) -> list[EncoderInfo]:
        statuses = info.context.state.status.encoders()
        statuses.sort(key=lambda s: (not s.is_default, s.info.id))
        return [
            EncoderInfo(
                id=s.info.id,
                dim=s.info.dim,
                modalities=sorted(m.value for m in s.info.modalities),
                is_default=s.is_default,
            )
            for s in statuses
        ]


@strawberry.type
class Mutation:
    @mutation(
        description="Add a product (or replace the product with that id) with its image, "
        "uploaded per the GraphQL multipart request spec. Needs an X-API-Key header.",
        permission_classes=[ApiKeyRequired],
    )
    async def add_product(self, info: Info, input: AddProductInput, image: Upload) -> Product:
        if not input.name.strip():
            raise BadInput("a product needs a name")
        tags = tags_of(input.tags)
        check_new_product(str(input.id), input.name, opt(input.description), tags)
        data = await info.context.state.reader.from_upload(image, info.context.image_budget)
        product = await info.context.state.services.catalog.add(
            product_id=str(input.id),
            name=input.name,
            image=data,
            description=opt(input.description),
            tags=tags,
        )
        info.context.forget(product.id)
        info.context.remember(product)
        return product_of(info.context, product)

    @mutation(
        description="Delete a product, its vectors and its images; false when it did not exist. "
        "Needs an X-API-Key header.",
        permission_classes=[ApiKeyRequired],
    )
    async def delete_product(self, info: Info, id: strawberry.ID) -> bool:
        existed = await info.context.state.services.catalog.delete(check_product_id(str(id)))
        info.context.forget(str(id))
        return existed


class ApiSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Errors are logged by ErrorCodes, and only the unexpected ones: bad input is the
        client's business, not the server log's."""


def build_schema(config: ApiConfig | None = None, metrics: Metrics | None = None) -> ApiSchema:
    config = config or ApiConfig()
    known_fields: set[str] = set()
    # The limiters' rule classes are made once (not per request), so DocumentCache can
    # recognise a document it has validated before.
    limit_rules = [
        *QueryDepthLimiter(max_depth=config.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=config.max_aliases).validation_rules,
    ]
    extensions: list[Any] = [
        RejectEmptySelectionSets,
        RequireOperationName,
        functools.partial(AddValidationRules, limit_rules),
        functools.partial(MaxTokensLimiter, max_token_count=config.max_tokens),
        DocumentCache,
        ErrorCodes,
    ]
    if metrics is not None:
        extensions.append(
            functools.partial(OperationMetrics, metrics=metrics, known_fields=known_fields)
        )
    schema = ApiSchema(
        query=Query,
        mutation=Mutation,
        extensions=extensions,
        execution_context_class=FastExecutionContext,
    )
    graphql_schema = schema._schema
    for root in (graphql_schema.query_type, graphql_schema.mutation_type):
        if root is not None:
            known_fields.update(root.fields)
    return schema


def schema_sdl() -> str:
    """The schema in SDL, as written to schema.graphql."""
    return build_schema().as_str().rstrip("\n") + "\n"
