"""Decoding untrusted image bytes safely: format sniffed from the bytes; the size read from
the header and checked (pixels, longest side, aspect ratio) and a JPEG's scans counted
before any pixel buffer is allocated; every supported mode converted to 8-bit RGB."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageOps, UnidentifiedImageError

from domain.errors import InvalidImage
from domain.images import sniff_image_type

DEFAULT_MAX_PIXELS = 40_000_000
MAX_SIDE = 10_000
"""Longest side accepted, whatever the pixel count: a 1x40000 PNG is 40,000 pixels but a
strip no camera takes (and padding it to a square used to need 4.8 GB)."""
MAX_ASPECT_RATIO = 10.0
"""Longest side over shortest side: panoramas and banners pass, 16383x1 strips do not."""
MAX_JPEG_SCANS = 256
"""Scans a JPEG may hold (encoders write one to a dozen; progressive ones about ten). The
decoder goes over the whole image once per scan, and an empty scan is a few bytes: 10 MB
of them would keep a core busy for many minutes."""
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_START_OF_SCAN = b"\xff\xda"


@contextmanager
def _opened(data: bytes) -> Iterator[Image.Image]:
    """The image with only its header read; InvalidImage for anything Pillow refuses."""
    content_type = sniff_image_type(data)
    if content_type is None:
        raise InvalidImage("not a JPEG, PNG or WebP image")
    # Every scan starts with this marker (its bytes appear nowhere in entropy-coded data),
    # so the count bounds the scans from above.
    if content_type == "image/jpeg" and data.count(_START_OF_SCAN) > MAX_JPEG_SCANS:
        raise InvalidImage(f"the JPEG has more than {MAX_JPEG_SCANS} scans; it is not decoded")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[content_type]])
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage("image is too large to decode") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"cannot decode image: {exc}") from exc


def _check_size(image: Image.Image, max_pixels: int) -> tuple[int, int]:
    width, height = image.size
    if max(width, height) > MAX_SIDE:
        raise InvalidImage(
            f"image of {width}x{height} pixels is above the limit of {MAX_SIDE:,} pixels a side"
        )
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        raise InvalidImage(
            f"image of {width}x{height} pixels is more elongated than the limit of "
            f"{MAX_ASPECT_RATIO:g}:1 (long side to short side)"
        )
    if width * height > max_pixels:
        raise InvalidImage(
            f"image of {width}x{height} pixels is above the limit of {max_pixels:,} pixels"
        )
    if getattr(image, "n_frames", 1) > 1:
        raise InvalidImage("animated images are not supported")
    return width, height


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Width and height from the header, within the limits decode_image applies; nothing is
    decoded (cheap enough for the event loop: the API charges a request's pixel budget with
    it before decoding)."""
    with _opened(data) as image:
        return _check_size(image, max_pixels)


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int | None = None
) -> Image.Image:
    """An RGB image from JPEG, PNG or WebP bytes. Raises InvalidImage for anything else,
    for truncated files, for animations and for images above ``max_pixels``, MAX_SIDE or
    MAX_ASPECT_RATIO (all checked from the header, before any pixel is decoded).
    ``draft_side``: a JPEG may be decoded at a reduced scale (1/2 .. 1/8) whose sides stay
    at least this long, for statistics that need no detail (a fraction of the cost)."""
    with _opened(data) as image:
        _check_size(image, max_pixels)
        if draft_side is not None:
            image.draft("RGB", (draft_side, draft_side))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit greyscale, CMYK, palette, alpha (on white)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
