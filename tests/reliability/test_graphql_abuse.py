"""GraphQL abuse (issue 8, item 3) with the default limits: each document is refused with a
clear message and a code, and before any work: the encoder, the vector index, the catalog and
the image fetcher are never called (the fakes count their calls).

tests/api/test_limits_and_errors.py checks each limit on a tightened configuration (depth 3,
16 aliases, the token limit, topK 0/-1/101/1000, a batch of two); these use the documents
issue 8 names against the limits the app ships with."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.api.helpers import Api, FakeFetcher, b64, make_api, png
from tests.reliability.support import error_codes


@dataclass
class Work:
    encoder: int
    index: int
    catalog: int
    fetches: int


class CountingApi:
    """The app over the fakes, counting every call that would cost something."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.catalog_calls = 0
        catalog = api.world.catalog
        for name in ("get_many", "get", "list", "count", "facets"):
            setattr(catalog, name, self._counted(getattr(catalog, name)))

    def _counted(self, method: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.catalog_calls += 1
            return await method(*args, **kwargs)

        return counted

    def work(self) -> Work:
        world = self.api.world
        fetcher = world.fetcher
        assert isinstance(fetcher, FakeFetcher)
        return Work(
            encoder=world.encoder.calls + world.other.calls,
            index=world.index.query_calls,
            catalog=self.catalog_calls,
            fetches=len(fetcher.requested),
        )

    async def refused(
        self, body: Any, *, status: int = 200, code: str = "BAD_USER_INPUT"
    ) -> list[str]:
        """Send ``body`` to /graphql; assert it is refused with ``code`` and nothing was done.
        Returns the error messages. How long refusing takes is never asserted here (a loaded
        machine is slow): ``python -m bench soak`` reports it per hostile case."""
        before = self.work()
        response = await self.api.client.post("/graphql", json=body)
        assert response.status_code == status, response.text[:500]
        result = response.json()
        assert result.get("data") is None, result
        codes = error_codes(result)
        assert codes, result
        assert set(codes) == {code}, result
        assert self.work() == before, "work was done for a refused document"
        return [str(e["message"]) for e in result["errors"]]


@pytest.fixture
async def counting() -> AsyncIterator[CountingApi]:
    api = await make_api()
    async with api.client:
        fetcher = api.world.fetcher
        assert isinstance(fetcher, FakeFetcher)
        fetcher.responses["https://img.example/a.png"] = png()
        yield CountingApi(api)


def nested(depth: int) -> str:
    """A searchByText selection ``depth`` fields deep (fields past the schema's own depth do
    not exist: the depth limit must speak first, whatever the fields)."""
    fields = [
        'searchByText(text: "red dress")',
        "hits",
        "product",
        "tags",
        *(f"level{i}" for i in range(depth - 5)),
        "key",
    ]
    assert len(fields) == depth
    return "{ " + " { ".join(fields) + " }" * depth


# -- depth -----------------------------------------------------------------------------------


async def test_depth_50(counting: CountingApi) -> None:
    document = nested(50)
    messages = await counting.refused({"query": document})
    assert any("exceeds maximum operation depth of 10" in m for m in messages), messages


async def test_depth_50_through_fragments(counting: CountingApi) -> None:
    """Each fragment adds one level; the limit follows the spreads."""
    fragments = "".join(
        f"fragment F{i} on Product {{ tags {{ ...F{i + 1} }} }} " for i in range(1, 48)
    )
    document = (
        'query { searchByText(text: "red dress") { hits { product { ...F1 } } } } '
        + fragments
        + "fragment F48 on Product { id }"
    )
    messages = await counting.refused({"query": document})
    assert any("exceeds maximum operation depth" in m for m in messages), messages


async def test_depth_at_the_limit_still_works(counting: CountingApi) -> None:
    before = counting.work().encoder  # seeding encoded the products' images and words
    result = await counting.api.gql(
        '{ searchByText(text: "red dress") { hits { product { tags { key } } } } }'
    )
    assert "errors" not in result
    assert counting.work().encoder == before + 1  # the search ran: one encoder call


# -- aliases ---------------------------------------------------------------------------------


def aliased(count: int, field: str = 'searchByText(text: "red dress") { encoder }') -> str:
    return "{ " + " ".join(f"a{i}: {field}" for i in range(count)) + " }"


async def test_1000_aliases(counting: CountingApi) -> None:
    """Every alias of searchByText would be one more encoder call and index query."""
    messages = await counting.refused({"query": aliased(1000)})
    assert messages == ["Syntax Error: Document contains more than 2000 tokens. Parsing aborted."]


async def test_1000_aliases_within_the_token_budget_hit_the_alias_limit() -> None:
    """With the token limit out of the way, the alias limit (15) refuses the same document."""
    api = await make_api(max_tokens=100_000)
    async with api.client:
        messages = await CountingApi(api).refused({"query": aliased(1000)})
        assert any("1000 aliases found. Allowed: 15" in m for m in messages), messages
        nested_aliases = "{ encoders { " + " ".join(f"i{n}: id" for n in range(1000)) + " } }"
        messages = await CountingApi(api).refused({"query": nested_aliases})
        assert any("aliases" in m for m in messages), messages


# -- size --------------------------------------------------------------------------------------

MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "document",
    [
        '{ searchByText(text: "' + "red dress " * (MEGABYTE // 10) + '") { encoder } }',
        "# " + "x" * MEGABYTE + '\n{ searchByText(text: "red dress") { encoder } }',
        "{" + " " * MEGABYTE + 'searchByText(text: "red dress") { encoder } }',
        "{ " + 'searchByText(text: "red dress") { encoder } ' * (MEGABYTE // 40) + "}",
    ],
    ids=["string-literal", "comment", "whitespace", "repeated-fields"],
)
async def test_1_mb_document(counting: CountingApi, document: str) -> None:
    """Refused from its length, before it is parsed (images travel in variables; a document
    has no business being this long)."""
    assert len(document) >= MEGABYTE
    messages = await counting.refused({"query": document}, status=413, code="PAYLOAD_TOO_LARGE")
    assert messages == [
        f"the GraphQL document is {len(document):,} characters; the limit is 100,000"
    ]


async def test_a_long_document_under_the_limit_works(counting: CountingApi) -> None:
    document = "{" + " " * 90_000 + 'searchByText(text: "red dress") { encoder } }'
    result = await counting.api.gql(document)
    assert result == {"data": {"searchByText": {"encoder": "fake"}}}


# -- topK --------------------------------------------------------------------------------------

SEARCHES = {
    "searchByText": ('searchByText(text: "red dress", topK: $k)', {}),
    "searchByImage-url": (
        "searchByImage(image: {url: $url}, topK: $k)",
        {"url": "https://img.example/a.png"},
    ),
    "searchByImage-base64": ("searchByImage(image: {base64: $b}, topK: $k)", {"b": b64(png())}),
    "similarProducts": ('similarProducts(productId: "p1", topK: $k)', {}),
}
DECLARATIONS = {"url": "$url: String!", "b": "$b: String!"}


@pytest.mark.parametrize("top_k", [0, -1, 10**9])
@pytest.mark.parametrize("search", list(SEARCHES))
async def test_top_k_out_of_range(counting: CountingApi, search: str, top_k: int) -> None:
    call, extra = SEARCHES[search]
    declared = ", ".join(["$k: Int!", *(DECLARATIONS[name] for name in extra)])
    document = f"query({declared}) {{ {call} {{ hits {{ rank }} }} }}"
    messages = await counting.refused({"query": document, "variables": {"k": top_k, **extra}})
    assert messages == [f"topK must be between 1 and 100, got {top_k}"]


@pytest.mark.parametrize("top_k", ["0", "-1", "1000000000", "10000000000"])
async def test_top_k_out_of_range_inline(counting: CountingApi, top_k: str) -> None:
    """Literals too; 10^10 does not even fit a GraphQL Int."""
    document = f'{{ searchByText(text: "red dress", topK: {top_k}) {{ encoder }} }}'
    messages = await counting.refused({"query": document})
    assert len(messages) == 1
    assert "topK" in messages[0] or "32-bit" in messages[0], messages


@pytest.mark.parametrize("first", [0, -1, 10**9])
async def test_products_first_out_of_range(counting: CountingApi, first: int) -> None:
    messages = await counting.refused(
        {
            "query": "query($n: Int!) { products(first: $n) { items { id } } }",
            "variables": {"n": first},
        }
    )
    assert messages == [f"first must be between 1 and 100, got {first}"]


# -- batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 10, 1000])
async def test_batched_operations(counting: CountingApi, size: int) -> None:
    """Batching is off (the limit is one operation per request): a batch of any size is
    refused whole, before any of its operations runs."""
    operation = {"query": '{ searchByText(text: "red dress") { encoder } }'}
    messages = await counting.refused([operation] * size, status=400)
    assert messages == ["Batching is not enabled"]


async def test_batched_operations_in_a_multipart_request(counting: CountingApi) -> None:
    operation = {"query": '{ searchByText(text: "red dress") { encoder } }'}
    before = counting.work()
    response = await counting.api.client.post(
        "/graphql",
        data={"operations": json.dumps([operation] * 50), "map": "{}"},
        files={"0": ("a.png", png(), "image/png")},
    )
    assert response.status_code == 400
    assert error_codes(response.json()) == ["BAD_USER_INPUT"]
    assert counting.work() == before


async def test_several_operations_in_one_document_run_at_most_one(counting: CountingApi) -> None:
    document = " ".join(
        f'query Q{i} {{ searchByText(text: "red dress {i}") {{ encoder }} }}' for i in range(50)
    )
    before = counting.work()
    result = await counting.api.gql(document, operation_name="Q7")
    assert result == {"data": {"searchByText": {"encoder": "fake"}}}
    assert counting.work().encoder == before.encoder + 1
    unknown = await counting.api.client.post(
        "/graphql", json={"query": document, "operationName": "Q99"}
    )
    assert unknown.status_code == 400
    assert error_codes(unknown.json()) == ["BAD_USER_INPUT"]
    assert counting.work().encoder == before.encoder + 1


async def test_megabyte_search_text_in_variables_is_refused_before_encoding(
    counting: CountingApi,
) -> None:
    messages = await counting.refused(
        {
            "query": "query($t: String!) { searchByText(text: $t) { encoder } }",
            "variables": {"t": "red dress " * 100_000},
        }
    )
    assert any("limit is 1,000" in m for m in messages), messages
