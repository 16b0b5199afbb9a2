"""Training views that imitate shoppers' own photos of a catalog garment.

Catalog packshots show one garment, upright, centred, on white, in neutral light. A shopper's
phone photo shows it on a bed, a table or a busy background, tilted, seen at an angle, smaller
or cut by the frame, in warm or cold light, a little blurred and JPEG-compressed. A view made
here does all of that to a packshot: the non-background pixels (the encoder's own
``foreground_mask``) are composited onto a generated background (flat colour, gradient,
stripes, checks or noise: no photos are downloaded), then rotated, warped in perspective,
rescaled, cropped so that the garment is sometimes cut, tinted, blurred and re-encoded.

Why not ``encoders.shopper_photos`` (the evaluation's photo-style queries) with training
ranges: its careful cut-out (backdrop fit, morphology, hole filling, cast shadow, float64
compositing) costs about 6x this renderer per image, and training draws a view for each of
~15,000 images before the backbone runs on it. Its ``Span`` is reused, and every range below
is disjoint from ``EVAL_RANGES``' range of the same change (tested), so the photo-style metric
measures robustness to changes the model was not fitted to: stronger tilts, perspective,
cuts, colour temperature, blur and compression, smaller garments, other backgrounds.
"""

from __future__ import annotations

import io
import random

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from encoders.backbones import foreground_mask
from encoders.shopper_photos import Span

SCALE = Span(0.40, 0.58)  # the garment's longer side as a share of the frame's
ROTATION_DEGREES = Span(15.5, 24.0)  # tilt, either direction
PERSPECTIVE = Span(0.105, 0.16)  # each corner moves by this share of the side, either way
CUT_PROBABILITY = 0.35  # the frame cuts the garment this often
CUT = Span(0.23, 0.35)  # share of the garment cut off on one side
FLIP_PROBABILITY = 0.5
WARM_PROBABILITY = 0.5
TEMPERATURE = Span(0.16, 0.24)  # red gain 1 + t, blue 1 - t when warm; the reverse when cold
BRIGHTNESS = Span(0.75, 1.15)  # exposure of the whole photo
BLUR_PROBABILITY = 0.5
BLUR_RADIUS = Span(1.35, 2.0)  # pixels at the packshot's size
JPEG_QUALITY = (35, 54)
MASK_FEATHER = 0.7  # Gaussian radius softening the garment's outline (half size)
BACKGROUND_KINDS = ("flat", "gradient", "stripes", "checks", "noise")
BACKGROUND_SHRINK = 3  # backgrounds are drawn at 1/this of the size, then enlarged

Pixels = npt.NDArray[np.uint8]


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    """A household colour: mostly muted (sheets, tables, walls), sometimes saturated."""
    base = rng.randint(40, 235)
    spread = rng.choice((15, 30, 90))
    return tuple(  # type: ignore[return-value]
        max(0, min(255, base + rng.randint(-spread, spread))) for _ in range(3)
    )


def background(width: int, height: int, rng: random.Random) -> Image.Image:
    """A generated background of one of BACKGROUND_KINDS (deterministic for a seeded rng),
    drawn at 1/BACKGROUND_SHRINK of the size and enlarged (a photo's background is soft)."""
    full = (width, height)
    width, height = max(1, width // BACKGROUND_SHRINK), max(1, height // BACKGROUND_SHRINK)
    kind = rng.choice(BACKGROUND_KINDS)
    first, second = np.array(_random_colour(rng)), np.array(_random_colour(rng))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "flat":
        weight = np.zeros((height, width), dtype=np.float32)
    elif kind == "gradient":
        angle = rng.uniform(0, np.pi)
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        weight = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    elif kind == "stripes":
        period = rng.uniform(6, 40) / BACKGROUND_SHRINK
        angle = rng.uniform(0, np.pi)
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        weight = ((ramp // period) % 2).astype(np.float32)
    elif kind == "checks":
        period = rng.uniform(8, 40) / BACKGROUND_SHRINK
        weight = (((xs // period) + (ys // period)) % 2).astype(np.float32)
    else:
        noise = np.random.default_rng(rng.getrandbits(32)).random((height // 4 + 1, width // 4 + 1))
        small = Image.fromarray((noise * 255).astype(np.uint8))
        enlarged = small.resize((width, height), Image.Resampling.BICUBIC)
        weight = (np.asarray(enlarged) / 255.0).astype(np.float32)
    pixels = (
        first[None, None, :] * (1 - weight[..., None]) + second[None, None, :] * weight[..., None]
    )
    grain = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(0, 8), pixels.shape)
    small_background = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))
    return small_background.resize(full, Image.Resampling.BILINEAR)


def _garment_cutout(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(RGB, soft mask) of the non-background pixels, cropped to their bounding box."""
    rgb = image.convert("RGB")
    half = rgb.reduce(2)
    mask = Image.fromarray(foreground_mask(np.asarray(half, dtype=np.uint8)).astype(np.uint8) * 255)
    mask = mask.filter(ImageFilter.GaussianBlur(MASK_FEATHER)).resize(
        rgb.size, Image.Resampling.BILINEAR
    )
    box = mask.getbbox() or (0, 0, rgb.width, rgb.height)
    return rgb.crop(box), mask.crop(box)


def _signed(span: Span, rng: random.Random) -> float:
    return span.draw(rng) * rng.choice((-1, 1))


def _perspective_coefficients(width: int, height: int, rng: random.Random) -> list[float]:
    """Coefficients of PIL's perspective transform moving each corner by a random shift."""
    source = [(0.0, 0.0), (width, 0.0), (width, height), (0.0, height)]
    target = [
        (x + _signed(PERSPECTIVE, rng) * width, y + _signed(PERSPECTIVE, rng) * height)
        for x, y in source
    ]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    solved = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return [float(c) for c in solved]


def _cut_box(
    width: int, height: int, garment: tuple[int, int, int, int], rng: random.Random
) -> tuple[int, int, int, int]:
    """A crop of the canvas that cuts CUT of the garment off one side."""
    left, top, right, bottom = garment
    share = CUT.draw(rng)
    side = rng.choice(("left", "top", "right", "bottom"))
    box = [0, 0, width, height]
    if side == "left":
        box[0] = left + round((right - left) * share)
    elif side == "right":
        box[2] = right - round((right - left) * share)
    elif side == "top":
        box[1] = top + round((bottom - top) * share)
    else:
        box[3] = bottom - round((bottom - top) * share)
    return (box[0], box[1], box[2], box[3])


def _light(image: Image.Image, rng: random.Random) -> Image.Image:
    """Colour temperature (red against blue gain) and exposure of the whole photo."""
    warmth = TEMPERATURE.draw(rng) * (1 if rng.random() < WARM_PROBABILITY else -1)
    gain = np.array([1 + warmth, 1.0, 1 - warmth], dtype=np.float32) * BRIGHTNESS.draw(rng)
    pixels = np.asarray(image, dtype=np.float32) * gain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def photo_view(image: Image.Image, rng: random.Random) -> bytes:
    """JPEG bytes of a shopper-style photo of the packshot ``image`` (same size; deterministic
    for a seeded ``rng``)."""
    width, height = image.size
    garment, mask = _garment_cutout(image)
    if rng.random() < FLIP_PROBABILITY:
        garment = garment.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = SCALE.draw(rng) * max(width, height) / max(garment.size)
    size = (max(1, round(garment.width * scale)), max(1, round(garment.height * scale)))
    garment = garment.resize(size, Image.Resampling.BILINEAR)
    mask = mask.resize(size, Image.Resampling.BILINEAR)
    angle = _signed(ROTATION_DEGREES, rng)
    garment = garment.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    mask = mask.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    coefficients = _perspective_coefficients(garment.width, garment.height, rng)
    garment = garment.transform(
        garment.size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
    )
    mask = mask.transform(
        mask.size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
    )
    canvas = background(width, height, rng)
    left = rng.randint(min(0, width - garment.width), max(0, width - garment.width))
    top = rng.randint(min(0, height - garment.height), max(0, height - garment.height))
    canvas.paste(garment, (left, top), mask)
    if rng.random() < CUT_PROBABILITY:
        box = (
            max(left, 0),
            max(top, 0),
            min(left + garment.width, width),
            min(top + garment.height, height),
        )
        canvas = canvas.crop(_cut_box(width, height, box, rng))
    canvas = _light(canvas, rng)
    if rng.random() < BLUR_PROBABILITY:
        canvas = canvas.filter(ImageFilter.GaussianBlur(BLUR_RADIUS.draw(rng)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=rng.randint(*JPEG_QUALITY))
    return buffer.getvalue()
