"""Micro-batching of concurrent text queries (domain.services.TextBatcher)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

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

GATE_TIMEOUT_S = 30.0
"""How long a gated encoder call waits for its test to open the gate (a failing test must
not hang the suite)."""


class Gate:
    """A point encoder calls block at until the test opens it: concurrent work is ordered by
    events (this call is in the encoder now; the others are queued), never by sleeping."""

    def __init__(self, *, opened: bool = True) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        if opened:
            self._open.set()

    def close(self) -> None:
        self.entered.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def pass_through(self) -> None:
        self.entered.set()
        if not self._open.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the test never opened the gate")

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, GATE_TIMEOUT_S), "nothing entered"


class GatedEncoder(HashingEncoder):
    """Records every encode_texts call; each waits at ``gate``; "bad" texts fail."""

    def __init__(self, gate: Gate | None = None) -> None:
        super().__init__()
        self.gate = gate or Gate()
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        with self._lock:
            self.batches.append(list(texts))
        self.gate.pass_through()
        if "bad" in texts:
            raise BadInput("bad text")
        return super().encode_texts(texts)


async def _until(condition: Callable[[], bool]) -> None:
    """Give the event loop turns until ``condition`` holds (tasks reach their await)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def _queued(batcher: TextBatcher, count: int) -> Callable[[], bool]:
    return lambda: len(batcher._pending) == count


async def _first_in_encoder(batcher: TextBatcher, text: str) -> asyncio.Task[Vectors]:
    """Start encoding ``text`` and return once its call is in the (closed-gated) encoder."""
    encoder = batcher.encoder
    assert isinstance(encoder, GatedEncoder)
    encoder.gate.close()
    first = asyncio.create_task(batcher.encode(text))
    await encoder.gate.wait_entered()
    return first


async def test_a_lone_text_is_encoded_alone_at_once() -> None:
    encoder = GatedEncoder()
    vector = await TextBatcher(encoder).encode("red dress")
    assert encoder.batches == [["red dress"]]
    assert np.allclose(vector, HashingEncoder().encode_texts(["red dress"])[0])


async def test_texts_arriving_during_a_batch_go_together_into_the_next() -> None:
    encoder = GatedEncoder()
    batcher = TextBatcher(encoder)
    first = await _first_in_encoder(batcher, "t0")
    rest = [asyncio.create_task(batcher.encode(f"t{i}")) for i in range(1, 6)]
    await _until(_queued(batcher, 5))
    encoder.gate.open()
    vectors = await asyncio.gather(first, *rest)
    assert encoder.batches == [["t0"], ["t1", "t2", "t3", "t4", "t5"]]
    reference = HashingEncoder().encode_texts([f"t{i}" for i in range(6)])
    for got, expected in zip(vectors, reference, strict=True):
        assert np.allclose(got, expected)


async def test_batches_are_capped() -> None:
    encoder = GatedEncoder()
    batcher = TextBatcher(encoder, max_batch=2)
    first = await _first_in_encoder(batcher, "t0")
    rest = [asyncio.create_task(batcher.encode(f"t{i}")) for i in range(1, 6)]
    await _until(_queued(batcher, 5))
    encoder.gate.open()
    await asyncio.gather(first, *rest)
    assert [len(b) for b in encoder.batches] == [1, 2, 2, 1]


async def test_an_error_reaches_only_its_own_request() -> None:
    encoder = GatedEncoder()
    batcher = TextBatcher(encoder)
    first = await _first_in_encoder(batcher, "t0")
    rest = [asyncio.create_task(batcher.encode(text)) for text in ("ok", "bad")]
    await _until(_queued(batcher, 2))
    encoder.gate.open()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert isinstance(results[0], np.ndarray)
    assert isinstance(results[1], np.ndarray)
    assert isinstance(results[2], BadInput)
    assert encoder.batches == [["t0"], ["ok", "bad"], ["ok"], ["bad"]]


async def test_a_cancelled_request_does_not_disturb_the_others() -> None:
    encoder = GatedEncoder()
    batcher = TextBatcher(encoder)
    first = await _first_in_encoder(batcher, "t0")
    doomed = asyncio.create_task(batcher.encode("t1"))
    kept = asyncio.create_task(batcher.encode("t2"))
    await _until(_queued(batcher, 2))
    doomed.cancel()
    encoder.gate.open()
    await first
    assert isinstance(await kept, np.ndarray)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert encoder.batches == [["t0"], ["t2"]]


def test_the_batcher_follows_a_new_event_loop() -> None:
    encoder = GatedEncoder()
    batcher = TextBatcher(encoder)
    for _ in range(2):
        asyncio.run(batcher.encode("red dress"))
    assert encoder.batches == [["red dress"], ["red dress"]]


async def test_concurrent_searches_share_encoder_calls() -> None:
    encoder = GatedEncoder()
    index, catalog, images = InMemoryVectorIndex(), InMemoryCatalog(), InMemoryImageStore()
    service = SearchService(FakeEncoderProvider(encoder), index, catalog, images)
    vectors = encoder.encode_images([fake_image("red dress"), fake_image("white sneakers")])
    await index.upsert("fake", ["1", "2"], vectors, [{}, {}])
    await catalog.upsert_many([Product(id="1", name="red dress"), Product(id="2", name="sneakers")])
    encoder.batches.clear()
    encoder.gate.close()
    first = asyncio.create_task(service.by_text("red dress", top_k=1))
    await encoder.gate.wait_entered()
    rest = [
        asyncio.create_task(service.by_text(t, top_k=1))
        for t in ["white sneakers", "red", "sneakers"]
    ]
    await _until(_queued(service._text_batcher(encoder), 3))
    encoder.gate.open()
    pages = await asyncio.gather(first, *rest)
    assert [p.hits[0].product.id for p in pages] == ["1", "2", "1", "2"]
    assert len(encoder.batches) == 2


class ThreadRecordingEncoder(GatedEncoder):
    """Also records the thread each text batch was encoded on; image calls wait at their own
    gate."""

    def __init__(self) -> None:
        super().__init__()
        self.image_gate = Gate()
        self.threads: list[int] = []

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        self.threads.append(threading.get_ident())
        return super().encode_texts(texts)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        self.image_gate.pass_through()
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
    encoder = ThreadRecordingEncoder()
    service = await _service(encoder)
    await service.by_text("warm up", top_k=1)
    encoder.image_gate.close()
    image_search = asyncio.create_task(service.by_image(ImageQuery(data=fake_image("dress"))))
    await encoder.image_gate.wait_entered()  # the image search is in its encoder now
    page = await service.by_text("sneakers", top_k=1)
    encoder.image_gate.open()
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
    encoder = ThreadRecordingEncoder()
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
    # An image search beside a text search: the image search reaches the index while the
    # text search is still in its encoder, so it awaits query(); the text search then is
    # alone again and asks at once.
    encoder.gate.close()
    encoder.image_gate.close()
    image_search = asyncio.create_task(service.by_image(ImageQuery(data=fake_image("dress"))))
    await encoder.image_gate.wait_entered()
    text_search = asyncio.create_task(service.by_text("sneakers", top_k=1))
    await encoder.gate.wait_entered()
    encoder.image_gate.open()
    await image_search
    encoder.gate.open()
    assert (await text_search).hits[0].product.id == "2"
    assert (index.immediate, index.awaited) == (["answered", "busy", "answered"], 2)
