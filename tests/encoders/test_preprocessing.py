"""The image preprocessing's shortcuts compute what the plain arithmetic computes, to the
bit: the normalisation read from a table of the 256 levels, the foreground mask's channel
maximum, and the mask computed once per image and shared by the content box and the colour
statistics. Vectors (and the catalogs encoded with them) depend on these bits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from encoders.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    colour_histogram,
    content_box,
    foreground_mask,
    image_array,
    normalised_pixels,
    pad_to_square,
    thumbnail,
    thumbnail_mask,
)
from encoders.images import decode_image

PHOTOS = 12


def _photos(hm_demo: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((hm_demo / "images").glob("*.jpg"))[:PHOTOS]]


def _arithmetic(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """The normalisation pixel by pixel, as it was written before the table."""
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    normalised = ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return np.ascontiguousarray(normalised, dtype=np.float32)


def test_normalised_pixels_are_the_arithmetic_bit_for_bit(hm_demo: Path) -> None:
    every_level = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
    noise = np.random.default_rng(7).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    photos = [np.asarray(decode_image(data)) for data in _photos(hm_demo)]
    for rgb in [every_level, noise, *photos]:
        table = normalised_pixels(rgb)
        assert table.dtype == np.float32
        assert table.flags.c_contiguous
        np.testing.assert_array_equal(table, _arithmetic(rgb))


def test_image_array_is_the_padded_resized_photo_normalised(hm_demo: Path) -> None:
    for data in _photos(hm_demo)[:4]:
        image = decode_image(data)
        square = pad_to_square(image).resize((96, 96), Image.Resampling.BILINEAR)
        np.testing.assert_array_equal(image_array(image, 96), _arithmetic(np.asarray(square)))


def test_foreground_mask_takes_the_largest_channel_offset() -> None:
    rng = np.random.default_rng(3)
    rgb = np.full((40, 30, 3), 250, dtype=np.uint8)  # a light background
    rgb[10:30, 8:22] = rng.integers(0, 256, (20, 14, 3), dtype=np.uint8)
    rgb[5, 5] = (250, 250, 229)  # only blue stands out (by 21 > 18)
    rgb[6, 6] = (250, 250, 233)  # by 17: background
    mask = foreground_mask(rgb)
    background = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)
    expected = np.abs(rgb.astype(np.int16) - background).max(axis=-1) > 18
    np.testing.assert_array_equal(mask, expected)
    assert mask[5, 5]
    assert not mask[6, 6]


def test_the_mask_is_computed_once_and_is_the_thumbnails(hm_demo: Path) -> None:
    for data in _photos(hm_demo)[:4]:
        image = decode_image(data)
        fresh = foreground_mask(np.asarray(thumbnail(decode_image(data))))
        np.testing.assert_array_equal(thumbnail_mask(image), fresh)
        assert thumbnail_mask(image) is thumbnail_mask(image)
        # the content box and the colour statistics are those of a fresh image
        again = decode_image(data)
        assert content_box(image) == content_box(again)
        np.testing.assert_array_equal(colour_histogram(image), colour_histogram(again))


def test_decoding_turns_a_photo_as_its_exif_orientation_says() -> None:
    """A phone photo stored sideways (orientation 6: turn 90 degrees clockwise to view)
    decodes upright, and its orientation tag is gone; a photo without one is untouched."""
    stored = Image.new("RGB", (60, 40), (255, 255, 255))
    stored.paste((200, 0, 0), (0, 0, 10, 40))  # a red band on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    upright = decode_image(buffer.getvalue())
    assert upright.size == (40, 60)
    pixels = np.asarray(upright)
    assert pixels[2, 20, 0] > 150 > pixels[2, 20, 1]  # red on top
    assert pixels[50, 20, 1] > 200  # white below
    assert upright.getexif().get(0x0112) in (None, 1)
    plain = io.BytesIO()
    stored.save(plain, format="JPEG", quality=95)
    assert decode_image(plain.getvalue()).size == (60, 40)
