"""The vector-index contract against a real Pinecone index.

Runs when PINECONE_API_KEY and PINECONE_HOST are set (the host of a dense index with the
cosine metric and a dimension of at least 4), and is reported as skipped otherwise. Each test
writes under its own namespace prefix and deletes it afterwards, so an index in use can serve
(still, prefer a scratch index). Pinecone is eventually consistent: the fixture waits after
every write until queries and stats reflect it (write LSNs reconciled, ids visible), as the
contract asks, rather than weakening the contract.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from domain.model import ProductFilter
from domain.ports import Vectors
from stores.vectors.pinecone_index import PineconeVectorIndex
from tests.stores.contracts import VectorIndexContract

API_KEY = os.environ.get("PINECONE_API_KEY", "")
HOST = os.environ.get("PINECONE_HOST", "")
FRESHNESS_TIMEOUT_S = float(os.environ.get("PINECONE_TEST_FRESHNESS_S", "90"))

pytestmark = [
    pytest.mark.contract_live,
    pytest.mark.skipif(
        not (API_KEY and HOST),
        reason="set PINECONE_API_KEY and PINECONE_HOST to run the contract against real Pinecone",
    ),
]


class ReadYourWrites:
    """A VectorIndex that returns from a write only once reads reflect it."""

    def __init__(self, inner: PineconeVectorIndex) -> None:
        self.inner = inner
        self.ids: dict[str, set[str]] = {}

    async def _settle(self, encoder_id: str) -> None:
        expected = sorted(self.ids.get(encoder_id, set()))
        await self.inner.wait_until_fresh(encoder_id, expected, FRESHNESS_TIMEOUT_S)

    async def upsert(
        self,
        encoder_id: str,
        ids: Sequence[str],
        vectors: Vectors,
        metadata: Sequence[Mapping[str, str]],
    ) -> None:
        await self.inner.upsert(encoder_id, ids, vectors, metadata)
        if ids:
            self.ids.setdefault(encoder_id, set()).update(ids)
            await self._settle(encoder_id)

    async def delete(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        await self.inner.delete(ids, encoder_id)
        for name in [encoder_id] if encoder_id is not None else list(self.ids):
            if name in self.ids:
                self.ids[name].difference_update(ids)
                await self._settle(name)

    async def query(
        self, encoder_id: str, vector: Vectors, top_k: int, filter: ProductFilter | None = None
    ) -> list[tuple[str, float]]:
        return await self.inner.query(encoder_id, vector, top_k, filter)

    async def fetch(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors]:
        return await self.inner.fetch(encoder_id, ids)

    async def count(self, encoder_id: str | None = None) -> int:
        return await self.inner.count(encoder_id)

    async def encoder_ids(self) -> list[str]:
        return await self.inner.encoder_ids()

    async def flush(self) -> None:
        await self.inner.flush()

    async def close(self) -> None:
        await self.inner.close()


class TestLivePineconeVectorIndex(VectorIndexContract):
    @pytest.fixture
    async def vector_index(self) -> AsyncIterator[ReadYourWrites]:
        index = PineconeVectorIndex(
            API_KEY,
            host=HOST,
            timeout_s=30.0,
            namespace_prefix=f"fashion-search-test-{uuid.uuid4().hex[:10]}/",
        )
        dim = await index.dimension()
        if dim is None or dim < 4:
            pytest.fail(f"PINECONE_HOST must be a dense index of dimension >= 4, got {dim}")
        type(self).dim = dim  # the contract builds its vectors with the index's dimension
        wrapped = ReadYourWrites(index)
        try:
            yield wrapped
        finally:
            await index.clear()
            await index.close()
