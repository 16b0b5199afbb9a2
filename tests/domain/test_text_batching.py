"""Micro-batching of concurrent text queries (domain.services.TextBatcher)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from domain.errors import BadInput
from domain.model import ImageQuery, Product
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


class ThreadRecordingEncoder(SlowEncoder):
    """Also records the thread each text batch was encoded on."""

    def __init__(self, delay: float = 0.0, image_delay: float | None = None) -> None:
        super().__init__(delay)
        self.image_delay = delay if image_delay is None else image_delay
        self.threads: list[int] = []

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        self.threads.append(threading.get_ident())
        return super().encode_texts(texts)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        time.sleep(self.image_delay)
        return super().encode_images(images)


async def _service(encoder: HashingEncoder) -> SearchService:
    index, catalog, images = InMemoryVectorIndex(), InMemoryCatalog(), InMemoryImageStore()
    service = SearchService(FakeEncoderProvider(encoder), index, catalog, images)
    vectors = HashingEncoder().encode_images([fake_image("red dress"), fake_image("sneakers")])
    await index.upsert("fake", ["1", "2"], vectors, [{}, {}])
    await catalog.upsert_many([Product(id="1", name="red dress"), Product(id="2", name="sneakers")])
    return service


async def test_a_lone_search_is_encoded_on_the_event_loop_once_the_encoder_answered() -> None:
    encoder = ThreadRecordingEncoder()
    service = await _service(encoder)
    loop_thread = threading.get_ident()
    pages = [await service.by_text(text, top_k=1) for text in ("red dress", "sneakers", "red")]
    assert [p.hits[0].product.id for p in pages] == ["1", "2", "1"]
    # the first call loads the model, in a worker thread; then no hand-offs
    assert encoder.threads[0] != loop_thread
    assert encoder.threads[1:] == [loop_thread, loop_thread]


async def test_a_search_beside_another_is_encoded_in_a_worker_thread() -> None:
    encoder = ThreadRecordingEncoder(delay=0.2)
    service = await _service(encoder)
    await service.by_text("warm up", top_k=1)
    image_search = asyncio.create_task(service.by_image(ImageQuery(data=fake_image("dress"))))
    await asyncio.sleep(0.05)  # the image search is in its encoder now
    page = await service.by_text("sneakers", top_k=1)
    await image_search
    assert page.hits[0].product.id == "2"
    assert threading.get_ident() not in encoder.threads


async def test_an_inline_error_reaches_its_request() -> None:
    encoder = ThreadRecordingEncoder()
    service = await _service(encoder)
    await service.by_text("warm up", top_k=1)
    with pytest.raises(BadInput):
        await service.by_text("bad", top_k=1)
    assert encoder.threads[-1] == threading.get_ident()
    assert (await service.by_text("red dress", top_k=1)).hits[0].product.id == "1"


class ImmediateIndex(InMemoryVectorIndex):
    """An in-memory index that can answer at once (``busy``: it says it cannot)."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = False
        self.immediate: list[str] = []
        self.awaited = 0

    def query_now(
        self, encoder_id: str, vector: Vectors, top_k: int, filter: object = None
    ) -> list[tuple[str, float]] | None:
        self.immediate.append("busy" if self.busy else "answered")
        if self.busy:
            return None
        scores = {pid: float(v @ vector) for pid, v in self.vectors.get(encoder_id, {}).items()}
        return sorted(scores.items(), key=lambda kv: -kv[1])[:top_k]

    async def query(self, *args: object, **kwargs: object) -> list[tuple[str, float]]:
        self.awaited += 1
        return await super().query(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_lone_search_asks_an_immediate_index_at_once() -> None:
    encoder = ThreadRecordingEncoder(delay=0.3, image_delay=0.1)
    index, catalog = ImmediateIndex(), InMemoryCatalog()
    service = SearchService(FakeEncoderProvider(encoder), index, catalog, InMemoryImageStore())
    vectors = HashingEncoder().encode_images([fake_image("red dress"), fake_image("sneakers")])
    await index.upsert("fake", ["1", "2"], vectors, [{}, {}])
    await catalog.upsert_many([Product(id="1", name="red dress"), Product(id="2", name="sneakers")])

    assert (await service.by_text("red dress", top_k=1)).hits[0].product.id == "1"
    assert (index.immediate, index.awaited) == (["answered"], 0)
    index.busy = True  # e.g. an upsert holds it: the search awaits query() instead
    assert (await service.by_text("sneakers", top_k=1)).hits[0].product.id == "2"
    assert (index.immediate, index.awaited) == (["answered", "busy"], 1)
    index.busy = False
    # An image search (0.1 s in its encoder) beside a text search (0.3 s in its encoder):
    # the image search reaches the index while the text search is in progress, so it
    # awaits query(); the text search then is alone again and asks at once.
    image_search = asyncio.create_task(service.by_image(ImageQuery(data=fake_image("dress"))))
    await asyncio.sleep(0.01)
    assert (await service.by_text("sneakers", top_k=1)).hits[0].product.id == "2"
    assert image_search.done()
    assert (index.immediate, index.awaited) == (["answered", "busy", "answered"], 2)
