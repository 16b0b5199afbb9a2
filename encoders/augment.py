"""The augmented query of the evaluation: a shopper's photo of a catalog image (random crop of
80-95%, horizontal flip, small brightness/contrast change, JPEG re-encode)."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageEnhance


def augment_image(image: Image.Image, rng: random.Random) -> bytes:
    """JPEG bytes of a randomly altered copy of ``image`` (deterministic for a seeded rng)."""
    width, height = image.size
    scale = rng.uniform(0.80, 0.95)
    crop_w, crop_h = max(1, round(width * scale)), max(1, round(height * scale))
    left = rng.randint(0, width - crop_w)
    top = rng.randint(0, height - crop_h)
    out = image.convert("RGB").crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.9, 1.1))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.9, 1.1))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=rng.randint(70, 90))
    return buffer.getvalue()
