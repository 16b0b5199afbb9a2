"""In-memory implementations of the domain ports, for unit tests. They run the same contract
tests as the real adapters (tests/stores/contracts.py), so they stay honest."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np

from domain.errors import InvalidImage, NotFound, UnknownEncoder
from domain.images import sniff_image_type
from domain.model import Cursor, EncoderInfo, Modality, Product, ProductFilter, ProductPage
from domain.ports import Encoder, MappedRows, ProductRows, Vectors

FAKE_IMAGE_PREFIX = b"\xff\xd8\xffIMG:"


def fake_image(words: str) -> bytes:
    """Bytes that sniff as a JPEG and that HashingEncoder 'sees' as showing these words."""
    return FAKE_IMAGE_PREFIX + words.encode()


class HashingEncoder:
    """Deterministic bag-of-words vectors: texts sharing words are close. Images made by
    fake_image() (or starting with b"IMG:") are encoded as the words they carry, so tests can
    make an image 'look like' a description. Other real image bytes hash their content."""

    def __init__(self, encoder_id: str = "fake", dim: int = 64) -> None:
        self._id = encoder_id
        self._dim = dim
        self.calls = 0

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.TEXT, Modality.IMAGE})

    def _words(self, text: str) -> Vectors:
        vector = np.zeros(self._dim, dtype=np.float32)
        for word in text.lower().split():
            digest = hashlib.sha256(word.encode()).digest()
            vector[int.from_bytes(digest[:4], "little") % self._dim] += 1.0
        if not vector.any():
            vector[0] = 1.0
        return vector / np.linalg.norm(vector)

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        return np.stack([self._words(t) for t in texts]).astype(np.float32)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        self.calls += 1
        rows = []
        for data in images:
            if data.startswith(FAKE_IMAGE_PREFIX):
                rows.append(self._words(data[len(FAKE_IMAGE_PREFIX) :].decode()))
            elif data.startswith(b"IMG:"):
                rows.append(self._words(data[4:].decode()))
            elif sniff_image_type(data):
                rows.append(self._words(hashlib.sha256(data).hexdigest()))
            else:
                raise InvalidImage("not an image")
        return np.stack(rows).astype(np.float32)


class FakeEncoderProvider:
    def __init__(self, *encoders: Encoder) -> None:
        self._encoders = {e.id: e for e in encoders}
        self._default = encoders[0].id

    @property
    def default_id(self) -> str:
        return self._default

    def get(self, encoder_id: str | None = None) -> Encoder:
        try:
            return self._encoders[encoder_id or self._default]
        except KeyError:
            raise UnknownEncoder(f"unknown encoder {encoder_id!r}") from None

    def available(self) -> list[EncoderInfo]:
        return [EncoderInfo(e.id, e.dim, e.modalities) for e in self._encoders.values()]


class InMemoryVectorIndex:
    def __init__(self) -> None:
        self.vectors: dict[str, dict[str, Vectors]] = {}
        self.metadata: dict[str, dict[str, Mapping[str, str]]] = {}
        self.query_calls = 0

    async def upsert(
        self,
        encoder_id: str,
        ids: Sequence[str],
        vectors: Vectors,
        metadata: Sequence[Mapping[str, str]],
    ) -> None:
        space = self.vectors.setdefault(encoder_id, {})
        meta = self.metadata.setdefault(encoder_id, {})
        for pid, vector, tags in zip(ids, vectors, metadata, strict=True):
            space[pid] = np.asarray(vector, dtype=np.float32)
            meta[pid] = dict(tags)

    async def query(
        self, encoder_id: str, vector: Vectors, top_k: int, filter: ProductFilter | None = None
    ) -> list[tuple[str, float]]:
        self.query_calls += 1
        space = self.vectors.get(encoder_id, {})
        meta = self.metadata.get(encoder_id, {})
        scored = [
            (pid, float(np.dot(v, vector)))
            for pid, v in space.items()
            if filter is None or filter.matches(meta[pid])
        ]
        scored.sort(key=lambda item: (-item[1], item[0]))
        return scored[:top_k]

    async def fetch(self, encoder_id: str, ids: Sequence[str]) -> dict[str, Vectors]:
        space = self.vectors.get(encoder_id, {})
        return {pid: space[pid] for pid in ids if pid in space}

    async def delete(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        spaces = [encoder_id] if encoder_id else list(self.vectors)
        for name in spaces:
            for pid in ids:
                self.vectors.get(name, {}).pop(pid, None)
                self.metadata.get(name, {}).pop(pid, None)

    async def count(self, encoder_id: str | None = None) -> int:
        if encoder_id is not None:
            return len(self.vectors.get(encoder_id, {}))
        return sum(len(space) for space in self.vectors.values())

    async def encoder_ids(self) -> list[str]:
        return sorted(name for name, space in self.vectors.items() if space)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


class InMemoryCatalog:
    def __init__(self) -> None:
        self.products: dict[str, Product] = {}
        self.ledger: dict[str, dict[str, str]] = {}
        self.get_many_calls = 0
        self.ledger_calls = 0

    async def upsert_many(self, products: Sequence[Product]) -> None:
        for product in products:
            self.products[product.id] = product

    async def get(self, product_id: str) -> Product | None:
        return self.products.get(product_id)

    async def get_many(self, ids: Sequence[str]) -> dict[str, Product]:
        self.get_many_calls += 1
        return {pid: self.products[pid] for pid in ids if pid in self.products}

    async def get_rows(self, ids: Sequence[str]) -> ProductRows:
        return MappedRows(await self.get_many(ids))

    async def delete(self, product_id: str) -> bool:
        for entries in self.ledger.values():
            entries.pop(product_id, None)
        return self.products.pop(product_id, None) is not None

    async def list(
        self, filter: ProductFilter | None = None, cursor: str | None = None, limit: int = 20
    ) -> ProductPage:
        after = Cursor.decode(cursor).after_id
        matching = sorted(
            (p for p in self.products.values() if filter is None or filter.matches(p.tags)),
            key=lambda p: p.id,
        )
        if after is not None:
            matching = [p for p in matching if p.id > after]
        page = matching[:limit]
        more = len(matching) > limit
        return ProductPage(
            items=tuple(page), next_cursor=Cursor(after_id=page[-1].id).encode() if more else None
        )

    async def count(self, filter: ProductFilter | None = None) -> int:
        return sum(1 for p in self.products.values() if filter is None or filter.matches(p.tags))

    async def facets(
        self, keys: Sequence[str] | None = None, filter: ProductFilter | None = None
    ) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for product in self.products.values():
            if filter is not None and not filter.matches(product.tags):
                continue
            for key, value in product.tags.items():
                if keys is None or key in keys:
                    bucket = counts.setdefault(key, {})
                    bucket[value] = bucket.get(value, 0) + 1
        return counts

    async def indexed_hashes(self, encoder_id: str) -> dict[str, str]:
        return dict(self.ledger.get(encoder_id, {}))

    async def ledger_entries(
        self, encoder_ids: Sequence[str], ids: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        self.ledger_calls += 1
        wanted = set(ids)
        entries = {
            e: {pid: h for pid, h in self.ledger.get(e, {}).items() if pid in wanted}
            for e in encoder_ids
        }
        return {e: found for e, found in entries.items() if found}

    async def ledger_page(self, encoder_id: str, after: str | None, limit: int) -> dict[str, str]:
        entries = self.ledger.get(encoder_id, {})
        ids = sorted(pid for pid in entries if after is None or pid > after)[:limit]
        return {pid: entries[pid] for pid in ids}

    async def mark_indexed(self, encoder_id: str, hashes: Mapping[str, str]) -> None:
        self.ledger.setdefault(encoder_id, {}).update(hashes)

    async def forget_indexed(self, ids: Sequence[str], encoder_id: str | None = None) -> None:
        encoders = [encoder_id] if encoder_id is not None else list(self.ledger)
        for name in encoders:
            for pid in ids:
                self.ledger.get(name, {}).pop(pid, None)

    async def close(self) -> None:
        return None


class InMemoryImageStore:
    def __init__(self, base_url: str = "/images") -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self._base_url = base_url

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = (data, content_type)

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key][0]
        except KeyError:
            raise NotFound(f"no image {key!r}") from None

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def url(self, key: str) -> str:
        return f"{self._base_url}/{key}"

    async def key_pages(self, page_size: int = 1000) -> AsyncIterator[list[str]]:
        keys = sorted(self.objects)
        for start in range(0, len(keys), page_size):
            yield keys[start : start + page_size]

    async def close(self) -> None:
        return None


class FakeColours:
    """A ColourAnalyser reading the colour a test gave each image: ``colours`` maps image
    bytes to a histogram (``domain.colour.histogram_bytes``); other images have none."""

    def __init__(self, colours: Mapping[bytes, bytes] | None = None) -> None:
        self.colours = dict(colours or {})
        self.images_read = 0

    def colour_histograms(self, images: Sequence[bytes]) -> list[bytes | None]:
        self.images_read += len(images)
        return [self.colours.get(data) for data in images]
