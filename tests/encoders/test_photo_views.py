"""The shopper-photo training views: deterministic for a seed, the garment kept on a new
background, and parameter ranges disjoint from the photo-style evaluation's."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

from encoders.backbones import foreground_mask
from encoders.fashion_lite import photo_views
from encoders.fashion_lite.photo_views import photo_view
from encoders.shopper_photos import EVAL_RANGES, Span


def _photo(hm_demo: Path) -> Image.Image:
    path = sorted((hm_demo / "images").glob("*.jpg"))[0]
    return Image.open(path).convert("RGB")


def test_a_seed_gives_the_same_view_and_another_seed_another(hm_demo: Path) -> None:
    image = _photo(hm_demo)
    first = photo_view(image, random.Random("199:a"))
    assert first == photo_view(image, random.Random("199:a"))
    assert first != photo_view(image, random.Random("199:b"))


def test_the_white_studio_background_is_replaced(hm_demo: Path) -> None:
    image = _photo(hm_demo)
    packshot = np.asarray(image, dtype=np.uint8)
    assert foreground_mask(packshot).mean() < 0.9  # a garment on white
    border_whites = []
    for seed in range(12):
        view = Image.open(io.BytesIO(photo_view(image, random.Random(seed)))).convert("RGB")
        pixels = np.asarray(view, dtype=np.int16)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        border_whites.append(float((border.min(axis=-1) > 240).mean()))
        assert view.size[0] <= image.size[0]
        assert view.size[1] <= image.size[1]
    # the studio's white border is gone in most views (a generated one may be light)
    assert np.median(border_whites) < 0.2


def test_training_ranges_are_disjoint_from_the_evaluations() -> None:
    """The photo-style metric must measure changes the model was not fitted to."""
    pairs = {
        "scale": (photo_views.SCALE, EVAL_RANGES.scale),
        "rotation": (photo_views.ROTATION_DEGREES, EVAL_RANGES.rotation_degrees),
        "perspective": (photo_views.PERSPECTIVE, EVAL_RANGES.perspective),
        "cut": (photo_views.CUT, EVAL_RANGES.cut),
        "temperature": (photo_views.TEMPERATURE, EVAL_RANGES.temperature),
        "blur": (photo_views.BLUR_RADIUS, EVAL_RANGES.blur_radius),
        "jpeg": (Span(*photo_views.JPEG_QUALITY), Span(*EVAL_RANGES.jpeg_quality)),
    }
    for name, (training, evaluation) in pairs.items():
        assert not training.overlaps(evaluation), name
