"""Micro-batching of concurrent text queries (domain.services.TextBatcher)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from domain.errors import BadInput
from domain.model import Product
from domain.ports import Vectors
from domain.services import SearchService, TextBatcher
from tests.fakes import (
    FakeEncoderProvider,
    HashingEncoder,
    InMemoryCatalog,
    InMemoryImageStore,
    InMemoryVectorIndex,
    fake_image,
)


class SlowEncoder(HashingEncoder):
    """Records every encode_texts call; each takes ``delay`` seconds; "bad" texts fail."""

    def __init__(self, delay: float = 0.05) -> None:
        super().__init__()
        self.delay = delay
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self._lock = threading.Lock()

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        with self._lock:
            self.batches.append(list(texts))
        self.started.set()
        time.sleep(self.delay)
        if "bad" in texts:
            raise BadInput("bad text")
        return super().encode_texts(texts)


async def _after_first_started(encoder: SlowEncoder) -> None:
    await asyncio.to_thread(encoder.started.wait, 5.0)


async def test_a_lone_text_is_encoded_alone_at_once() -> None:
    encoder = SlowEncoder(delay=0.0)
    vector = await TextBatcher(encoder).encode("red dress")
    assert encoder.batches == [["red dress"]]
    assert np.allclose(vector, HashingEncoder().encode_texts(["red dress"])[0])


async def test_texts_arriving_during_a_batch_go_together_into_the_next() -> None:
    encoder = SlowEncoder()
    batcher = TextBatcher(encoder)
    first = asyncio.create_task(batcher.encode("t0"))
    await _after_first_started(encoder)
    rest = [asyncio.create_task(batcher.encode(f"t{i}")) for i in range(1, 6)]
    vectors = await asyncio.gather(first, *rest)
    assert encoder.batches == [["t0"], ["t1", "t2", "t3", "t4", "t5"]]
    reference = HashingEncoder().encode_texts([f"t{i}" for i in range(6)])
    for got, expected in zip(vectors, reference, strict=True):
        assert np.allclose(got, expected)


async def test_batches_are_capped() -> None:
    encoder = SlowEncoder()
    batcher = TextBatcher(encoder, max_batch=2)
    first = asyncio.create_task(batcher.encode("t0"))
    await _after_first_started(encoder)
    await asyncio.gather(first, *(batcher.encode(f"t{i}") for i in range(1, 6)))
    assert [len(b) for b in encoder.batches] == [1, 2, 2, 1]


async def test_an_error_reaches_only_its_own_request() -> None:
    encoder = SlowEncoder()
    batcher = TextBatcher(encoder)
    first = asyncio.create_task(batcher.encode("t0"))
    await _after_first_started(encoder)
    results = await asyncio.gather(
        first, batcher.encode("ok"), batcher.encode("bad"), return_exceptions=True
    )
    assert isinstance(results[0], np.ndarray)
    assert isinstance(results[1], np.ndarray)
    assert isinstance(results[2], BadInput)
    assert encoder.batches == [["t0"], ["ok", "bad"], ["ok"], ["bad"]]


async def test_a_cancelled_request_does_not_disturb_the_others() -> None:
    encoder = SlowEncoder()
    batcher = TextBatcher(encoder)
    first = asyncio.create_task(batcher.encode("t0"))
    await _after_first_started(encoder)
    doomed = asyncio.create_task(batcher.encode("t1"))
    kept = asyncio.create_task(batcher.encode("t2"))
    await asyncio.sleep(0)
    doomed.cancel()
    await first
    assert isinstance(await kept, np.ndarray)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert encoder.batches == [["t0"], ["t2"]]


def test_the_batcher_follows_a_new_event_loop() -> None:
    encoder = SlowEncoder(delay=0.0)
    batcher = TextBatcher(encoder)
    for _ in range(2):
        asyncio.run(batcher.encode("red dress"))
    assert encoder.batches == [["red dress"], ["red dress"]]


async def test_concurrent_searches_share_encoder_calls() -> None:
    encoder = SlowEncoder()
    index, catalog, images = InMemoryVectorIndex(), InMemoryCatalog(), InMemoryImageStore()
    service = SearchService(FakeEncoderProvider(encoder), index, catalog, images)
    vectors = encoder.encode_images([fake_image("red dress"), fake_image("white sneakers")])
    await index.upsert("fake", ["1", "2"], vectors, [{}, {}])
    await catalog.upsert_many([Product(id="1", name="red dress"), Product(id="2", name="sneakers")])
    encoder.batches.clear()
    first = asyncio.create_task(service.by_text("red dress", top_k=1))
    await _after_first_started(encoder)
    pages = await asyncio.gather(
        first, *(service.by_text(t, top_k=1) for t in ["white sneakers", "red", "sneakers"])
    )
    assert [p.hits[0].product.id for p in pages] == ["1", "2", "1", "2"]
    assert len(encoder.batches) == 2
