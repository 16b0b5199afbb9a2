"""FastExecutionContext completes plain objects itself: its answers (data and errors) must
be graphql-core's, for every shape a client may ask for, and it must actually take over."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import strawberry
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from api.graphql.context import GraphQLContext
from api.graphql.execution import FastExecutionContext
from api.graphql.router import ApiGraphQLRouter
from api.graphql.schema import build_schema
from tests.api.helpers import Api, make_api
from tests.fakes import fake_image

QUERIES: list[tuple[str, dict[str, Any]]] = [
    (
        """query($text: String!) { searchByText(text: $text, topK: 4) {
             encoder tookMs nextCursor
             hits { rank score product { id name description imageUrl tags { key value } } } } }""",
        {"text": "white sneakers"},
    ),
    (  # aliases, the same field twice, __typename at every level, named + inline fragments
        """fragment P on Product { id pid: id name tags { k: key value __typename } }
           query Q($text: String!) {
             first: searchByText(text: $text, topK: 3) {
               __typename hits { __typename rank rank score product { ...P ... on Product { imageUrl } } } }
             again: searchByText(text: $text, topK: 1) { hits { product { name } } } }""",
        {"text": "black summer dress"},
    ),
    (  # @skip / @include driven by variables
        """query($text: String!, $withTags: Boolean!, $noScore: Boolean!) {
             searchByText(text: $text, topK: 3) {
               hits { score @skip(if: $noScore) rank
                      product { id tags @include(if: $withTags) { key value } } } } }""",
        {"text": "denim jacket", "withTags": False, "noScore": True},
    ),
    (
        """query($text: String!, $withTags: Boolean!, $noScore: Boolean!) {
             searchByText(text: $text, topK: 3) {
               hits { score @skip(if: $noScore) rank
                      product { id tags @include(if: $withTags) { key value } } } } }""",
        {"text": "denim jacket", "withTags": True, "noScore": False},
    ),
    (  # objects with resolvers inside (totalCount, indexedCount) and plain ones
        """{ products(first: 3) { totalCount nextCursor items { id name tags { key value } } }
             encoders { id dim modalities isDefault indexedCount }
             product(id: "p2") { id name description imageUrl }
             missing: product(id: "nope") { id } }""",
        {},
    ),
    (  # errors: a bad argument and an unknown encoder next to a good field
        """{ ok: product(id: "p1") { id } bad: searchByText(text: "x", topK: 0) { encoder }
             other: searchByText(text: "x", encoder: "nope") { encoder } }""",
        {},
    ),
]


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    instance = await make_api()
    async with instance.client:
        yield instance


async def run(
    api: Api, context_class: type[Any], query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    schema = build_schema(api.config)
    schema.execution_context_class = context_class
    result = await schema.execute(
        query, variable_values=variables, context_value=GraphQLContext(api.app.state.api)
    )
    errors = [(e.message, e.path, e.locations) for e in result.errors or []]
    data = result.data
    if data is not None and "searchByText" in data and data["searchByText"]:
        data["searchByText"].pop("tookMs", None)  # a time: differs between two runs
    return {"data": data, "errors": errors}


@pytest.mark.parametrize(("query", "variables"), QUERIES)
async def test_same_answers_as_graphql_core(
    api: Api, query: str, variables: dict[str, Any]
) -> None:
    fast = await run(api, FastExecutionContext, query, variables)
    general = await run(api, StrawberryGraphQLCoreExecutionContext, query, variables)
    assert fast == general
    assert fast["data"] is not None or fast["errors"]  # something was answered


@pytest.fixture
def field_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    executed: list[str] = []
    original = StrawberryGraphQLCoreExecutionContext.execute_field

    def counting(self: Any, parent_type: Any, *args: Any, **kwargs: Any) -> Any:
        executed.append(parent_type.name)
        return original(self, parent_type, *args, **kwargs)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "execute_field", counting)
    return executed


async def test_plain_objects_skip_the_per_field_machinery(
    api: Api, field_counter: list[str]
) -> None:
    query, variables = QUERIES[0]
    await run(api, StrawberryGraphQLCoreExecutionContext, query, variables)
    general = len(field_counter)
    field_counter.clear()
    await run(api, FastExecutionContext, query, variables)
    assert field_counter == ["Query"]  # only the root field's resolver runs
    assert general > 50


# -- objects that are not what their type says: the general path reports the error ----------


@dataclass
class Row:
    name: str | None
    size: Any


@strawberry.type
class Item:
    name: str
    size: int


@strawberry.type
class Shelf:
    label: str
    items: list[Item]


@strawberry.type
class ShelfQuery:
    @strawberry.field
    def shelf(self, broken: str = "") -> Shelf:
        rows = [Item(name="a", size=1), Item(name="b", size=2)]
        if broken == "null":
            rows.append(Row(name=None, size=3))  # type: ignore[arg-type]
        elif broken == "int":
            rows.append(Row(name="c", size=2**40))  # type: ignore[arg-type]
        elif broken == "str":
            rows.append(Row(name="d", size="many"))  # type: ignore[arg-type]
        return Shelf(label="top", items=rows)


@pytest.mark.parametrize("broken", ["", "null", "int", "str"])
def test_bad_values_give_graphql_cores_errors(broken: str) -> None:
    query = '{ shelf(broken: "' + broken + '") { label items { name size } } }'
    answers = []
    for context_class in (FastExecutionContext, StrawberryGraphQLCoreExecutionContext):
        schema = strawberry.Schema(query=ShelfQuery, execution_context_class=context_class)
        result = schema.execute_sync(query)
        errors = [(e.message, e.path, e.locations) for e in result.errors or []]
        answers.append((result.data, errors))
    assert answers[0] == answers[1]
    assert bool(answers[0][1]) == bool(broken)


async def test_responses_are_utf8_json_with_a_standard_library_fallback(api: Api) -> None:
    await api.world.products.add("u1", "Crème brûlée dress 👗", fake_image("creme dress"))
    response = await api.client.post(
        "/graphql",
        json={"query": '{ product(id: "u1") { name } }'},
    )
    assert response.headers["content-type"].startswith("application/json")
    assert json.loads(response.content.decode("utf-8")) == {
        "data": {"product": {"name": "Crème brûlée dress 👗"}}
    }
    router = ApiGraphQLRouter(build_schema(api.config), max_document_chars=1000)
    big = {"n": 2**70}  # beyond orjson's 64-bit integers
    assert json.loads(router.encode_json(big)) == big
