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


def image_key(product_id: str, data: bytes, content_type: str) -> str:
    """Stable key of a product's image: readable product id plus the content hash, so a new
    photo gets a new key (caches never serve stale bytes) and two products never share one
    object (deleting one cannot break the other)."""
    safe_id = _UNSAFE.sub("_", product_id).strip("._")[:64] or "product"
    extension = SUPPORTED_IMAGE_TYPES.get(content_type, "bin")
    return f"{safe_id}-{content_hash(data)[:20]}.{extension}"
