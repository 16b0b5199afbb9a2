"""LocalImageStore: the ImageStore contract, plus key safety, layout, content types,
atomic writes and concurrent use."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from domain.errors import BadInput, NotFound
from domain.images import image_key
from stores.images.local import LocalImageStore
from tests.stores.contracts import ImageStoreContract

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg bytes" * 20


class TestLocalImageStore(ImageStoreContract):
    @pytest.fixture
    def image_store(self, tmp_path: Path) -> LocalImageStore:
        return LocalImageStore(tmp_path / "images", base_url="/images")


@pytest.fixture
def store(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "images", base_url="/images/", durable=False)


BAD_KEYS = [
    "",
    ".",
    "..",
    "../secret.jpg",
    "../../etc/passwd",
    "a/../../b.jpg",
    "/etc/passwd",
    "sub/dir.jpg",
    "a\\b.jpg",
    "..\\windows.jpg",
    ".hidden.jpg",
    "-rf.jpg",
    "nul\x00.jpg",
    "new\nline.jpg",
    "spaced key.jpg",
    "x" * 201,
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_unsafe_keys_are_refused_everywhere(
    store: LocalImageStore, tmp_path: Path, key: str
) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    with pytest.raises(BadInput):
        await store.put(key, JPEG, "image/jpeg")
    with pytest.raises(BadInput):
        await store.get(key)
    with pytest.raises(BadInput):
        await store.exists(key)
    with pytest.raises(BadInput):
        await store.delete(key)
    with pytest.raises(BadInput):
        store.url(key)
    assert (tmp_path / "secret.jpg").read_bytes() == b"secret"
    assert os.listdir(tmp_path) == ["secret.jpg"]


async def test_keys_made_by_the_domain_are_accepted(store: LocalImageStore) -> None:
    for pid in ("0108775015", "sku/42 é", "../../evil", "a" * 300):
        key = image_key(pid, JPEG, "image/jpeg")
        await store.put(key, JPEG, "image/jpeg")
        assert await store.get(key) == JPEG


async def test_url_and_layout(store: LocalImageStore, tmp_path: Path) -> None:
    key = "p1-abc.jpg"
    assert store.url(key) == "/images/p1-abc.jpg"
    await store.put(key, JPEG, "image/jpeg")
    path = store.path(key)
    assert path.is_file()
    assert path.parent.parent == tmp_path / "images"
    assert len(path.parent.name) == 2
    assert path.read_bytes() == JPEG


async def test_content_type_is_remembered(store: LocalImageStore) -> None:
    await store.put("a.jpg", JPEG, "image/jpeg")
    await store.put("b.png", b"\x89PNG\r\n\x1a\nxx", "image/png")
    await store.put("c.bin", b"RIFF....WEBPxx", "image/webp")
    await store.put("d.jpg", b"\x89PNG\r\n\x1a\nyy", "image/png; charset=binary")
    assert await store.content_type("a.jpg") == "image/jpeg"
    assert await store.content_type("b.png") == "image/png"
    assert await store.content_type("c.bin") == "image/webp"
    assert await store.content_type("d.jpg") == "image/png"
    # Putting it again with the type its extension implies drops the sidecar.
    await store.put("d.jpg", JPEG, "image/jpeg")
    assert await store.content_type("d.jpg") == "image/jpeg"
    await store.delete("c.bin")
    with pytest.raises(NotFound):
        await store.content_type("c.bin")
    # Sidecars never show up as keys of their own and go away with their image.
    assert not list(store.path("c.bin").parent.glob(".c.bin*"))


async def test_put_same_bytes_does_not_rewrite(store: LocalImageStore) -> None:
    await store.put("a.jpg", JPEG, "image/jpeg")
    path = store.path("a.jpg")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    await store.put("a.jpg", JPEG, "image/jpeg")
    assert path.stat().st_mtime_ns == 1_000_000_000
    await store.put("a.jpg", JPEG + b"!", "image/jpeg")
    assert path.stat().st_mtime_ns != 1_000_000_000
    assert await store.get("a.jpg") == JPEG + b"!"


async def test_no_temporary_files_are_left_behind(store: LocalImageStore) -> None:
    for i in range(20):
        await store.put(f"k{i}.jpg", JPEG + bytes([i]), "image/jpeg")
    files = [p for p in store.directory.rglob("*") if p.is_file()]
    assert len(files) == 20
    assert not [p for p in files if p.name.endswith(".tmp")]


async def test_a_failed_write_keeps_the_old_image(
    store: LocalImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.put("a.jpg", JPEG, "image/jpeg")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        await store.put("a.jpg", JPEG + b"new", "image/jpeg")
    monkeypatch.undo()
    assert await store.get("a.jpg") == JPEG
    assert not [p for p in store.directory.rglob("*.tmp")]


async def test_concurrent_puts_and_gets(store: LocalImageStore) -> None:
    payloads = {f"img{i}.jpg": JPEG + str(i).encode() * 100 for i in range(40)}

    async def put_all() -> None:
        await asyncio.gather(*(store.put(k, v, "image/jpeg") for k, v in payloads.items()))

    await asyncio.gather(put_all(), put_all(), put_all())
    got = await asyncio.gather(*(store.get(k) for k in payloads))
    assert dict(zip(payloads, got, strict=True)) == payloads


async def test_reopening_sees_the_same_images(tmp_path: Path) -> None:
    first = LocalImageStore(tmp_path / "images")
    await first.put("a.jpg", JPEG, "image/jpeg")
    second = LocalImageStore(tmp_path / "images")
    assert await second.get("a.jpg") == JPEG
    assert await second.exists("a.jpg")
