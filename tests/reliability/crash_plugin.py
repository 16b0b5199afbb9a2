"""A test-only encoder plugin that the real ``fashion-search ingest`` loads through the
``fashion_search.encoders`` entry-point group (tests/reliability/test_crash_safe_ingest.py
writes a ``*.dist-info`` naming this module into a folder on the child's PYTHONPATH).

It provides the ``crashtest`` encoder family: ``crashtest:<salt>`` turns every text or image
into a pseudo-random unit vector of dimension 64 seeded by sha256(salt, bytes), so it costs
nothing, is the same in every process, and two salts give two different vector spaces.

With ``FASHION_SEARCH_TEST_CRASH_AT=<point>:<n>[:before|:after]`` set, the process sends itself
SIGKILL at the n-th call of that point (default: after the call returned). Points:

``encode``                ``encode_images`` of any crashtest encoder
``images.put``            ``ImageStore.put``
``index.upsert``          ``VectorIndex.upsert``
``index.flush``           ``VectorIndex.flush``
``catalog.upsert_many``   ``Catalog.upsert_many``
``catalog.mark_indexed``  ``Catalog.mark_indexed`` (the ingest ledger)
``fsync``                 ``os.fsync``: inside an atomic file write of the embedded stores,
                          after the temporary file was written and before it is renamed

The store methods are wrapped on the adapter classes the composition root will pick for this
environment (the same rule as ``fashion_search.wiring``: Pinecone when PINECONE_API_KEY is
set, MongoDB with MONGODB_URI, S3 with S3_BUCKET; the embedded store otherwise).
``FASHION_SEARCH_TEST_ENCODE_DELAY_S`` makes each encoder call sleep, to stretch a run for
kills by timing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from domain.model import Modality
from domain.ports import Vectors
from encoders.hookspecs import EncoderFamily, EncoderOptions, hookimpl

DIM = 64
CRASH_ENV = "FASHION_SEARCH_TEST_CRASH_AT"
DELAY_ENV = "FASHION_SEARCH_TEST_ENCODE_DELAY_S"


def vector_for(salt: str, data: bytes) -> Vectors:
    """The vector ``crashtest:<salt>`` gives these bytes (texts: their UTF-8)."""
    digest = hashlib.sha256(salt.encode() + b"\x00" + data).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    vector = rng.standard_normal(DIM).astype(np.float32)
    normalised: Vectors = (vector / np.linalg.norm(vector)).astype(np.float32)
    return normalised


class CrashTestEncoder:
    def __init__(self, salt: str) -> None:
        self._salt = salt
        self._delay = float(os.environ.get(DELAY_ENV, "0") or 0)

    @property
    def id(self) -> str:
        return f"crashtest:{self._salt}"

    @property
    def dim(self) -> int:
        return DIM

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.TEXT, Modality.IMAGE})

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        return np.stack([vector_for(self._salt, t.encode()) for t in texts])

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        _tick("encode", "before")
        if self._delay:
            time.sleep(self._delay)
        vectors = np.stack([vector_for(self._salt, bytes(data)) for data in images])
        _tick("encode", "after")
        return vectors


def _factory(spec: str, options: EncoderOptions) -> CrashTestEncoder:
    return CrashTestEncoder(spec or "a")


@hookimpl
def fashion_search_register_encoders() -> list[EncoderFamily]:
    return [
        EncoderFamily(
            name="crashtest",
            factory=_factory,
            description="test-only: hashed vectors, optional self-SIGKILL (reliability tests)",
            modalities=frozenset({Modality.TEXT, Modality.IMAGE}),
            examples=("crashtest:a",),
            dim=DIM,
        )
    ]


# -- crash points ---------------------------------------------------------------------------

_lock = threading.Lock()
_calls: dict[str, int] = {}
_target: tuple[str, int, str] | None = None


def _parse(value: str) -> tuple[str, int, str]:
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("before", "after")):
        raise ValueError(f"{CRASH_ENV}={value!r}: expected <point>:<n>[:before|:after]")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "after"


def _tick(point: str, moment: str) -> None:
    """Count calls of ``point`` (on "before") and die at the configured one."""
    if _target is None or _target[0] != point:
        return
    with _lock:
        if moment == "before":
            _calls[point] = _calls.get(point, 0) + 1
        n = _calls.get(point, 0)
    if n == _target[1] and moment == _target[2]:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap_async(point: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick(point, "before")
        result = await method(*args, **kwargs)
        _tick(point, "after")
        return result

    return wrapper


def _wrap_sync(point: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick(point, "before")
        result = function(*args, **kwargs)
        _tick(point, "after")
        return result

    return wrapper


def _adapter(kind: str) -> type[Any]:
    """The adapter class the composition root builds for this environment."""
    choices = {
        "images": (
            "S3_BUCKET",
            ("stores.images.s3", "S3ImageStore"),
            ("stores.images.local", "LocalImageStore"),
        ),
        "index": (
            "PINECONE_API_KEY",
            ("stores.vectors.pinecone_index", "PineconeVectorIndex"),
            ("stores.vectors.faiss_index", "FaissVectorIndex"),
        ),
        "catalog": (
            "MONGODB_URI",
            ("stores.catalog.mongodb", "MongoCatalog"),
            ("stores.catalog.sqlite_catalog", "SqliteCatalog"),
        ),
    }
    setting, production, embedded = choices[kind]
    module_name, class_name = production if os.environ.get(setting) else embedded
    adapter: type[Any] = getattr(importlib.import_module(module_name), class_name)
    return adapter


def install(value: str | None) -> None:
    """Arm the crash point described by ``value`` (the environment variable's format)."""
    global _target
    if not value:
        return
    _target = _parse(value)
    point = _target[0]
    if point == "encode":
        return
    if point == "fsync":
        os.fsync = _wrap_sync("fsync", os.fsync)
        return
    kind, _, method = point.partition(".")
    if kind not in ("images", "index", "catalog") or not method:
        raise ValueError(f"{CRASH_ENV}: unknown crash point {point!r}")
    adapter = _adapter(kind)
    setattr(adapter, method, _wrap_async(point, getattr(adapter, method)))


install(os.environ.get(CRASH_ENV))
