"""The image preprocessing: its shortcuts compute what the plain arithmetic computes, to the
bit (the normalisation read from a table of the 256 levels, the foreground mask's channel
maximum, the mask computed once per image and shared by the content box and the colour
statistics); the photo fitted to a square and its thumbnail are what they say. Vectors (and
the catalogs encoded with them) depend on these pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from encoders.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESSING_TAG,
    PREPROCESSING_VERSION,
    colour_histogram,
    content_box,
    fit_to_square,
    foreground_mask,
    image_array,
    normalised_pixels,
    pad_to_square,
    thumbnail,
    thumbnail_mask,
)
from encoders.fashion_lite.encoder import FashionLiteEncoder
from encoders.fashion_lite.heads import DEFAULT_HEADS
from encoders.image_only import VARIANTS, EffNetImageEncoder
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


def test_image_array_is_the_photo_fitted_to_a_square_normalised(hm_demo: Path) -> None:
    for data in _photos(hm_demo)[:4]:
        image = decode_image(data)
        square = np.asarray(fit_to_square(image, 96))
        np.testing.assert_array_equal(image_array(image, 96), _arithmetic(square))


def test_fit_to_square_is_the_padded_square_resized_but_along_the_edges(hm_demo: Path) -> None:
    """Resizing the photo, then centring it on white, gives what padding it to a square
    and then resizing gave (the preprocessing before version 2), but for the pixels along
    the photo's edges, where the filter no longer mixes in the white padding."""
    for data in _photos(hm_demo):
        for image in (decode_image(data), decode_image(data).transpose(Image.Transpose.ROTATE_90)):
            fitted = np.asarray(fit_to_square(image, 192), dtype=np.int16)
            padded = pad_to_square(image).resize((192, 192), Image.Resampling.BILINEAR)
            offsets = np.abs(fitted - np.asarray(padded, dtype=np.int16))
            assert fitted.shape == (192, 192, 3)
            assert offsets.mean() < 2.0
            assert np.percentile(offsets, 90) <= 3


def test_fit_to_square_centres_the_scaled_photo_on_white() -> None:
    tall = Image.new("RGB", (300, 600), (10, 20, 200))
    square = np.asarray(fit_to_square(tall, 100))
    assert square.shape == (100, 100, 3)
    np.testing.assert_array_equal(square[:, 25:75], np.broadcast_to([10, 20, 200], (100, 50, 3)))
    assert (square[:, :25] == 255).all()
    assert (square[:, 75:] == 255).all()
    same = Image.new("RGB", (64, 64), (1, 2, 3))
    np.testing.assert_array_equal(
        np.asarray(fit_to_square(same, 32)), np.full((32, 32, 3), [1, 2, 3])
    )
    strip = Image.new("RGB", (5000, 600), (0, 0, 0))  # shrunk by a whole factor first
    assert fit_to_square(strip, 192).size == (192, 192)


def test_thumbnail_averages_blocks_to_at_most_96_pixels_a_side() -> None:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (540, 360, 3), dtype=np.uint8)
    thumb = thumbnail(Image.fromarray(pixels))
    assert thumb.size == (60, 90)  # 540 / 6 = 90: blocks of 6 x 6
    blocks = pixels.reshape(90, 6, 60, 6, 3).mean(axis=(1, 3))
    assert np.abs(np.asarray(thumb, dtype=np.float64) - blocks).max() <= 0.5 + 1e-9
    small = Image.fromarray(pixels[:80, :50])
    assert thumbnail(small).size == (50, 80)
    assert thumbnail(Image.fromarray(pixels).convert("L")).mode == "RGB"


def test_foreground_mask_takes_the_largest_channel_offset() -> None:
    rng = np.random.default_rng(3)
    rgb = np.full((40, 30, 3), 250, dtype=np.uint8)  # a light background
    rgb[10:30, 8:22] = rng.integers(0, 256, (20, 14, 3), dtype=np.uint8)
    rgb[5, 5] = (250, 250, 229)  # only blue stands out (by 21 > 18)
    rgb[6, 6] = (250, 250, 233)  # by 17: background
    mask = foreground_mask(rgb)
    np.testing.assert_array_equal(mask, _float_mask(rgb))
    assert mask[5, 5]
    assert not mask[6, 6]


def _float_mask(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """The foreground mask as first written: in float, against the border's median."""
    background = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)
    mask: npt.NDArray[np.bool_] = np.abs(rgb.astype(np.int16) - background).max(axis=-1) > 18
    return mask if mask.mean() >= 0.02 else np.ones(mask.shape, dtype=bool)


def test_foreground_mask_is_exact_when_the_background_median_ends_in_a_half() -> None:
    """Border medians that end in .5 (borders have an even number of pixels) and offsets
    around 18 levels: the integer arithmetic in half levels keeps every comparison exact."""
    rng = np.random.default_rng(11)
    halves = 0
    for _ in range(200):
        height, width = rng.integers(4, 40, size=2)
        base = rng.integers(0, 256)
        rgb = np.clip(base + rng.integers(-40, 41, (height, width, 3)), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(foreground_mask(rgb), _float_mask(rgb))
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        halves += int((np.median(border, axis=0) % 1 == 0.5).any())
    assert halves > 20  # the border's median ended in .5 that often


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


def test_encoder_versions_name_the_preprocessing() -> None:
    """A catalog encoded with another preprocessing is encoded again (the ledger compares
    versions), on either runtime, for fashion-lite and the image-only baselines."""
    assert f"prep{PREPROCESSING_VERSION}" == PREPROCESSING_TAG
    fashion_lite = FashionLiteEncoder(DEFAULT_HEADS, runtime="torch").version
    assert fashion_lite.split("+") == [fashion_lite.split("+")[0], PREPROCESSING_TAG]
    baseline = EffNetImageEncoder("effnet-lite0", VARIANTS["effnet-lite0"], runtime="torch")
    assert baseline.version == PREPROCESSING_TAG
