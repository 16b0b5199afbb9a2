"""Image facts the domain can know without decoding: format sniffing and storage keys."""

from __future__ import annotations

import hashlib
import re

SUPPORTED_IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


def sniff_image_type(data: bytes) -> str | None:
    """The media type by magic bytes, for the formats we accept; None for anything else
    (whatever the client declared)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
READABLE_PREFIX = 40
"""Characters of the sanitised product id kept at the front of a key, for people reading a
bucket listing; the key's identity comes from the hashes after it."""
ID_HASH_CHARS = 24
CONTENT_HASH_CHARS = 20


def _readable(product_id: str, length: int) -> str:
    return _UNSAFE.sub("_", product_id).strip("._")[:length] or "product"


def image_key(product_id: str, data: bytes, content_type: str) -> str:
    """Stable key of a product's image: a readable prefix of the id, a hash of the FULL id
    and the content hash. A new photo gets a new key (caches never serve stale bytes), and
    two products never share an object, even when their ids sanitise alike ("sku 1/red" and
    "sku_1_red") or share a long prefix, so deleting one cannot break the other."""
    return digest_image_key(product_id, content_hash(data), content_type)


def digest_image_key(product_id: str, digest: str, content_type: str) -> str:
    """``image_key`` from the image's content hash (an engine that checked the ledger by
    hash alone need not hold the bytes)."""
    id_hash = hashlib.sha256(product_id.encode("utf-8")).hexdigest()[:ID_HASH_CHARS]
    extension = SUPPORTED_IMAGE_TYPES.get(content_type, "bin")
    readable = _readable(product_id, READABLE_PREFIX)
    return f"{readable}-{id_hash}-{digest[:CONTENT_HASH_CHARS]}.{extension}"


def legacy_image_key(product_id: str, data: bytes, content_type: str) -> str:
    """The key earlier versions gave an image (sanitised id cut at 64 characters, then the
    content hash). Products stored under it keep it while their photo is unchanged: existing
    data homes and buckets keep working without a migration."""
    return legacy_digest_image_key(product_id, content_hash(data), content_type)


def legacy_digest_image_key(product_id: str, digest: str, content_type: str) -> str:
    """``legacy_image_key`` from the image's content hash."""
    extension = SUPPORTED_IMAGE_TYPES.get(content_type, "bin")
    return f"{_readable(product_id, 64)}-{digest[:CONTENT_HASH_CHARS]}.{extension}"


SELF_FETCH_HEADER = "X-Fashion-Search-Image-Fetch"
"""Sent with every image URL request this service makes; a request carrying it may fetch no
URL itself, so a URL that leads back to the service (a redirect, a proxy, another instance)
ends there instead of recursing."""
