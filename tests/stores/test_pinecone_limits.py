"""The Pinecone fake refuses what Pinecone refuses (40 KB of metadata per vector, more than
1000 ids per fetch, namespaces and index names it does not accept) and can be eventually
consistent; the adapter stays within those limits and keeps its result pages right while
Pinecone's readers lag behind a delete."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from domain.errors import StoreMisconfigured
from domain.model import ProductFilter
from stores.vectors.pinecone_index import (
    DELETE_VISIBILITY_S,
    MAX_METADATA_BYTES,
    PineconeVectorIndex,
    fit_metadata,
    metadata_size,
)
from tests.stores.contracts import random_units
from tests.stores.pinecone_fake import FakePinecone
from tests.stores.servers import pinecone_server, unique_name

__all__ = ["pinecone_server"]

DIM = 8


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def eventual(
    pinecone_server: FakePinecone,
) -> AsyncIterator[tuple[str, PineconeVectorIndex, ManualClock]]:
    """An index on the fake in eventual mode: reads see writes only after settle()."""
    name = unique_name("idx")
    host = pinecone_server.create_index(name, DIM)
    clock = ManualClock()
    index = PineconeVectorIndex(pinecone_server.api_key, host=host, timeout_s=2.0, clock=clock)
    pinecone_server.eventual = True
    try:
        yield name, index, clock
    finally:
        pinecone_server.eventual = False
        pinecone_server.settle()
        await index.close()


def raw(server: FakePinecone, name: str) -> httpx.Client:
    """Plain HTTP to the fake, to show what it refuses without the adapter in between."""
    return httpx.Client(base_url=server.host_of(name), headers={"Api-Key": server.api_key})


# -- what the fake enforces -------------------------------------------------------------------


def test_fake_refuses_more_than_40_kb_of_metadata(pinecone_server: FakePinecone) -> None:
    name = unique_name("idx")
    pinecone_server.create_index(name, DIM)
    big = {"colour": "red", "notes": "x" * MAX_METADATA_BYTES}
    record = {"id": "p1", "values": [1.0] * DIM, "metadata": big}
    with raw(pinecone_server, name) as client:
        refused = client.post("/vectors/upsert", json={"vectors": [record]})
        assert refused.status_code == 400
        assert "exceeds the limit of 40960 bytes" in refused.json()["message"]
        record["metadata"] = {"colour": "red", "notes": "x" * (MAX_METADATA_BYTES - 100)}
        assert client.post("/vectors/upsert", json={"vectors": [record]}).status_code == 200


def test_fake_refuses_more_than_1000_ids_per_fetch(pinecone_server: FakePinecone) -> None:
    name = unique_name("idx")
    pinecone_server.create_index(name, DIM)
    with raw(pinecone_server, name) as client:
        ids = {"ids": [f"p{i}" for i in range(1001)]}
        refused = client.get("/vectors/fetch", params=ids)
        assert refused.status_code == 400
        assert "at most 1000 ids" in refused.json()["message"]
        ids["ids"] = ids["ids"][:1000]
        assert client.get("/vectors/fetch", params=ids).status_code == 200


@pytest.mark.parametrize("namespace", ["caf\u00e9", "a\x00b", "n" * 513])
def test_fake_refuses_namespaces_pinecone_refuses(
    pinecone_server: FakePinecone, namespace: str
) -> None:
    name = unique_name("idx")
    pinecone_server.create_index(name, DIM)
    record = {"id": "p1", "values": [1.0] * DIM}
    with raw(pinecone_server, name) as client:
        body = {"vectors": [record], "namespace": namespace}
        refused = client.post("/vectors/upsert", json=body)
        assert refused.status_code == 400
        assert "Invalid namespace" in refused.json()["message"]


@pytest.mark.parametrize("index_name", ["Shop_Index", "-shop", "shop.v2", "s" * 46, ""])
def test_fake_refuses_index_names_pinecone_refuses(
    pinecone_server: FakePinecone, index_name: str
) -> None:
    body = {
        "name": index_name,
        "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": DIM}}},
    }
    response = httpx.post(
        f"{pinecone_server.base_url}/indexes",
        json=body,
        headers={"Api-Key": pinecone_server.api_key},
    )
    assert response.status_code == 400
    assert index_name not in pinecone_server.indexes


# -- what the adapter does about it -----------------------------------------------------------


def test_metadata_is_trimmed_largest_tags_first() -> None:
    tags = {"colour": "red", "notes": "n" * 30_000, "care": "c" * 20_000, "type": "dress"}
    kept = fit_metadata("p1", tags)
    assert kept == {"colour": "red", "care": "c" * 20_000, "type": "dress"}
    assert metadata_size(kept) <= MAX_METADATA_BYTES
    small = {"colour": "red"}
    assert fit_metadata("p2", small) == small


async def test_a_product_with_huge_tags_is_stored_and_still_filterable(
    pinecone_server: FakePinecone, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique_name("idx")
    index = PineconeVectorIndex(
        pinecone_server.api_key, host=pinecone_server.create_index(name, DIM)
    )
    tags = {"colour": "red", "description_html": "<p>" + "long text " * 6_000 + "</p>"}
    try:
        with caplog.at_level(logging.WARNING, logger="stores.vectors.pinecone_index"):
            await index.upsert("enc", ["big"], random_units(1, DIM, 1), [tags])
        assert "'description_html'" in caplog.text
        assert "'big'" in caplog.text
        stored = pinecone_server.stored(name, "enc")["big"].metadata
        assert stored == {"colour": "red"}
        hits = await index.query(
            "enc", random_units(1, DIM, 1)[0], 3, ProductFilter({"colour": "red"})
        )
        assert [pid for pid, _ in hits] == ["big"]
    finally:
        await index.close()


async def test_fetch_of_thousands_of_ids_stays_within_the_limit(
    pinecone_server: FakePinecone,
) -> None:
    name = unique_name("idx")
    index = PineconeVectorIndex(
        pinecone_server.api_key, host=pinecone_server.create_index(name, DIM)
    )
    ids = [f"p{i}" for i in range(2500)]
    try:
        await index.upsert("enc", ids, random_units(len(ids), DIM, 2), [{}] * len(ids))
        found = await index.fetch("enc", ids)
        assert sorted(found) == sorted(ids)
        fetches = pinecone_server.requests_to(name, "/vectors/fetch")
        assert len(fetches) >= len(ids) // 1000
        assert all(seen.status == 200 for seen in fetches)
    finally:
        await index.close()


async def test_names_pinecone_refuses_are_encoded_or_named(pinecone_server: FakePinecone) -> None:
    name = unique_name("idx")
    index = PineconeVectorIndex(
        pinecone_server.api_key, host=pinecone_server.create_index(name, DIM)
    )
    try:
        await index.upsert("encodeur-é", ["p1"], random_units(1, DIM, 3), [{}])
        assert await index.encoder_ids() == ["encodeur-é"]
    finally:
        await index.close()
    with pytest.raises(StoreMisconfigured, match="PINECONE_INDEX='Shop_Index'"):
        PineconeVectorIndex(pinecone_server.api_key, index_name="Shop_Index")


# -- eventual consistency ---------------------------------------------------------------------


async def test_writes_are_seen_only_once_pinecone_settles(
    eventual: tuple[str, PineconeVectorIndex, ManualClock], pinecone_server: FakePinecone
) -> None:
    name, index, _ = eventual
    await index.upsert("enc", ["a", "b"], random_units(2, DIM, 4), [{}, {}])
    assert await index.count("enc") == 0
    assert await index.query("enc", random_units(1, DIM, 4)[0], 5) == []
    assert pinecone_server.settle(name) == 1
    assert await index.count("enc") == 2


async def test_result_pages_stay_full_and_right_while_a_delete_is_not_seen(
    eventual: tuple[str, PineconeVectorIndex, ManualClock], pinecone_server: FakePinecone
) -> None:
    name, index, clock = eventual
    ids = [f"p{i:02d}" for i in range(30)]
    vectors = random_units(len(ids), DIM, 5)
    await index.upsert("enc", ids, vectors, [{"colour": "red"}] * len(ids))
    pinecone_server.settle(name)
    probe = vectors[0]
    ranked = [pid for pid, _ in await index.query("enc", probe, len(ids))]
    deleted = ranked[:4] + ranked[10:12]  # the best matches and some further down
    await index.delete(deleted, encoder_id="enc")

    # Pinecone's readers still hold them: the raw answer has them, the adapter's never.
    with raw(pinecone_server, name) as client:
        stale = client.post(
            "/query", json={"vector": probe.tolist(), "topK": 10, "namespace": "enc"}
        )
        assert {m["id"] for m in stale.json()["matches"]} & set(deleted)
    remaining = [pid for pid in ranked if pid not in deleted]
    for top_k in (1, 5, 10):
        page = [pid for pid, _ in await index.query("enc", probe, top_k)]
        assert page == remaining[:top_k]
    red = ProductFilter({"colour": "red"})
    assert [pid for pid, _ in await index.query("enc", probe, 10, red)] == remaining[:10]
    assert set(await index.fetch("enc", [*deleted, remaining[-1]])) == {remaining[-1]}

    # A deleted product added again is visible again at once to this process.
    await index.upsert("enc", [ranked[0]], vectors[ids.index(ranked[0])][None], [{}])
    pinecone_server.settle(name)
    assert [pid for pid, _ in await index.query("enc", probe, 1)] == [ranked[0]]
    assert [pid for pid, _ in await index.query("enc", probe, 10)] == [ranked[0], *remaining[:9]]

    # Once settled and past the visibility window, nothing is hidden any more.
    clock.now += DELETE_VISIBILITY_S + 1
    assert [pid for pid, _ in await index.query("enc", probe, 10)] == [ranked[0], *remaining[:9]]


def test_stats_follow_the_settled_state(pinecone_server: FakePinecone) -> None:
    name = unique_name("idx")
    pinecone_server.create_index(name, DIM)
    pinecone_server.eventual = True
    try:
        with raw(pinecone_server, name) as client:
            record = {"id": "p1", "values": [1.0] * DIM}
            written = client.post("/vectors/upsert", json={"vectors": [record], "namespace": "ns"})
            lsn = int(written.headers["x-pinecone-request-lsn"])
            stats = client.post("/describe_index_stats", json={}).json()
            assert stats["namespaces"] == {}
            query = client.post(
                "/query", json={"vector": [1.0] * DIM, "topK": 1, "namespace": "ns"}
            )
            assert int(query.headers["x-pinecone-max-indexed-lsn"]) < lsn
            pinecone_server.settle()
            stats = client.post("/describe_index_stats", json={}).json()
            assert json.dumps(stats["namespaces"]) == json.dumps({"ns": {"vectorCount": 1}})
            query = client.post(
                "/query", json={"vector": [1.0] * DIM, "topK": 1, "namespace": "ns"}
            )
            assert int(query.headers["x-pinecone-max-indexed-lsn"]) >= lsn
    finally:
        pinecone_server.eventual = False
