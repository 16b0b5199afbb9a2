"""Embedded image store: one file per image under a directory, served by the API at
``/images/<key>``.

Keys
    A key is one path segment of letters, digits, ``.``, ``_`` and ``-`` that does not start
    with ``.`` or ``-`` (at most 200 characters): the shape ``domain.images.image_key``
    produces. Anything else (``..``, ``/``, ``\\``, absolute paths, NUL, empty) is refused
    with ``BadInput`` before the file system is touched, so a key can never name a file
    outside the store.

Layout
    ``<root>/<2 hex digits of sha256(key)>/<key>``: 256 shard folders keep directories small
    for large catalogs (keys begin with product ids, so their own prefixes would spread
    badly). The content type is remembered through the key's extension; when the declared
    type differs from what the extension implies, a sidecar ``.<key>.type`` file (a name no
    key can have) records it. ``content_type(key)`` reads it back.

Writes
    Atomic (temporary file in ``<root>/.incoming``, then ``os.replace``): a reader never sees a
    half-written image. A crash mid-write leaves at most a stray temporary file, which the next
    process to write removes (the first put through a ``LocalImageStore`` removes the files of
    writers that are gone). With ``durable`` (the default) the file and its folder are
    fsynced, so an image recorded as ingested survives a power cut; the cost is small next to
    encoding the image. Putting the bytes a key already holds is a no-op (keys are
    content-addressed, so re-ingesting rewrites nothing). File I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import re
from collections.abc import AsyncIterator
from pathlib import Path

from domain.errors import BadInput, NotFound
from domain.images import SUPPORTED_IMAGE_TYPES
from stores._util import atomic_write_bytes, remove_orphaned_tmp_files

MAX_KEY_LENGTH = 200
_KEY = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_KEY_LENGTH - 1}}}")
_TYPE_BY_EXTENSION = {ext: ctype for ctype, ext in SUPPORTED_IMAGE_TYPES.items()} | {
    "jpeg": "image/jpeg"
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def validate_key(key: str) -> str:
    """The key itself when it is a safe single path segment; BadInput otherwise."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise BadInput(f"invalid image key {key!r}")
    return key


def _type_from_extension(key: str) -> str | None:
    extension = key.rsplit(".", 1)[-1].lower() if "." in key else ""
    return _TYPE_BY_EXTENSION.get(extension) or mimetypes.types_map.get(f".{extension}")


class LocalImageStore:
    """The embedded ``ImageStore`` (see the module docstring for the design)."""

    def __init__(self, directory: Path | str, base_url: str = "/images", *, durable: bool = True):
        self.directory = Path(directory)
        self.base_url = base_url.rstrip("/")
        self.durable = durable
        self._tmp_dir = self.directory / ".incoming"  # no key starts with "."
        self._tmp_checked = False

    def path(self, key: str) -> Path:
        """Where the image of ``key`` lives (whether or not it exists)."""
        validate_key(key)
        shard = hashlib.sha256(key.encode("utf-8")).hexdigest()[:2]
        return self.directory / shard / key

    def _type_path(self, key: str) -> Path:
        image = self.path(key)
        return image.with_name(f".{image.name}.type")

    # -- the port ------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        validate_key(key)
        await asyncio.to_thread(self._put, key, bytes(data), content_type)

    async def get(self, key: str) -> bytes:
        validate_key(key)
        return await asyncio.to_thread(self._get, key)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def delete(self, key: str) -> None:
        validate_key(key)
        await asyncio.to_thread(self._delete, key)

    async def key_pages(self, page_size: int = 1000) -> AsyncIterator[list[str]]:
        """The keys of one shard folder at a time (at most ``page_size`` per page)."""
        shards = await asyncio.to_thread(self._shards)
        for shard in shards:
            names = await asyncio.to_thread(self._keys_in, shard)
            for start in range(0, len(names), page_size):
                yield names[start : start + page_size]

    def _shards(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name[0] != ".")

    @staticmethod
    def _keys_in(shard: Path) -> list[str]:
        """Image files only: sidecar type files and temporary files start with a dot."""
        return sorted(p.name for p in shard.iterdir() if p.name[0] != "." and p.is_file())

    def url(self, key: str) -> str:
        return f"{self.base_url}/{validate_key(key)}"

    async def close(self) -> None:
        return None

    async def content_type(self, key: str) -> str:
        """The content type given when the image was stored. NotFound for a missing key."""
        validate_key(key)
        return await asyncio.to_thread(self._content_type, key)

    # -- file work (worker threads) ------------------------------------------------------

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        if not self._tmp_checked:
            self._tmp_checked = True
            remove_orphaned_tmp_files(self._tmp_dir)
        path = self.path(key)
        if not self._holds(path, data):
            atomic_write_bytes(path, data, durable=self.durable, tmp_dir=self._tmp_dir)
        type_path = self._type_path(key)
        declared = content_type.split(";", 1)[0].strip().lower() or DEFAULT_CONTENT_TYPE
        if declared == _type_from_extension(key):
            with contextlib.suppress(FileNotFoundError):
                type_path.unlink()
        elif not (type_path.is_file() and type_path.read_text("utf-8") == declared):
            atomic_write_bytes(
                type_path, declared.encode("utf-8"), durable=self.durable, tmp_dir=self._tmp_dir
            )

    @staticmethod
    def _holds(path: Path, data: bytes) -> bool:
        try:
            if path.stat().st_size != len(data):
                return False
            return path.read_bytes() == data
        except FileNotFoundError:
            return False

    def _get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"no image {key!r}") from None

    def _delete(self, key: str) -> None:
        for path in (self.path(key), self._type_path(key)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _content_type(self, key: str) -> str:
        if not self.path(key).is_file():
            raise NotFound(f"no image {key!r}")
        try:
            return self._type_path(key).read_text("utf-8")
        except FileNotFoundError:
            return _type_from_extension(key) or DEFAULT_CONTENT_TYPE
