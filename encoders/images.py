"""Decoding untrusted image bytes safely: format sniffed from the bytes, pixel limit checked
before the pixels are decoded, every supported mode converted to 8-bit RGB."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from domain.errors import InvalidImage
from domain.images import sniff_image_type

DEFAULT_MAX_PIXELS = 40_000_000
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB image from JPEG, PNG or WebP bytes. Raises InvalidImage for anything else,
    for truncated files, for animations and for images above ``max_pixels``."""
    content_type = sniff_image_type(data)
    if content_type is None:
        raise InvalidImage("not a JPEG, PNG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[content_type]])
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImage(
                    f"image of {width}x{height} pixels is above the limit of {max_pixels:,} pixels"
                )
            if getattr(image, "n_frames", 1) > 1:
                raise InvalidImage("animated images are not supported")
            image.load()
            image = ImageOps.exif_transpose(image) or image
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage("image is too large to decode") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"cannot decode image: {exc}") from exc
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
