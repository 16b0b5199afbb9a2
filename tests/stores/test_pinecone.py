"""PineconeVectorIndex through the real `pinecone` SDK against the fake Pinecone HTTP API."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from pydantic import SecretStr

from domain.errors import BadInput, StoreMisconfigured, UpstreamUnavailable
from domain.model import ProductFilter
from fashion_search import wiring
from fashion_search.settings import Settings
from stores.vectors.pinecone_index import (
    MAX_UPSERT_BYTES,
    PineconeVectorIndex,
    decode_name,
    encode_name,
    metadata_key,
    plan_upsert_batches,
    to_pinecone_filter,
)
from tests.stores.contracts import VectorIndexContract, random_units
from tests.stores.pinecone_fake import MAX_REQUEST_BYTES, FakePinecone, filter_matches
from tests.stores.servers import HEALTHY_TIMEOUT_S, hang_guard, pinecone_server, unique_name

__all__ = ["pinecone_server"]

DIM = 8


def make_index(
    server: FakePinecone, dim: int = DIM, timeout_s: float = HEALTHY_TIMEOUT_S
) -> tuple[str, PineconeVectorIndex]:
    name = unique_name("idx")
    host = server.create_index(name, dim)
    return name, PineconeVectorIndex(server.api_key, host=host, timeout_s=timeout_s)


class TestPineconeVectorIndex(VectorIndexContract):
    dim = DIM

    @pytest.fixture
    async def vector_index(
        self, pinecone_server: FakePinecone
    ) -> AsyncIterator[PineconeVectorIndex]:
        _, index = make_index(pinecone_server, self.dim)
        yield index
        await index.close()


@pytest.fixture
async def fresh(pinecone_server: FakePinecone) -> AsyncIterator[tuple[str, PineconeVectorIndex]]:
    name, index = make_index(pinecone_server)
    yield name, index
    pinecone_server.clear_failures()
    await index.close()


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return random_units(n, dim, seed)


# -- pure translation ---------------------------------------------------------------------


def test_filter_translation() -> None:
    assert to_pinecone_filter(None) is None
    assert to_pinecone_filter(ProductFilter()) is None
    assert to_pinecone_filter(ProductFilter({"colour": "red"})) == {"colour": {"$eq": "red"}}
    assert to_pinecone_filter(ProductFilter(any_of={"type": ("dress", "shirt", "dress")})) == {
        "type": {"$in": ["dress", "shirt"]}
    }
    combined = ProductFilter(
        equals={"gender": "women", "colour": "black"}, any_of={"type": ("dress", "shirt")}
    )
    assert to_pinecone_filter(combined) == {
        "$and": [
            {"colour": {"$eq": "black"}},
            {"gender": {"$eq": "women"}},
            {"type": {"$in": ["dress", "shirt"]}},
        ]
    }
    # Keys Pinecone would read as operators are escaped, the same way as in the metadata.
    assert to_pinecone_filter(ProductFilter({"$size": "M"})) == {"%24size": {"$eq": "M"}}
    assert metadata_key("50%") == "50%25"
    assert metadata_key("a$b") == "a$b"


def test_translated_filters_select_what_product_filter_selects() -> None:
    tags = [
        {"colour": "black", "type": "dress", "gender": "women"},
        {"colour": "red", "type": "dress"},
        {"colour": "black", "type": "shirt", "gender": "men"},
        {},
    ]
    filters = [
        ProductFilter({"colour": "black"}),
        ProductFilter(any_of={"gender": ("men", "women")}),
        ProductFilter({"type": "dress"}, any_of={"colour": ("red", "blue")}),
        ProductFilter({"colour": "black", "type": "shirt"}, any_of={"gender": ("men",)}),
    ]
    for flt in filters:
        pinecone = to_pinecone_filter(flt)
        assert pinecone is not None
        for t in tags:
            meta = {metadata_key(k): v for k, v in t.items()}
            assert filter_matches(pinecone, meta) == flt.matches(t), (flt, t)


def test_ids_pinecone_cannot_store_are_encoded_reversibly() -> None:
    for plain in ("p1", "sku/42-a b", "open_clip:ViT-B-32@/models/ckpt-1.pt"):
        assert encode_name(plain) == plain
    for odd in ("sku/42 é", "名前", "a\x00b", "~b64:looks-encoded"):
        stored = encode_name(odd)
        assert stored != odd
        assert stored.isascii()
        assert len(stored) <= 512
        assert decode_name(stored) == odd
    for too_long in ("x" * 600, "é" * 300):
        with pytest.raises(BadInput):
            encode_name(too_long)


def test_batches_respect_count_and_size() -> None:
    small = [{"id": f"p{i}", "values": [0.1] * 8} for i in range(250)]
    assert [len(b) for b in plan_upsert_batches(small)] == [100, 100, 50]
    wide = [{"id": f"p{i}", "values": [0.1] * 4000} for i in range(100)]
    batches = plan_upsert_batches(wide)
    assert len(batches) > 1
    assert sum(len(b) for b in batches) == 100
    for batch in batches:
        assert sum(25 * len(r["values"]) for r in batch) <= MAX_UPSERT_BYTES


# -- against the fake ---------------------------------------------------------------------


async def test_large_upsert_is_split_into_several_requests(
    pinecone_server: FakePinecone, fresh: tuple[str, PineconeVectorIndex]
) -> None:
    name, index = fresh
    ids = [f"p{i:04d}" for i in range(250)]
    await index.upsert("enc", ids, unit_rows(250), [{"n": str(i % 3)} for i in range(250)])
    upserts = pinecone_server.requests_to(name, "/vectors/upsert")
    assert sorted(s.vectors for s in upserts) == [50, 100, 100]  # sent concurrently
    assert all(s.status == 200 for s in upserts)
    assert await index.count("enc") == 250
    assert await index.count() == 250


async def test_wide_vectors_are_split_by_request_size(pinecone_server: FakePinecone) -> None:
    name, index = make_index(pinecone_server, dim=3000)
    try:
        n = 120
        await index.upsert("enc", [f"p{i}" for i in range(n)], unit_rows(n, 3000), [{}] * n)
        upserts = pinecone_server.requests_to(name, "/vectors/upsert")
        assert len(upserts) >= 3
        assert all(s.status == 200 and s.body_bytes <= MAX_REQUEST_BYTES for s in upserts)
        assert sum(s.vectors for s in upserts) == n
        assert await index.count("enc") == n
    finally:
        await index.close()


async def test_metadata_filters_are_pushed_down(
    pinecone_server: FakePinecone, fresh: tuple[str, PineconeVectorIndex]
) -> None:
    name, index = fresh
    await index.upsert(
        "enc",
        ["a", "b", "c"],
        unit_rows(3),
        [{"colour": "red", "$size": "M"}, {"colour": "blue", "$size": "M"}, {"colour": "red"}],
    )
    flt = ProductFilter({"$size": "M"}, any_of={"colour": ("red", "green")})
    assert [pid for pid, _ in await index.query("enc", unit_rows(1, seed=5)[0], 10, flt)] == ["a"]
    assert pinecone_server.requests_to(name, "/query")[-1].status == 200


async def test_non_ascii_product_ids_round_trip(fresh: tuple[str, PineconeVectorIndex]) -> None:
    _, index = fresh
    vectors = unit_rows(2)
    await index.upsert("enc", ["sku/42 é", "名前"], vectors, [{}, {}])
    assert [pid for pid, _ in await index.query("enc", vectors[0], 1)] == ["sku/42 é"]
    fetched = await index.fetch("enc", ["名前"])
    np.testing.assert_allclose(fetched["名前"], vectors[1], atol=1e-6)
    await index.delete(["sku/42 é"])
    assert await index.count("enc") == 1


async def test_retries_429_then_succeeds(
    pinecone_server: FakePinecone, fresh: tuple[str, PineconeVectorIndex]
) -> None:
    name, index = fresh
    await index.upsert("enc", ["a"], unit_rows(1), [{}])
    pinecone_server.fail_next(2, 429, path="/query")
    started = time.monotonic()
    assert [pid for pid, _ in await index.query("enc", unit_rows(1)[0], 3)] == ["a"]
    elapsed = time.monotonic() - started
    assert [s.status for s in pinecone_server.requests_to(name, "/query")] == [429, 429, 200]
    assert elapsed >= 0.25 * 2  # backed off between attempts (>= 0.25 s each)


async def test_retries_5xx_on_writes(
    pinecone_server: FakePinecone, fresh: tuple[str, PineconeVectorIndex]
) -> None:
    name, index = fresh
    pinecone_server.fail_next(1, 503, path="/vectors/upsert")
    await index.upsert("enc", ["a", "b"], unit_rows(2), [{}, {}])
    assert [s.status for s in pinecone_server.requests_to(name, "/vectors/upsert")] == [503, 200]
    assert await index.count("enc") == 2


async def test_persistent_5xx_becomes_upstream_unavailable(pinecone_server: FakePinecone) -> None:
    name, index = make_index(pinecone_server, timeout_s=3.0)
    pinecone_server.fail_next(10, 500, path="/describe_index_stats")
    try:
        with hang_guard(), pytest.raises(UpstreamUnavailable, match="PINECONE_HOST"):
            await index.count()
        attempts = pinecone_server.requests_to(name, "/describe_index_stats")
        assert len(attempts) >= 2  # it did retry before giving up
    finally:
        pinecone_server.clear_failures()
        await index.close()


async def test_slow_server_fails_within_the_timeout(pinecone_server: FakePinecone) -> None:
    _, index = make_index(pinecone_server, timeout_s=0.5)
    pinecone_server.slow_next(10, 3.0, path="/query")
    try:
        with hang_guard(), pytest.raises(UpstreamUnavailable, match=r"within 0\.5s"):
            await index.query("enc", unit_rows(1)[0], 3)
    finally:
        pinecone_server.clear_failures()
        await index.close()


async def test_stopped_server_fails_fast_naming_the_setting() -> None:
    server = FakePinecone().start()
    host = server.create_index("gone", DIM)
    index = PineconeVectorIndex(server.api_key, host=host, timeout_s=1.0)
    assert await index.check() == {}
    server.stop()
    try:
        for call in (index.check(), index.query("enc", unit_rows(1)[0], 3)):
            with (
                hang_guard(),
                pytest.raises(UpstreamUnavailable, match=re.escape(f"PINECONE_HOST={host}")),
            ):
                await call
    finally:
        await index.close()


async def test_wrong_api_key_names_the_setting(pinecone_server: FakePinecone) -> None:
    host = pinecone_server.create_index(unique_name("idx"), DIM)
    index = PineconeVectorIndex("not-the-key", host=host, timeout_s=2.0)
    try:
        with pytest.raises(UpstreamUnavailable, match="PINECONE_API_KEY"):
            await index.check()
    finally:
        await index.close()


async def test_dimension_mismatch_is_a_configuration_error_not_bad_input(
    pinecone_server: FakePinecone, fresh: tuple[str, PineconeVectorIndex]
) -> None:
    """The index's dimension was fixed by the operator, not by the caller: refused before
    the request is sent, naming the setting and both dimensions."""
    name, index = fresh
    with pytest.raises(StoreMisconfigured, match=f"dimension {DIM} but encoder 'enc' makes 9-d"):
        await index.upsert("enc", ["a"], unit_rows(1, dim=DIM + 1), [{}])
    with pytest.raises(StoreMisconfigured, match=r"PINECONE_HOST=.* makes 7-d vectors"):
        await index.query("enc", unit_rows(1, dim=DIM - 1)[0], 3)
    assert pinecone_server.requests_to(name, "/vectors/upsert") == []
    assert pinecone_server.requests_to(name, "/query") == []
    assert not isinstance(StoreMisconfigured("x"), BadInput)
    with pytest.raises(BadInput):
        await index.upsert("enc", ["a"], np.full((1, DIM), np.nan, dtype=np.float32), [{}])


async def test_namespace_prefixes_share_one_index(pinecone_server: FakePinecone) -> None:
    name = unique_name("idx")
    host = pinecone_server.create_index(name, DIM)
    blue = PineconeVectorIndex(pinecone_server.api_key, host=host, namespace_prefix="blue/")
    green = PineconeVectorIndex(pinecone_server.api_key, host=host, namespace_prefix="green/")
    try:
        await blue.upsert("enc", ["a", "b"], unit_rows(2), [{}, {}])
        await green.upsert("enc", ["a"], unit_rows(1), [{}])
        await green.upsert("other", ["z"], unit_rows(1), [{}])
        assert (await blue.count(), await green.count()) == (2, 2)
        assert await blue.encoder_ids() == ["enc"]
        assert await green.encoder_ids() == ["enc", "other"]
        await blue.delete(["a"])
        assert await green.count("enc") == 1
        namespaces = {s.namespace for s in pinecone_server.requests_to(name, "/vectors/upsert")}
        assert namespaces == {"blue/enc", "green/enc", "green/other"}
    finally:
        await blue.close()
        await green.close()


async def test_host_is_looked_up_from_the_index_name(pinecone_server: FakePinecone) -> None:
    name = unique_name("idx")
    pinecone_server.create_index(name, DIM)
    index = PineconeVectorIndex(
        pinecone_server.api_key,
        index_name=name,
        control_plane_host=pinecone_server.base_url,
        timeout_s=HEALTHY_TIMEOUT_S,
    )
    try:
        await index.upsert("enc", ["a"], unit_rows(1), [{}])
        assert await index.count() == 1
        assert len(pinecone_server.requests_to(name, "/vectors/upsert")) == 1
        assert await index.dimension() == DIM
    finally:
        await index.close()


async def test_wiring_builds_the_adapter_from_settings(pinecone_server: FakePinecone) -> None:
    name = unique_name("idx")
    host = pinecone_server.create_index(name, DIM)
    settings = Settings(
        pinecone_api_key=SecretStr(pinecone_server.api_key),
        pinecone_host=host,
        store_timeout_s=HEALTHY_TIMEOUT_S,
    )
    index = wiring.pinecone_index(settings)
    try:
        assert index.where == f"PINECONE_HOST={host}"
        await index.upsert("enc", ["a"], unit_rows(1), [{"k": "v"}])
        assert await index.check() == {"enc": 1}
    finally:
        await index.close()
    with pytest.raises(StoreMisconfigured, match="PINECONE_HOST"):
        wiring.pinecone_index(
            Settings(pinecone_api_key=SecretStr("k"), pinecone_host=None, pinecone_index=None)
        )


async def test_wait_until_fresh_and_clear(
    pinecone_server: FakePinecone, fresh: tuple[str, PineconeVectorIndex]
) -> None:
    name, index = fresh
    await index.upsert("enc", ["a", "é"], unit_rows(2), [{}, {}])
    await index.upsert("other", ["z"], unit_rows(1), [{}])
    await index.wait_until_fresh("enc", ["a", "é"], timeout_s=HEALTHY_TIMEOUT_S)
    with pytest.raises(UpstreamUnavailable, match="did not reflect"):
        await index.wait_until_fresh("enc", ["a"], timeout_s=0.3)
    await index.clear()
    assert await index.count() == 0
    assert await index.encoder_ids() == []
    deletes = pinecone_server.requests_to(name, "/vectors/delete")
    assert {s.namespace for s in deletes} == {"enc", "other"}


def test_one_index_serves_successive_event_loops(pinecone_server: FakePinecone) -> None:
    """The CLI runs several asyncio.run() calls with one adapter."""
    _, index = make_index(pinecone_server)
    asyncio.run(index.upsert("enc", ["a"], unit_rows(1), [{}]))
    assert asyncio.run(index.count()) == 1
    asyncio.run(index.close())


async def test_a_failing_batch_fails_the_whole_upsert(pinecone_server: FakePinecone) -> None:
    name, index = make_index(pinecone_server)
    # A 4xx is not retried (and spends none of the SDK's per-host retry budget).
    pinecone_server.fail_next(1, 400, path="/vectors/upsert")
    try:
        with pytest.raises(BadInput, match="Injected failure"):
            await index.upsert("enc", [f"p{i}" for i in range(250)], unit_rows(250), [{}] * 250)
        statuses = sorted(s.status for s in pinecone_server.requests_to(name, "/vectors/upsert"))
        assert statuses[-1] == 400
    finally:
        pinecone_server.clear_failures()
        await index.close()
