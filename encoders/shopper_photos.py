"""Shopper-photo transforms: a catalog packshot made to look like a shopper's phone photo of
the garment (on a bed, a wooden floor, a patterned or coloured surface, tilted, seen at an
angle, too close or too far, cut by the frame, in warm or cold light, a little blurred, noisy
and JPEG-compressed).

The garment is cut out of its packshot (packshots are shot on a near-white, even backdrop:
the foreground is every pixel far enough from the border's colour, cleaned by a little
morphology and with its enclosed holes filled), moved through the geometric changes and
composited over a procedurally generated background with a soft shadow; the light, blur,
noise and compression are applied to the whole photo. Backgrounds are drawn from seeded
numpy noise and sinusoids only: no image is downloaded or shipped.

One chain of changes is first drawn from a ``PhotoRanges`` with a seeded ``random.Random``
(``PhotoChain.draw``), then applied (``PhotoChain.apply``): the same seed gives the same
photo, byte for byte, on every run.

``EVAL_RANGES`` is the fixed set behind ``fashion-search eval``'s "photo-style image-image
type P@10" (README, model card). Training augmentations that imitate shoppers' photos reuse
this machinery with their own ``PhotoRanges``, which must differ from ``EVAL_RANGES`` so that
the metric measures robustness to changes the model was not fitted to.

Only PIL and numpy: the runtime install (no torch) imports this module.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

FloatImage = npt.NDArray[np.float64]
"""An H x W x 3 array of 0-255 RGB values (floats while a photo is being composed)."""

# -- the cut-out ------------------------------------------------------------------------------

FOREGROUND_THRESHOLD = 14
"""A pixel is garment when one of its channels differs from the backdrop's fitted colour by
more than this (0-255): above JPEG noise."""
FRAME_EDGE = 2
"""Pixels along the image's edge left out (some packshots have a lighter outermost line)."""
BACKDROP_BAND = 6
"""Width (pixels) of the band along the border the backdrop's colour is fitted to."""
EDGE_THRESHOLD = 8
"""A pixel is garment when the brightness of its two neighbours (left and right, or above and
below) differs by more than this (0-255):
the outline and seams of a white garment on a white backdrop, which the colour distance
misses (the backdrop itself is smooth)."""
CLOSING_STEPS = (3, 8)
"""Morphological closing (3x3 dilations then as many erosions): bridges gaps in an outline so
that the hole filling can close it. The wider one is tried when the first leaves a mask
thinner than THIN_SHARE (a white garment's faint outline with gaps: only the outline and
print were kept)."""
THIN_SHARE = 0.08
"""Share of the image below which a mask is taken for an unclosed outline (packshot garments
fill a quarter to a half of the frame; small accessories stay small with either closing)."""
OPENING_STEPS = 1
"""Morphological opening (3x3 erosions then dilations): removes specks of backdrop noise."""
MIN_MASKED_SIDE = 4 * (FRAME_EDGE + BACKDROP_BAND)
"""Shortest side (pixels) of an image whose backdrop can be fitted around a garment."""
SHADOW_DISTANCE = 45
"""A cast shadow differs from the backdrop by less than this (0-255) in every channel..."""
SHADOW_MAX_SPREAD = 14
"""...and is as grey as the backdrop: its channels differ by less than this (0-255)."""
SHADOW_STEPS = 5
"""Width (pixels) of the band next to the backdrop where shadow-like pixels are backdrop."""
FRINGE_STEPS = 2
"""Final 3x3 erosions: the edge detection and closing reach a pixel or two into the backdrop,
which would show as a light fringe on the new background."""
EDGE_SOFTNESS = 0.8
"""Gaussian radius (pixels) of the cut-out's edge: no staircase where the garment meets the
new background."""
MIN_FOREGROUND_SHARE = 0.02
MAX_FOREGROUND_SHARE = 0.97
"""A mask outside these shares of the image is not a garment on a backdrop (a blank image, a
full-bleed photo): the whole image is then used as the foreground."""

BoolImage = npt.NDArray[np.bool_]


def foreground_mask(image: Image.Image) -> Image.Image:
    """An "L" mask (255: garment) of a packshot on a near-uniform backdrop: pixels far from
    the backdrop's colour or on a brightness edge, closed, holes filled, opened. Images too
    small to fit the backdrop to are all foreground."""
    if min(image.size) < MIN_MASKED_SIDE:
        return Image.new("L", image.size, 255)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    distance = np.abs(rgb - backdrop_model(rgb)).max(axis=2)
    grey = rgb.mean(axis=2)
    edges = np.zeros(grey.shape, dtype=bool)
    edges[:, 1:-1] |= np.abs(grey[:, 2:] - grey[:, :-2]) > EDGE_THRESHOLD
    edges[1:-1, :] |= np.abs(grey[2:, :] - grey[:-2, :]) > EDGE_THRESHOLD
    mask = (distance > FOREGROUND_THRESHOLD) | edges
    mask[:FRAME_EDGE, :] = mask[-FRAME_EDGE:, :] = False
    mask[:, :FRAME_EDGE] = mask[:, -FRAME_EDGE:] = False
    for steps in CLOSING_STEPS:
        garment = _cleaned(mask, steps, rgb, distance)
        if float(garment.mean()) >= THIN_SHARE:
            break
    if not MIN_FOREGROUND_SHARE <= float(garment.mean()) <= MAX_FOREGROUND_SHARE:
        return Image.new("L", image.size, 255)
    return Image.fromarray(np.where(garment, 255, 0).astype(np.uint8))


def _cleaned(mask: BoolImage, closing: int, rgb: FloatImage, distance: FloatImage) -> BoolImage:
    """The raw mask closed by ``closing`` steps, its holes filled, without the cast shadow,
    opened and pulled in from its fringe."""
    mask = _fill_holes(_erode(_dilate(mask, closing), closing))
    mask = _without_cast_shadow(mask, rgb, distance)
    return _erode(_dilate(_erode(mask, OPENING_STEPS), OPENING_STEPS), FRINGE_STEPS)


def backdrop_model(rgb: FloatImage) -> FloatImage:
    """The backdrop's colour at every pixel: a quadratic surface per channel fitted to a band
    along the border (packshot backdrops are lit unevenly: a soft vignette or gradient)."""
    height, width = rgb.shape[:2]
    y, x = np.mgrid[0:height, 0:width]
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    terms = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], axis=-1)
    inner = FRAME_EDGE + BACKDROP_BAND
    band = np.ones((height, width), dtype=bool)
    band[inner:-inner, inner:-inner] = False
    band[:FRAME_EDGE, :] = band[-FRAME_EDGE:, :] = False
    band[:, :FRAME_EDGE] = band[:, -FRAME_EDGE:] = False
    coefficients, *_ = np.linalg.lstsq(terms[band], rgb[band], rcond=None)
    model: FloatImage = terms @ coefficients
    return model


def _without_cast_shadow(mask: BoolImage, rgb: FloatImage, distance: FloatImage) -> BoolImage:
    """The mask without the packshot's own soft shadow around the garment (backdrop-coloured
    pixels a little darker than the backdrop, next to it): on a new background it would show
    as a pale halo. Only a band of SHADOW_STEPS pixels is taken, so pale grey garments keep
    all but their rim."""
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    shadowy = (distance < SHADOW_DISTANCE) & (spread < SHADOW_MAX_SPREAD)
    backdrop = ~mask
    for _ in range(SHADOW_STEPS):
        backdrop = backdrop | (_dilate(backdrop, 1) & shadowy)
    return ~backdrop


def _dilate(mask: BoolImage, steps: int) -> BoolImage:
    """``steps`` 3x3 dilations (numpy shifts: PIL's rank filters are several times slower)."""
    for _ in range(steps):
        grown = mask.copy()
        grown[1:, :] |= mask[:-1, :]
        grown[:-1, :] |= mask[1:, :]
        wide = grown.copy()
        wide[:, 1:] |= grown[:, :-1]
        wide[:, :-1] |= grown[:, 1:]
        mask = wide
    return mask


def _erode(mask: BoolImage, steps: int) -> BoolImage:
    return ~_dilate(~mask, steps)


def _fill_holes(mask: BoolImage) -> BoolImage:
    """The mask with every backdrop region that does not touch the border made garment (the
    inside of a white garment's outline, a white print or collar): the backdrop is grown from
    the border through backdrop pixels (8-connected) until it stops. Each round spreads along
    whole rows and columns of backdrop, then one step diagonally, so a few rounds suffice."""
    backdrop = ~mask
    reached = np.zeros_like(mask)
    reached[0, :], reached[-1, :] = backdrop[0, :], backdrop[-1, :]
    reached[:, 0], reached[:, -1] = backdrop[:, 0], backdrop[:, -1]
    while True:
        grown = _along_runs(reached, backdrop)
        grown = _along_runs(grown.T, backdrop.T).T
        grown = _dilate(grown, 1) & backdrop
        if np.array_equal(grown, reached):
            return ~reached
        reached = grown


def _along_runs(reached: BoolImage, backdrop: BoolImage) -> BoolImage:
    """``reached`` spread along each row's runs of backdrop: a run with a reached pixel is
    reached whole."""
    starts = backdrop.copy()
    starts[:, 1:] &= ~backdrop[:, :-1]
    run = np.where(backdrop, np.cumsum(starts.ravel()).reshape(backdrop.shape), 0)
    touched = np.zeros(int(run.max()) + 1, dtype=bool)
    touched[run[reached]] = True
    touched[0] = False
    spread: BoolImage = touched[run]
    return spread


# -- the ranges ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A closed interval a parameter is drawn from, uniformly."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"span [{self.low}, {self.high}] is empty")

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def overlaps(self, other: Span) -> bool:
        return self.low <= other.high and other.low <= self.high


BACKGROUNDS = ("wood", "sheet", "gradient", "wall", "check", "carpet")
"""The procedural backgrounds: wooden planks, a bed sheet with folds, a two-colour gradient, a
painted wall with blotches, a checked textile, a speckled carpet."""
PACKSHOT = "packshot"
"""One more background, not among BACKGROUNDS: a flat near-white backdrop like the
packshots' own (to see what the other changes cost without a new background)."""
PACKSHOT_COLOUR = (238.0, 237.0, 234.0)


@dataclass(frozen=True)
class PhotoRanges:
    """Where each change of a shopper-photo chain is drawn from. Sizes in pixels are for the
    catalog's 240x360 photos and scale with the image."""

    rotation_degrees: Span
    """Tilt of the garment, either direction."""
    perspective: Span
    """Each corner of the garment moved inwards by this share of its width/height (seen at an
    angle)."""
    scale: Span
    """The garment fills this share of the frame (1.0: touches two opposite sides)."""
    cut_probability: float
    """How often the frame cuts the garment on one side."""
    cut: Span
    """The share of the garment left outside the frame when it is cut."""
    warm_probability: float
    """How often the light is warm (else cold)."""
    temperature: Span
    """Colour temperature shift: red gain 1 + t and blue gain 1 - t when warm, the reverse
    when cold."""
    lighting: Span
    """Uneven light: brightness falls by up to this share away from a random light spot."""
    shadow_opacity: Span
    """Darkness of the garment's soft shadow on the background."""
    blur_radius: Span
    """Gaussian blur radius (pixels at 360 pixels high): focus and shake."""
    noise_sigma: Span
    """Sensor noise, standard deviation in 0-255 levels."""
    jpeg_quality: tuple[int, int]
    """The phone's JPEG quality, inclusive."""
    backgrounds: tuple[str, ...] = BACKGROUNDS

    def __post_init__(self) -> None:
        known = (*BACKGROUNDS, PACKSHOT)
        if set(self.backgrounds) - set(known) or not self.backgrounds:
            raise ValueError(f"backgrounds must be among {', '.join(known)}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 95:
            raise ValueError("jpeg quality must be an increasing pair within 1-95")


EVAL_RANGES = PhotoRanges(
    rotation_degrees=Span(4.0, 15.0),
    perspective=Span(0.03, 0.10),
    scale=Span(0.6, 1.0),
    cut_probability=0.5,
    cut=Span(0.08, 0.22),
    warm_probability=0.7,
    temperature=Span(0.05, 0.15),
    lighting=Span(0.10, 0.30),
    shadow_opacity=Span(0.15, 0.35),
    blur_radius=Span(0.4, 1.3),
    noise_sigma=Span(2.0, 6.0),
    jpeg_quality=(55, 80),
)
"""The fixed set of the evaluation's photo-style queries (``fashion-search eval``). Do not
train with these ranges: training's shopper-photo augmentations must draw from other ones."""

REFERENCE_HEIGHT = 360
"""Image height the pixel sizes of the ranges refer to (the catalog photos)."""
SHADOW_OFFSET = Span(2.0, 8.0)
SHADOW_BLUR = Span(3.0, 7.0)


# -- one chain ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoChain:
    """The drawn values of one shopper photo: apply it to a packshot with ``apply``."""

    background: str
    texture_seed: int
    rotation_degrees: float
    perspective_corners: tuple[float, ...]
    """Inward shift of the four corners (x, y each; share of the garment's size)."""
    scale: float
    cut_side: str | None
    """"left", "right", "top", "bottom" or None (not cut)."""
    cut: float
    placement: tuple[float, float]
    """Where the garment sits in the room the frame leaves it, 0-1 horizontally, vertically."""
    temperature: float
    """Signed: warm above 0, cold below."""
    lighting: float
    light_spot: tuple[float, float]
    shadow_opacity: float
    shadow_offset: tuple[float, float]
    shadow_blur: float
    blur_radius: float
    noise_sigma: float
    jpeg_quality: int

    @classmethod
    def draw(cls, rng: random.Random, ranges: PhotoRanges = EVAL_RANGES) -> PhotoChain:
        cut = rng.random() < ranges.cut_probability
        warm = rng.random() < ranges.warm_probability
        return cls(
            background=rng.choice(ranges.backgrounds),
            texture_seed=rng.getrandbits(63),
            rotation_degrees=ranges.rotation_degrees.draw(rng) * rng.choice((-1, 1)),
            perspective_corners=tuple(ranges.perspective.draw(rng) for _ in range(8)),
            scale=ranges.scale.draw(rng),
            cut_side=rng.choice(("left", "right", "top", "bottom")) if cut else None,
            cut=ranges.cut.draw(rng) if cut else 0.0,
            placement=(rng.random(), rng.random()),
            temperature=ranges.temperature.draw(rng) * (1 if warm else -1),
            lighting=ranges.lighting.draw(rng),
            light_spot=(rng.random(), rng.random()),
            shadow_opacity=ranges.shadow_opacity.draw(rng),
            shadow_offset=(SHADOW_OFFSET.draw(rng), SHADOW_OFFSET.draw(rng)),
            shadow_blur=SHADOW_BLUR.draw(rng),
            blur_radius=ranges.blur_radius.draw(rng),
            noise_sigma=ranges.noise_sigma.draw(rng),
            jpeg_quality=rng.randint(*ranges.jpeg_quality),
        )

    def apply(self, image: Image.Image) -> bytes:
        """JPEG bytes of the shopper photo of ``image``, the same size as ``image``."""
        return encode_jpeg(self.render(image), self.jpeg_quality)

    def render(self, image: Image.Image) -> Image.Image:
        """The shopper photo before its JPEG encoding (an RGB image of ``image``'s size)."""
        size = image.size
        pixel_scale = size[1] / REFERENCE_HEIGHT
        rng = np.random.default_rng(self.texture_seed)
        garment = self._framed(self._garment(image.convert("RGB")), size)
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        layer.paste(garment, self._position(garment.size, size))
        alpha = np.asarray(layer.getchannel("A"), dtype=np.float64)[..., None] / 255
        frame = make_background(self.background, size, rng)
        frame *= 1 - self.shadow_opacity * self._shadow(layer.getchannel("A"), pixel_scale)
        colours = np.asarray(layer.convert("RGB"), dtype=np.float64)
        photo = frame * (1 - alpha) + colours * alpha
        photo = relight(photo, self.temperature, self.lighting, self.light_spot)
        out = to_image(photo).filter(ImageFilter.GaussianBlur(self.blur_radius * pixel_scale))
        noise = rng.normal(0.0, self.noise_sigma, photo.shape)
        return to_image(np.asarray(out, dtype=np.float64) + noise)

    def _garment(self, image: Image.Image) -> Image.Image:
        """The cut-out garment (RGBA; premultiplied while it is resampled, so the old backdrop
        does not bleed into its edge), seen at an angle and tilted."""
        cutout = image.copy()
        cutout.putalpha(foreground_mask(image).filter(ImageFilter.GaussianBlur(EDGE_SOFTNESS)))
        box = cutout.getchannel("A").getbbox() or (0, 0, *image.size)
        garment = cutout.crop(box).convert("RGBa")
        width, height = garment.size
        corners = [
            (0.0, 0.0),
            (float(width), 0.0),
            (float(width), float(height)),
            (0.0, float(height)),
        ]
        inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        shifts = self.perspective_corners
        moved = [
            (x + sx * shifts[2 * i] * width, y + sy * shifts[2 * i + 1] * height)
            for i, ((x, y), (sx, sy)) in enumerate(zip(corners, inward, strict=True))
        ]
        garment = garment.transform(
            garment.size,
            Image.Transform.PERSPECTIVE,
            perspective_coefficients(moved, corners),
            Image.Resampling.BICUBIC,
        )
        garment = garment.rotate(self.rotation_degrees, Image.Resampling.BICUBIC, expand=True)
        return garment.convert("RGBA")

    def _framed(self, garment: Image.Image, frame: tuple[int, int]) -> Image.Image:
        """The garment resized to fill ``scale`` of the frame (its limiting side)."""
        fit = self.scale * min(frame[0] / garment.width, frame[1] / garment.height)
        size = (max(1, round(garment.width * fit)), max(1, round(garment.height * fit)))
        return garment.resize(size, Image.Resampling.LANCZOS)

    def _position(self, garment: tuple[int, int], frame: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of the garment in the frame: anywhere in the room the frame
        leaves, or pushed ``cut`` of its size past one side."""
        x = round((frame[0] - garment[0]) * self.placement[0])
        y = round((frame[1] - garment[1]) * self.placement[1])
        if self.cut_side == "left":
            x = -round(self.cut * garment[0])
        elif self.cut_side == "right":
            x = frame[0] - garment[0] + round(self.cut * garment[0])
        elif self.cut_side == "top":
            y = -round(self.cut * garment[1])
        elif self.cut_side == "bottom":
            y = frame[1] - garment[1] + round(self.cut * garment[1])
        return x, y

    def _shadow(self, alpha: Image.Image, pixel_scale: float) -> FloatImage:
        """The garment's soft shadow (0-1, H x W x 1): its mask shifted and blurred."""
        dx, dy = (round(d * pixel_scale) for d in self.shadow_offset)
        shifted = Image.new("L", alpha.size, 0)
        shifted.paste(alpha, (dx, dy))
        blurred = shifted.filter(ImageFilter.GaussianBlur(self.shadow_blur * pixel_scale))
        return np.asarray(blurred, dtype=np.float64)[..., None] / 255


def shopper_photo(
    image: Image.Image, rng: random.Random, ranges: PhotoRanges = EVAL_RANGES
) -> bytes:
    """JPEG bytes of a shopper photo of the packshot ``image`` (deterministic for a seeded
    rng), the same size as ``image``."""
    return PhotoChain.draw(rng, ranges).apply(image)


# -- helpers ------------------------------------------------------------------------------------


def perspective_coefficients(
    output: list[tuple[float, float]], source: list[tuple[float, float]]
) -> tuple[float, ...]:
    """PIL's eight PERSPECTIVE coefficients mapping each ``output`` corner to its ``source``
    corner (PIL asks, for every output pixel, where in the source to read)."""
    rows: list[list[float]] = []
    for (x, y), (u, v) in zip(output, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    targets = np.array([c for point in source for c in point], dtype=np.float64)
    solved = np.linalg.solve(np.array(rows, dtype=np.float64), targets)
    return tuple(float(c) for c in solved)


def relight(
    photo: FloatImage, temperature: float, falloff: float, spot: tuple[float, float]
) -> FloatImage:
    """The photo under coloured, uneven light: red and blue gains of the colour temperature,
    and brightness falling by up to ``falloff`` away from ``spot`` (0-1 of width, height)."""
    height, width = photo.shape[:2]
    gains = np.array([1 + temperature, 1.0, 1 - temperature])
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot(x / width - spot[0], y / height - spot[1]) / np.sqrt(2)
    light = 1 - falloff * distance**2 / max(float(distance.max()) ** 2, 1e-9)
    lit: FloatImage = photo * gains * light[..., None]
    return lit


def to_image(pixels: FloatImage) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# -- backgrounds --------------------------------------------------------------------------------

Generator = np.random.Generator

WOOD_COLOURS = ((150, 105, 65), (175, 128, 80), (115, 78, 48), (195, 155, 110), (95, 62, 38))
SHEET_COLOURS = (
    (238, 236, 230),
    (214, 222, 235),
    (236, 214, 218),
    (205, 215, 200),
    (120, 130, 150),
)
"""Bed linen: white, light blue, pink, sage, slate."""


def make_background(kind: str, size: tuple[int, int], rng: Generator) -> FloatImage:
    """A procedural background of ``kind`` (one of BACKGROUNDS), H x W x 3, 0-255."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return _BACKGROUND_MAKERS[kind](x, y, rng)


def _colour(rng: Generator, low: int = 40, high: int = 235) -> FloatImage:
    return rng.uniform(low, high, size=3)


def _blotches(shape: tuple[int, ...], rng: Generator, cells: int, amplitude: float) -> FloatImage:
    """Smooth low-frequency noise (H x W x 1) around 0: a coarse random grid upscaled."""
    height, width = shape[:2]
    grid = rng.uniform(0, 255, size=(cells, max(2, cells * width // max(height, 1))))
    smooth = Image.fromarray(grid.astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    return (np.asarray(smooth, dtype=np.float64)[..., None] / 255 - 0.5) * 2 * amplitude


def _rotated(x: FloatImage, y: FloatImage, angle: float) -> tuple[FloatImage, FloatImage]:
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def _wood(x: FloatImage, y: FloatImage, rng: Generator) -> FloatImage:
    """Planks with wavy grain and dark seams, running horizontally or vertically."""
    along, across = (x, y) if rng.random() < 0.5 else (y, x)
    base = np.array(WOOD_COLOURS[rng.integers(len(WOOD_COLOURS))], dtype=np.float64)
    plank = rng.uniform(40, 90)
    offset = across + rng.uniform(0, plank)
    index = np.floor(offset / plank).astype(np.int64)
    tone = rng.uniform(0.82, 1.12, size=int(index.max()) + 2)[index]
    warp = rng.uniform(2, 6) * np.sin(along / rng.uniform(30, 80) + rng.uniform(0, 6.3))
    warp += 3 * np.sin(along / rng.uniform(9, 20) + index)
    grain = 0.5 + 0.5 * np.sin((offset + warp) * 2 * np.pi / rng.uniform(4, 9))
    seam = np.where(np.mod(offset, plank) < 2, 0.6, 1.0)
    shade = (0.84 + 0.16 * grain) * tone * seam
    return base * shade[..., None] + rng.normal(0, 4, (*x.shape, 3))


def _sheet(x: FloatImage, y: FloatImage, rng: Generator) -> FloatImage:
    """Bed linen: one colour, soft folds (a few long sinusoids) and a fine weave."""
    base = np.array(SHEET_COLOURS[rng.integers(len(SHEET_COLOURS))], dtype=np.float64)
    folds = np.zeros_like(x)
    for _ in range(4):
        u, _v = _rotated(x, y, rng.uniform(0, np.pi))
        folds += rng.uniform(0.3, 1.0) * np.sin(
            u * 2 * np.pi / rng.uniform(50, 200) + rng.uniform(0, 6.3)
        )
    folds /= max(float(np.abs(folds).max()), 1e-9)
    shade = 1 + rng.uniform(0.08, 0.18) * folds
    return base * shade[..., None] + rng.normal(0, 3, (*x.shape, 3))


def _gradient(x: FloatImage, y: FloatImage, rng: Generator) -> FloatImage:
    """A two-colour linear gradient at any angle (a wall, a door, a studio sweep at home)."""
    u, _v = _rotated(x, y, rng.uniform(0, 2 * np.pi))
    t = ((u - u.min()) / max(float(np.ptp(u)), 1e-9))[..., None]
    blend: FloatImage = _colour(rng) * (1 - t) + _colour(rng) * t
    return blend + rng.normal(0, 2, (*x.shape, 3))


def _wall(x: FloatImage, y: FloatImage, rng: Generator) -> FloatImage:
    """A painted wall or floor: one colour with large soft blotches."""
    return (
        _colour(rng)
        + _blotches(x.shape, rng, cells=5, amplitude=18)
        + rng.normal(0, 3, (*x.shape, 3))
    )


def _check(x: FloatImage, y: FloatImage, rng: Generator) -> FloatImage:
    """A checked textile (gingham, tartan): two sets of stripes crossing."""
    u, v = _rotated(x, y, rng.uniform(-0.3, 0.3))
    period = rng.uniform(12, 40)
    duty = rng.uniform(0.3, 0.6)
    across = (np.mod(u, period) < duty * period).astype(np.float64)
    down = (np.mod(v, period) < duty * period).astype(np.float64)
    ground, stripe = _colour(rng, 150, 245), _colour(rng, 30, 200)
    weight = (0.5 * across + 0.5 * down)[..., None]
    return ground * (1 - weight) + stripe * weight + rng.normal(0, 4, (*x.shape, 3))


def _carpet(x: FloatImage, y: FloatImage, rng: Generator) -> FloatImage:
    """A speckled carpet or terrazzo: coarse colour noise over a base colour."""
    speckle = rng.normal(0, rng.uniform(12, 28), (*x.shape, 3))
    return _colour(rng) + _blotches(x.shape, rng, cells=9, amplitude=12) + speckle


_BACKGROUND_MAKERS: dict[str, Callable[[FloatImage, FloatImage, Generator], FloatImage]] = {
    "wood": _wood,
    "sheet": _sheet,
    "gradient": _gradient,
    "wall": _wall,
    "check": _check,
    "carpet": _carpet,
    PACKSHOT: lambda x, y, rng: np.broadcast_to(np.array(PACKSHOT_COLOUR), (*x.shape, 3)).copy(),
}
