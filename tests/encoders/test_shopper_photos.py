"""The shopper-photo transforms behind ``fashion-search eval``'s photo-style metric: the same
seed gives the same photo, the photo is a valid JPEG of the packshot's size, the garment is cut
out of its backdrop and put on a new background, and every drawn value stays in its range."""

from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from encoders.shopper_photos import (
    BACKGROUNDS,
    EVAL_RANGES,
    PACKSHOT,
    PhotoChain,
    PhotoRanges,
    Span,
    foreground_mask,
    make_background,
    shopper_photo,
)

BACKDROP = (236, 235, 232)
GARMENT = (150, 30, 40)
SIZE = (240, 360)
GARMENT_BOX = (60, 70, 180, 300)


def packshot(size: tuple[int, int] = SIZE, mode: str = "RGB") -> Image.Image:
    """A catalog-style photo: a dark red garment on a near-white backdrop with a soft
    vignette, the garment with a white print inside it (a hole the mask must fill)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    vignette = 8 * np.hypot(x / width - 0.5, y / height - 0.5)
    pixels = np.array(BACKDROP, dtype=np.float64) - vignette[..., None]
    image = Image.fromarray(pixels.astype(np.uint8))
    scale = width / SIZE[0]
    box = tuple(round(c * scale) for c in GARMENT_BOX)
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=GARMENT)
    left, top, right, bottom = box
    draw.rectangle(
        (
            left + (right - left) // 3,
            top + (bottom - top) // 3,
            right - (right - left) // 3,
            bottom - (bottom - top) // 3,
        ),
        fill=BACKDROP,
    )
    return image.convert(mode)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    return image


def test_the_same_seed_gives_the_same_photo_and_other_seeds_others() -> None:
    image = packshot()
    first = shopper_photo(image, random.Random("1234:photo:0123"))
    again = shopper_photo(image, random.Random("1234:photo:0123"))
    assert first == again
    others = {shopper_photo(image, random.Random(f"1234:photo:{n}")) for n in range(4)}
    assert len(others | {first}) == 5


@pytest.mark.parametrize(
    ("size", "mode"),
    [((240, 360), "RGB"), ((60, 80), "RGB"), ((360, 540), "L"), ((24, 36), "RGBA")],
)
def test_the_photo_is_an_rgb_jpeg_of_the_packshot_size(size: tuple[int, int], mode: str) -> None:
    image = packshot(size, mode)
    for seed in range(3):
        photo = decoded(shopper_photo(image, random.Random(seed)))
        assert photo.mode == "RGB"
        assert photo.size == size


def test_the_backdrop_is_replaced_and_the_garment_kept() -> None:
    image = packshot()
    original = np.asarray(image, dtype=np.float64)
    backdrop_rows = original[:40].reshape(-1, 3)  # above the garment: backdrop only
    for seed in range(6):
        photo = np.asarray(decoded(shopper_photo(image, random.Random(seed))), dtype=np.float64)
        assert np.abs(photo - original).mean() > 10
        # the packshot's near-white backdrop is gone from most of the photo
        near_backdrop = np.abs(photo - backdrop_rows.mean(axis=0)).max(axis=2) < 8
        assert near_backdrop.mean() < 0.5, seed
        # the garment is still there, its colour within the light's shifts
        near_garment = np.abs(photo - np.array(GARMENT)).max(axis=2) < 60
        assert near_garment.mean() > 0.05, seed


def test_the_mask_finds_the_garment_and_fills_its_print() -> None:
    image = packshot()
    mask = np.asarray(foreground_mask(image)) > 127
    expected = np.zeros_like(mask)
    left, top, right, bottom = GARMENT_BOX
    expected[top : bottom + 1, left : right + 1] = True
    intersection = (mask & expected).sum()
    union = (mask | expected).sum()
    assert intersection / union > 0.95
    centre = ((top + bottom) // 2, (left + right) // 2)  # the backdrop-coloured print
    assert mask[centre]


def test_a_blank_or_tiny_image_is_all_foreground() -> None:
    blank = Image.new("RGB", SIZE, BACKDROP)
    assert np.asarray(foreground_mask(blank)).min() == 255
    tiny = Image.new("RGB", (10, 12), GARMENT)
    assert np.asarray(foreground_mask(tiny)).min() == 255


def test_every_drawn_value_stays_in_its_range() -> None:
    ranges = EVAL_RANGES
    for seed in range(200):
        chain = PhotoChain.draw(random.Random(seed), ranges)
        assert chain.background in ranges.backgrounds
        assert ranges.rotation_degrees.low <= abs(chain.rotation_degrees)
        assert abs(chain.rotation_degrees) <= ranges.rotation_degrees.high
        assert all(
            ranges.perspective.low <= c <= ranges.perspective.high
            for c in chain.perspective_corners
        )
        assert ranges.scale.low <= chain.scale <= ranges.scale.high
        if chain.cut_side is None:
            assert chain.cut == 0.0
        else:
            assert ranges.cut.low <= chain.cut <= ranges.cut.high
        assert ranges.temperature.low <= abs(chain.temperature) <= ranges.temperature.high
        assert ranges.blur_radius.low <= chain.blur_radius <= ranges.blur_radius.high
        assert ranges.noise_sigma.low <= chain.noise_sigma <= ranges.noise_sigma.high
        low, high = ranges.jpeg_quality
        assert low <= chain.jpeg_quality <= high


def test_other_ranges_draw_other_chains() -> None:
    """Training's augmentations reuse the machinery with their own ranges."""
    narrow = dataclasses.replace(
        EVAL_RANGES, rotation_degrees=Span(20.0, 25.0), backgrounds=("wood",)
    )
    chain = PhotoChain.draw(random.Random(7), narrow)
    assert 20.0 <= abs(chain.rotation_degrees) <= 25.0
    assert chain.background == "wood"
    assert narrow.rotation_degrees.overlaps(EVAL_RANGES.rotation_degrees) is False


def test_ranges_are_checked() -> None:
    with pytest.raises(ValueError, match="empty"):
        Span(2.0, 1.0)
    with pytest.raises(ValueError, match="backgrounds"):
        dataclasses.replace(EVAL_RANGES, backgrounds=("marble",))
    with pytest.raises(ValueError, match="jpeg quality"):
        dataclasses.replace(EVAL_RANGES, jpeg_quality=(90, 60))
    assert isinstance(EVAL_RANGES, PhotoRanges)
    plain = dataclasses.replace(EVAL_RANGES, backgrounds=(PACKSHOT,))  # allowed, not evaluated
    assert PACKSHOT not in EVAL_RANGES.backgrounds
    assert PhotoChain.draw(random.Random(1), plain).background == PACKSHOT


@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_backgrounds_are_seeded_textures(kind: str) -> None:
    first = make_background(kind, (60, 90), np.random.default_rng(5))
    again = make_background(kind, (60, 90), np.random.default_rng(5))
    other = make_background(kind, (60, 90), np.random.default_rng(6))
    assert first.shape == (90, 60, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.isfinite(first).all()
    assert first.std() > 1  # a texture or gradient, not a flat fill


def test_the_gap_between_trouser_legs_stays_backdrop() -> None:
    """Backdrop open to the border (between the legs, reached through a winding path) is not a
    hole: only enclosed backdrop is filled."""
    image = Image.new("RGB", SIZE, BACKDROP)
    draw = ImageDraw.Draw(image)
    draw.rectangle((60, 40, 180, 110), fill=GARMENT)  # waist
    draw.rectangle((60, 110, 110, 320), fill=GARMENT)  # left leg
    draw.rectangle((130, 110, 180, 320), fill=GARMENT)  # right leg
    draw.rectangle((110, 250, 118, 320), fill=GARMENT)  # a flap narrowing the gap's mouth
    mask = np.asarray(foreground_mask(image)) > 127
    assert not mask[200, 124]  # between the legs, above the flap
    assert not mask[300, 124]
    assert mask[200, 85]  # the legs
    assert mask[200, 155]
    assert mask[70, 120]  # the waist
