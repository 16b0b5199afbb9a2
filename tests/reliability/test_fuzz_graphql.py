"""Property-based fuzzing of the GraphQL API (hypothesis, deterministic, bounded).

* Every root field of Query and Mutation, read from the live schema, gets a document with a
  variable for each argument and hypothesis-generated variables: values of the right type
  steered towards meaningful ones (real product ids, encoders, cursors, images, URLs), edge
  values, and values of the wrong type. Uploads go as GraphQL multipart requests.
* Whole documents from hypothesis-graphql, valid and with one schema violation each.
* The HTTP envelope itself: arbitrary JSON, bytes, content types and GET parameters.

Every response: no 5xx; every error has an ``extensions.code`` from the design's list and no
internal message; ``data`` has exactly the shape the document selects, with the schema's
types and nullability; hit ranks run 1..n within ``topK``. The server answers a real search
at the end of each run.

Longer run: ``FUZZ_GRAPHQL_SCALE=20 .venv/bin/python -m pytest tests/reliability/test_fuzz_graphql.py``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import graphql
import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, queries
from hypothesis_graphql import nodes as gql_nodes

from api import ApiConfig, create_app
from api.graphql.schema import build_schema
from domain.model import Cursor
from stores.http_fetcher import IPAddress, SafeImageFetcher
from tests.api.helpers import API_KEY, PRODUCTS, World, jpeg, png, webp
from tests.reliability.support import error_codes

SCALE = max(1, int(os.environ.get("FUZZ_GRAPHQL_SCALE", "1")))
SCHEMA = build_schema()._schema
ROOTS: dict[str, graphql.GraphQLObjectType] = {
    "query": cast("graphql.GraphQLObjectType", SCHEMA.query_type),
    "mutation": cast("graphql.GraphQLObjectType", SCHEMA.mutation_type),
}
OPERATIONS = [(kind, name) for kind, root in ROOTS.items() for name in root.fields]
UPLOADS = {"searchByImage": "image.upload", "addProduct": "image"}
"""Where each operation takes a file, as a variable path for the multipart map."""

EXAMPLES_PER_OPERATION = 60
PRODUCT_IDS = [pid for pid, _, _ in PRODUCTS]
IMAGES = [png(), jpeg(), webp(), png(size=(1, 1))]
PUBLIC_ADDRESS = ipaddress.ip_address("93.184.216.34")


async def _public_resolver(host: str, port: int) -> list[IPAddress]:
    return [PUBLIC_ADDRESS]


def _web(request: httpx.Request) -> httpx.Response:
    """'The internet' for the fetcher: /missing is a 404, anything else an image."""
    if request.url.path == "/missing":
        return httpx.Response(404)
    return httpx.Response(200, content=IMAGES[len(request.url.path) % len(IMAGES)])


@pytest.fixture
def client() -> Iterator[TestClient]:
    """A fresh app per test (mutations change the catalog), with the real SSRF-safe fetcher
    answering from memory: no request leaves the process."""
    fetcher = SafeImageFetcher(resolver=_public_resolver, transport=httpx.MockTransport(_web))
    world = World(fetcher=fetcher)
    asyncio.run(world.seed())
    app = create_app(world.services(), ApiConfig(api_keys=(API_KEY,), serve_images=True))
    with TestClient(app) as test_client:
        yield test_client


# -- values ----------------------------------------------------------------------------------

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
"""Anything JSON can carry: for values of the wrong type."""

SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
"""Lone surrogates: valid JSON (``"\\ud800"``), not valid Unicode text."""
HOSTILE_TEXTS = st.sampled_from(["\ud800", "red \udfff dress", "a\x00b", "\x00"]) | st.builds(
    "".join, st.lists(st.text(max_size=5) | SURROGATES, min_size=1, max_size=4)
)
TEXTS = (
    st.sampled_from(
        ["red summer dress", "black", "white sneakers", "", "   ", "\x00", "💃 dress", "a" * 3000]
    )
    | st.text(max_size=40)
    | HOSTILE_TEXTS
)


def _token(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode()


HOSTILE_CURSORS = st.sampled_from(
    [
        _token('{"o": Infinity}'),
        _token('{"o": -Infinity, "a": null}'),
        _token('{"o": NaN}'),
        _token('{"o": 1e400}'),
        _token("1e400"),
        _token('{"o": ' + "9" * 5000 + "}"),
        _token("[" * 700 + "]" * 700),
        _token('{"o": 0, "a": "\\ud800"}'),
        _token('{"o": 0, "a": "' + "x" * 300 + '"}'),
        Cursor(after_id="p1\x00").encode(),
    ]
)
CURSORS = (
    st.sampled_from([Cursor(offset=1).encode(), Cursor(after_id="p3").encode(), "", "%%%"])
    | st.builds(lambda o: Cursor(offset=o).encode(), st.integers(-5, 10**6))
    | st.builds(
        lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode(),
        st.fixed_dictionaries({"o": JSON_VALUES, "a": JSON_VALUES}),
    )
    | st.text(max_size=20)
    | HOSTILE_CURSORS
)
B64_IMAGES = (
    st.sampled_from([base64.b64encode(i).decode() for i in IMAGES])
    | st.sampled_from(["", "=", "data:image/png;base64," + base64.b64encode(IMAGES[0]).decode()])
    | st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
    | st.text(max_size=30)
)
URLS = st.sampled_from(
    [
        "https://shop.example/a.png",
        "http://img.example/x.jpg",
        "https://shop.example/missing",
        "http://127.0.0.1/a.png",
        "http://[::1]/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:25/",
        "http://user:pw@shop.example/a.png",
        "not a url",
        "",
    ]
) | st.text(max_size=30)
HUGE_NUMBERS = st.sampled_from([2**31, -(2**31) - 1, 2**63, 2**64, 10**400, -(10**400)])
"""Past every Int (and float) a client could mean; sent as JSON numbers."""
INTS = (
    st.sampled_from([0, 1, -1, 3, 10, 100, 101, 10**9, 2**31 - 1, -(2**31)])
    | st.integers(-5, 150)
    | HUGE_NUMBERS
)
FLOATS = (
    st.sampled_from([0.0, 0.5, 1.0, -0.1, 1.1, 1e308, -1e308, 5e-324, float("inf")])
    | st.floats(-2, 3, allow_nan=False)
    | HUGE_NUMBERS
)
LONG_IDS = st.sampled_from(["x" * 257, "p1" * 5000, "é" * 300]) | st.text(
    min_size=257, max_size=400
)
IDS = (
    st.sampled_from([*PRODUCT_IDS, "nope", "", " "])
    | st.text(max_size=12)
    | LONG_IDS
    | HOSTILE_TEXTS
)
TAG_KEYS = (
    st.sampled_from(["type", "colour", "", "size", "a\x00b", "$where", "a.b", "k" * 200])
    | st.text(max_size=8)
    | HOSTILE_TEXTS
)
TAG_VALUES = (
    st.sampled_from(["Dress", "Black", "White", "Shoes", ""]) | st.text(max_size=8) | HOSTILE_TEXTS
)

HINTS: dict[str, st.SearchStrategy[Any]] = {
    "text": TEXTS,
    "name": TEXTS,
    "description": TEXTS,
    "encoder": st.sampled_from(["fake", "other", "nope", ""]) | st.text(max_size=10),
    "after": CURSORS,
    "base64": B64_IMAGES,
    "url": URLS,
    "key": TAG_KEYS,
    "value": TAG_VALUES,
    "values": st.lists(TAG_VALUES, max_size=3),
    "keys": st.none() | st.lists(TAG_KEYS, max_size=3),
    "id": IDS,
    "productId": IDS,
}


def scalar_values(scalar: graphql.GraphQLScalarType) -> st.SearchStrategy[Any]:
    match scalar.name:
        case "Int":
            return INTS
        case "Float":
            return FLOATS
        case "Boolean":
            return st.booleans()
        case "ID":
            return IDS | st.integers(0, 10)
        case "String":
            return st.text(max_size=30)
        case "Upload":
            return st.none()  # filled in by the multipart request, if at all
    raise AssertionError(f"no strategy for scalar {scalar.name}")


def values_for(type_: graphql.GraphQLInputType, name: str) -> st.SearchStrategy[Any]:
    """Values of ``type_`` steered by the argument or field name, now and then a value of
    the wrong type or a null where none is allowed."""
    if isinstance(type_, graphql.GraphQLNonNull):
        right = _typed(cast("graphql.GraphQLInputType", type_.of_type), name)
    else:
        right = st.none() | _typed(type_, name)
    return st.one_of(right, right, right, right, right, right, right, right, right, JSON_VALUES)


def _typed(type_: graphql.GraphQLInputType, name: str) -> st.SearchStrategy[Any]:
    if isinstance(type_, graphql.GraphQLList):
        if name in HINTS and name in ("values", "keys"):
            return HINTS[name]
        item = cast("graphql.GraphQLInputType", type_.of_type)
        return st.lists(values_for(item, name), max_size=3)
    if isinstance(type_, graphql.GraphQLInputObjectType):
        return input_object(type_)
    if isinstance(type_, graphql.GraphQLScalarType):
        if name in HINTS and type_.name != "Upload":
            return HINTS[name] | scalar_values(type_)
        return scalar_values(type_)
    if isinstance(type_, graphql.GraphQLEnumType):  # a member, now and then a wrong name
        return st.sampled_from(sorted(type_.values)) | st.text(max_size=8)
    raise AssertionError(f"no strategy for {type_}")


def input_object(type_: graphql.GraphQLInputObjectType) -> st.SearchStrategy[dict[str, Any]]:
    required = {
        name: values_for(f.type, name)
        for name, f in type_.fields.items()
        if isinstance(f.type, graphql.GraphQLNonNull)
    }
    optional = {
        name: values_for(f.type, name)
        for name, f in type_.fields.items()
        if not isinstance(f.type, graphql.GraphQLNonNull)
    }
    generic = st.fixed_dictionaries(required, optional=optional)
    if type_.name == "ImageInput":
        # Mostly one source, as a client would send it; sometimes none or several.
        one = (
            st.fixed_dictionaries({"url": URLS})
            | st.fixed_dictionaries({"base64": B64_IMAGES})
            | st.just({"upload": None})
        )
        return st.one_of(one, one, one, generic)
    return generic


# -- documents -------------------------------------------------------------------------------


def selection(type_: graphql.GraphQLOutputType) -> str:
    """Every field below ``type_`` (the schema is shallow: depth stays below the limit)."""
    named = graphql.get_named_type(type_)
    if not isinstance(named, graphql.GraphQLObjectType):
        return ""
    fields = [
        f"{name} {selection(f.type)}".strip()
        for name, f in named.fields.items()
        if not any(isinstance(a.type, graphql.GraphQLNonNull) for a in f.args.values())
    ]
    return "{ __typename " + " ".join(fields) + " }"


def document(kind: str, name: str) -> str:
    field = ROOTS[kind].fields[name]
    definitions, arguments = [], []
    for arg_name, arg in field.args.items():
        definition = f"${arg_name}: {arg.type}"
        if arg.default_value is not graphql.Undefined:
            default = graphql.ast_from_value(arg.default_value, arg.type)
            assert default is not None
            definition += f" = {graphql.print_ast(default)}"
        definitions.append(definition)
        arguments.append(f"{arg_name}: ${arg_name}")
    head = f"{kind} Fuzz({', '.join(definitions)})" if definitions else kind
    call = f"{name}({', '.join(arguments)})" if arguments else name
    return f"{head} {{ {call} {selection(field.type)} }}"


def variables_for(kind: str, name: str) -> st.SearchStrategy[dict[str, Any]]:
    field = ROOTS[kind].fields[name]
    required, optional = {}, {}
    for arg_name, arg in field.args.items():
        values = values_for(arg.type, arg_name)
        needed = isinstance(arg.type, graphql.GraphQLNonNull)
        if needed and arg.default_value is graphql.Undefined:
            required[arg_name] = values
        else:
            optional[arg_name] = values
    return st.fixed_dictionaries(required, optional=optional)


# -- checking responses ----------------------------------------------------------------------


def check_shape(query: str, result: Mapping[str, Any]) -> None:
    """``data`` holds exactly what the document selects, typed as the schema says."""
    assert set(result) <= {"data", "errors", "extensions"}, result
    codes = error_codes(result)
    data = result.get("data")
    if data is None:
        assert codes, result
        return
    ast = graphql.parse(query)
    fragments = {
        d.name.value: d for d in ast.definitions if isinstance(d, graphql.FragmentDefinitionNode)
    }
    operations = [d for d in ast.definitions if isinstance(d, graphql.OperationDefinitionNode)]
    assert len(operations) == 1
    root = ROOTS[operations[0].operation.value]
    _check_object(data, root, operations[0].selection_set, fragments, ["data"])


def _fields(
    type_: graphql.GraphQLObjectType,
    selection_set: graphql.SelectionSetNode,
    fragments: Mapping[str, graphql.FragmentDefinitionNode],
) -> dict[str, graphql.FieldNode]:
    found: dict[str, graphql.FieldNode] = {}
    for node in selection_set.selections:
        if isinstance(node, graphql.FieldNode):
            found.setdefault((node.alias or node.name).value, node)
        elif isinstance(node, graphql.InlineFragmentNode):
            found.update(_fields(type_, node.selection_set, fragments))
        elif isinstance(node, graphql.FragmentSpreadNode):
            found.update(_fields(type_, fragments[node.name.value].selection_set, fragments))
    return found


def _check_object(
    value: Any,
    type_: graphql.GraphQLObjectType,
    selection_set: graphql.SelectionSetNode,
    fragments: Mapping[str, graphql.FragmentDefinitionNode],
    path: list[str | int],
) -> None:
    assert isinstance(value, dict), path
    expected = _fields(type_, selection_set, fragments)
    assert set(value) == set(expected), (path, sorted(value), sorted(expected))
    for key, node in expected.items():
        name = node.name.value
        field_type: graphql.GraphQLOutputType = (
            graphql.GraphQLNonNull(graphql.GraphQLString)
            if name == "__typename"
            else type_.fields[name].type
        )
        _check_value(value[key], field_type, node.selection_set, fragments, [*path, key])
        if name == "__typename":
            assert value[key] == type_.name, path


def _check_value(
    value: Any,
    type_: graphql.GraphQLOutputType,
    selection_set: graphql.SelectionSetNode | None,
    fragments: Mapping[str, graphql.FragmentDefinitionNode],
    path: list[str | int],
) -> None:
    if isinstance(type_, graphql.GraphQLNonNull):
        assert value is not None, f"null at non-null {path}"
        _check_value(value, type_.of_type, selection_set, fragments, path)
        return
    if value is None:
        return
    if isinstance(type_, graphql.GraphQLList):
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            _check_value(item, type_.of_type, selection_set, fragments, [*path, i])
        return
    if isinstance(type_, graphql.GraphQLObjectType):
        assert selection_set is not None
        _check_object(value, type_, selection_set, fragments, path)
        return
    if isinstance(type_, graphql.GraphQLEnumType):
        assert value in type_.values, (path, type_.name, value)
        return
    assert isinstance(type_, graphql.GraphQLScalarType), path
    checks: dict[str, Callable[[Any], bool]] = {
        "Int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
        "Float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "String": lambda v: isinstance(v, str),
        "ID": lambda v: isinstance(v, str),
        "Boolean": lambda v: isinstance(v, bool),
    }
    assert checks[type_.name](value), (path, type_.name, value)


def check_search_page(name: str, variables: Mapping[str, Any], data: Any) -> None:
    """Hits are ranked 1, 2, ... (offset by a cursor) and never more than topK."""
    if not isinstance(data, dict) or not isinstance(data.get(name), dict):
        return
    hits = data[name].get("hits", [])
    top_k = variables.get("topK", 10)
    assert len(hits) <= top_k
    ranks = [h["rank"] for h in hits]
    assert ranks == list(range(ranks[0], ranks[0] + len(ranks))) if ranks else True
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)


def post(
    client: TestClient, query: str, variables: Mapping[str, Any], *, key: str | None, file: Any
) -> dict[str, Any]:
    headers = {"X-API-Key": key} if key is not None else {}
    if file is None:
        # Escaped JSON (ensure_ascii), so lone surrogates travel as valid JSON escapes.
        payload = json.dumps({"query": query, "variables": dict(variables)}).encode()
        response = client.post(
            "/graphql",
            content=payload,
            headers={**headers, "content-type": "application/json"},
        )
    else:
        path, data = file
        form = {
            "operations": json.dumps({"query": query, "variables": dict(variables)}),
            "map": json.dumps({"0": [f"variables.{path}"]}),
        }
        response = client.post(
            "/graphql",
            data=form,
            files={"0": ("f.bin", data, "application/octet-stream")},
            headers=headers,
        )
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    body: dict[str, Any] = response.json()
    if response.status_code != 200:
        # Refused at the HTTP layer: GraphQL-shaped errors with codes, no data.
        assert error_codes(body), body
        assert "data" not in body, body
    return body


def assert_alive(client: TestClient) -> None:
    result = client.post(
        "/graphql",
        json={"query": '{ searchByText(text: "red dress") { hits { product { id } } } }'},
    )
    assert result.status_code == 200
    hits = result.json()["data"]["searchByText"]["hits"]
    assert hits


# -- the tests -------------------------------------------------------------------------------

FILES = st.sampled_from(IMAGES) | st.binary(max_size=500) | st.just(b"")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), OPERATIONS, ids=[n for _, n in OPERATIONS])
def test_generated_variables(client: TestClient, kind: str, name: str) -> None:
    query = document(kind, name)
    upload_path = UPLOADS.get(name)
    keys = st.sampled_from([API_KEY, API_KEY, API_KEY, None, "wrong", API_KEY[:-1] + "X"])
    seen = 0
    ok = 0

    @settings(
        max_examples=EXAMPLES_PER_OPERATION * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        variables=variables_for(kind, name),
        key=keys if kind == "mutation" else st.none(),
        file=st.none() | FILES if upload_path else st.none(),
    )
    def run(variables: dict[str, Any], key: str | None, file: bytes | None) -> None:
        nonlocal seen, ok
        seen += 1
        multipart = (upload_path, file) if upload_path and file is not None else None
        result = post(client, query, variables, key=key, file=multipart)
        check_shape(query, result)
        check_search_page(name, variables, result.get("data"))
        ok += "errors" not in result

    run()
    assert seen == EXAMPLES_PER_OPERATION * SCALE or not ROOTS[kind].fields[name].args, seen
    # The generation reaches the resolvers, not only the validation layer.
    assert ok > 0, f"{name}: no generated request succeeded"
    assert_alive(client)


UPLOAD_LITERALS = {"Upload": st.sampled_from([graphql.NullValueNode(), gql_nodes.String("x")])}


@pytest.mark.slow
@pytest.mark.parametrize("mode", [Mode.POSITIVE, Mode.NEGATIVE], ids=["valid", "one-violation"])
@pytest.mark.parametrize("kind", ["query", "mutation"])
def test_generated_documents(client: TestClient, kind: str, mode: Mode) -> None:
    """Documents from hypothesis-graphql: arguments inline, selections of every shape."""
    maker = queries if kind == "query" else mutations
    strategy = maker(SCHEMA, custom_scalars=UPLOAD_LITERALS, mode=mode, allow_x00=True)
    seen = 0

    @settings(
        max_examples=50 * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(query=strategy)
    def run(query: str) -> None:
        nonlocal seen
        seen += 1
        result = post(client, query, {}, key=API_KEY, file=None)
        check_shape(query, result)
        if mode is Mode.NEGATIVE:
            assert result.get("errors"), query

    run()
    assert seen == 50 * SCALE
    assert_alive(client)


VALID_QUERY = "{ encoders { id } }"
ENVELOPES = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "query": st.sampled_from([VALID_QUERY, "", "{", "mutation { x }"]) | JSON_VALUES,
            "variables": JSON_VALUES,
            "operationName": JSON_VALUES,
            "extensions": JSON_VALUES,
        },
    ).map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.lists(st.fixed_dictionaries({"query": st.just(VALID_QUERY)}), max_size=3).map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.text(max_size=50),
)


@pytest.mark.slow
def test_generated_http_envelopes(client: TestClient) -> None:
    """The request around the document: any JSON or bytes, any content type, GET or POST."""
    seen = 0

    @settings(
        max_examples=150 * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        body=ENVELOPES | st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
        content_type=st.sampled_from(
            [
                "application/json",
                "application/graphql-response+json",
                "text/plain",
                "multipart/form-data; boundary=xyz",
                "application/x-www-form-urlencoded",
                "",
            ]
        ),
        method=st.sampled_from(["POST", "POST", "GET"]),
    )
    def run(body: str, content_type: str, method: str) -> None:
        nonlocal seen
        seen += 1
        if method == "GET":
            params = {"query": body, "variables": body[:20]}
            response = client.get("/graphql", params=params, headers={"Accept": "application/json"})
        else:
            response = client.post(
                "/graphql",
                content=body.encode("utf-8", "surrogatepass"),
                headers={"content-type": content_type},
            )
        assert response.status_code < 500, response.text
        payload = response.json()
        assert error_codes(payload) or response.status_code == 200
        if response.status_code == 200:
            assert "data" in payload or "errors" in payload

    run()
    assert seen == 150 * SCALE
    assert_alive(client)


def test_operations_cover_the_contract() -> None:
    """The fuzz walks the live schema: every query and mutation of the design is in it."""
    names = {name for _, name in OPERATIONS}
    assert {
        "searchByText",
        "searchByImage",
        "similarProducts",
        "product",
        "products",
        "encoders",
        "addProduct",
        "deleteProduct",
    } <= names
    for kind, name in OPERATIONS:
        graphql.parse(document(kind, name))


DEEP = "[" * 5000 + "]" * 5000
FOUND_BY_FUZZING: dict[str, tuple[str, dict[str, Any]]] = {
    "null-body": ("POST", {"content": b"null"}),
    "number-body": ("POST", {"content": b"5"}),
    "string-body": ("POST", {"content": b'"x"'}),
    "deep-body": ("POST", {"content": DEEP.encode()}),
    "deep-variables": (
        "POST",
        {
            "content": (
                '{"query": "{ encoders { id } }", "variables": {"a": ' + DEEP + "}}"
            ).encode()
        },
    ),
    "deep-get-variables": ("GET", {"params": {"query": VALID_QUERY, "variables": DEEP}}),
    "empty-selection": ("POST", {"content": b'{"query": "{}"}'}),
    "empty-nested-selection": ("POST", {"content": b'{"query": "{ encoders {} }"}'}),
    "multipart-map-number": (
        "MULTIPART",
        {"operations": '{"query": "{ encoders { id } }"}', "map": "5"},
    ),
    "multipart-map-null": (
        "MULTIPART",
        {"operations": '{"query": "{ encoders { id } }"}', "map": "null"},
    ),
    "multipart-map-entry": (
        "MULTIPART",
        {"operations": '{"query": "{ encoders { id } }"}', "map": '{"0": 5}'},
    ),
    "multipart-operations-null": ("MULTIPART", {"operations": "null", "map": "{}"}),
    "multipart-path-into-scalar": (
        "MULTIPART",
        {
            "operations": '{"query": "{ encoders { id } }", "variables": {"x": 1}}',
            "map": '{"0": ["variables.x.a"]}',
        },
    ),
    "multipart-broken-body": ("RAW-MULTIPART", {"content": b"[[[[", "boundary": "xyz"}),
}


@pytest.mark.parametrize("case", list(FOUND_BY_FUZZING))
def test_what_fuzzing_found(client: TestClient, case: str) -> None:
    """The malformed requests the fuzz above found answering 500 or a code-less error: now
    each is a coded refusal (400 at the HTTP layer, or a GraphQL error)."""
    method, spec = FOUND_BY_FUZZING[case]
    json_type = {"content-type": "application/json"}
    if method == "GET":
        response = client.get(
            "/graphql", params=spec["params"], headers={"Accept": "application/json"}
        )
    elif method == "MULTIPART":
        response = client.post(
            "/graphql", data=spec, files={"0": ("a.png", IMAGES[0], "image/png")}
        )
    elif method == "RAW-MULTIPART":
        content_type = f"multipart/form-data; boundary={spec['boundary']}"
        response = client.post(
            "/graphql", content=spec["content"], headers={"content-type": content_type}
        )
    else:
        response = client.post("/graphql", content=spec["content"], headers=json_type)
    assert response.status_code in (200, 400), response.text
    body = response.json()
    assert error_codes(body) == ["BAD_USER_INPUT"], body
    assert body.get("data") is None
