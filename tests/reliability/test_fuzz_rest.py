"""Schemathesis against the app's own /openapi.json: every operation, positive and negative
data, in-process over ASGI, with the real SSRF-safe fetcher (its DNS and HTTP replaced by
loopback-free stand-ins, so no request leaves the process).

Each operation gets a bounded, deterministic number of generated requests (``derandomize``);
together they are more than 1,000. Every response must pass schemathesis' checks (no 5xx,
status code, content type, headers and body as documented, schema-valid data accepted,
invalid data rejected), every error body must carry a code from the design's list, and the
server must still answer a real search afterwards.

The longer run multiplies every budget (``FUZZ_REST_SCALE=20`` is about 25,000 requests):

    FUZZ_REST_SCALE=20 .venv/bin/python -m pytest tests/reliability/test_fuzz_rest.py

or, against a running server, the schemathesis CLI:

    .venv/bin/schemathesis run http://127.0.0.1:8000/openapi.json --max-examples 2000
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api import ApiConfig, create_app
from stores.http_fetcher import IPAddress, SafeImageFetcher
from tests.api.helpers import API_KEY, World, png

SCALE = max(1, int(os.environ.get("FUZZ_REST_SCALE", "1")))

# (method, path, generated requests, both generation modes?)
BUDGETS: list[tuple[str, str, int, bool]] = [
    ("POST", "/get_image_by_text", 350, True),
    ("POST", "/get_similar_images", 400, True),
    ("GET", "/images/{key}", 300, True),
]
PARAMETERLESS = ["/healthz", "/readyz", "/metrics"]
assert sum(b[2] for b in BUDGETS) >= 1_000

DESIGN_CODES = {
    "BAD_USER_INPUT",
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "PAYLOAD_TOO_LARGE",
    "UPSTREAM_UNAVAILABLE",
}
PUBLIC_ADDRESS = ipaddress.ip_address("93.184.216.34")
IMAGE = png((120, 40, 200))


async def _public_resolver(host: str, port: int) -> list[IPAddress]:
    """Every name resolves to one public address: the SSRF rules run, DNS is never asked."""
    return [PUBLIC_ADDRESS]


def _image_server(request: httpx.Request) -> httpx.Response:
    """What 'the internet' answers to any fetched URL: the same small PNG."""
    return httpx.Response(200, content=IMAGE, headers={"content-type": "image/png"})


@dataclass
class Target:
    world: World
    client: TestClient
    schema: Any


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    fetcher = SafeImageFetcher(
        resolver=_public_resolver, transport=httpx.MockTransport(_image_server)
    )
    world = World(fetcher=fetcher)
    asyncio.run(world.seed())
    app = create_app(world.services(), ApiConfig(api_keys=(API_KEY,), serve_images=True))
    with TestClient(app) as client:  # runs the lifespan: the encoder is warmed up
        for _ in range(100):
            if client.get("/readyz").status_code == 200:
                break
        assert client.get("/readyz").status_code == 200
        yield Target(world, client, schemathesis.openapi.from_asgi("/openapi.json", app))


def _assert_error_body(path: str, response: Any) -> None:
    """Errors are JSON with a code from the design's list, never a stack trace."""
    if response.status_code < 400:
        return
    assert "Traceback" not in response.text
    body = json.loads(response.content)
    if path == "/graphql":
        assert body["errors"], body
        codes = {e["extensions"]["code"] for e in body["errors"]}
    else:
        assert set(body) == {"detail", "code"}, body
        codes = {body["code"]}
    assert codes <= DESIGN_CODES, (response.status_code, body)


def _assert_alive(target: Target) -> None:
    assert target.client.get("/healthz").json() == {"status": "ok"}
    found = target.client.post("/get_image_by_text", json={"text": "red summer dress"})
    assert found.status_code == 200
    assert found.json()["id"] == "p2"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "budget", "negative"), BUDGETS, ids=[f"{m} {p}" for m, p, _, _ in BUDGETS]
)
def test_operation_survives_generated_requests(
    target: Target, method: str, path: str, budget: int, negative: bool
) -> None:
    operation = target.schema[path][method]
    strategy = operation.as_strategy(GenerationMode.POSITIVE)
    if negative:
        strategy = st.one_of(strategy, operation.as_strategy(GenerationMode.NEGATIVE))
    # The schema cannot say "these bytes decode as a JPEG, PNG or WebP" or "this URL is
    # public": schema-valid bodies with random bytes or URLs get the documented 400 there.
    excluded = [positive_data_acceptance] if path == "/get_similar_images" else None
    seen = 0

    @settings(
        max_examples=budget * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        nonlocal seen
        seen += 1
        response = case.call_and_validate(excluded_checks=excluded)
        _assert_error_body(path, response)

    run()
    assert seen == budget * SCALE, f"{method} {path}: {seen} requests"
    _assert_alive(target)


def test_coverage_phase_edge_cases(target: Target) -> None:
    """Schemathesis' deterministic edge cases for every REST operation (boundary values,
    missing and extra fields, unexpected methods, the documented examples), including the
    parameterless ones that random generation cannot vary."""
    seen: dict[str, int] = {}
    for result in target.schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/graphql":
            continue  # Strawberry's placeholder entries; see test_fuzz_graphql.py
        excluded = [positive_data_acceptance] if operation.path == "/get_similar_images" else None
        cases = target.schema.iter_coverage_cases(
            operation,
            generation_modes=list(GenerationMode),
            generation_config=target.schema.config.generation_for(operation=operation),
        )
        for case in cases:
            seen[operation.label] = seen.get(operation.label, 0) + 1
            response = case.call_and_validate(excluded_checks=excluded)
            _assert_error_body(operation.path, response)
    assert set(seen) == {f"POST {b[1]}" for b in BUDGETS[:2]} | {
        f"GET {path}" for path in [*PARAMETERLESS, "/images/{key}"]
    }
    assert all(count >= 5 for count in seen.values()), seen
    _assert_alive(target)


@pytest.mark.parametrize("path", ["/get_similar_images", "/get_image_by_text"])
def test_deeply_nested_json_is_bad_input(target: Target, path: str) -> None:
    """Found while fuzzing: JSON nested past Python's recursion limit was a 500 on
    /get_similar_images (RecursionError out of json.loads)."""
    body = ("[" * 5000 + "]" * 5000).encode()
    response = target.client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "BAD_USER_INPUT"


HOSTILE_VALUES = st.one_of(
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
    st.sampled_from(["\ud800", "red \udfff dress", "a\x00b", "\x00", "x" * 5000]),
    st.builds(lambda a, b: a + "\ud800" + b, st.text(max_size=5), st.text(max_size=5)),
    st.sampled_from([2**63, 10**400, -(10**400), 1e308, float("inf"), float("nan")]),
)
"""What schemathesis does not send: lone surrogates (valid JSON escapes, invalid Unicode),
NULs, long texts, numbers past any integer or float a client means."""


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/get_image_by_text", "text"),
        ("/get_similar_images", "url"),
        ("/get_similar_images", "image_base64"),
    ],
)
def test_hostile_values_are_bad_input(target: Target, path: str, field: str) -> None:
    """Each hostile value in each JSON field: a 4xx with a design code, never a 500."""

    @settings(max_examples=40 * SCALE, derandomize=True, database=None, deadline=None)
    @given(value=HOSTILE_VALUES)
    def run(value: Any) -> None:
        body = json.dumps({field: value}).encode()  # ensure_ascii: surrogates as \ud800
        response = target.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= response.status_code < 500, (value, response.text[:300])
        _assert_error_body(path, response)

    run()
    _assert_alive(target)
