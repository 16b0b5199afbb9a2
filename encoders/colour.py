"""The ``ColourAnalyser`` adapter: each photo's garment colour histogram
(``encoders.backbones.colour_histogram``: the HSV histogram of the pixels that differ from
the backdrop, in the layout of ``domain.colour``), computed from the image alone, so every
encoder plugin (fashion-lite, open_clip, image-only) gets the same histograms."""

from __future__ import annotations

from collections.abc import Sequence

from domain.colour import HISTOGRAM_BINS, histogram_bytes
from domain.errors import InvalidImage
from encoders.backbones import COLOUR_DIM, colour_histogram
from encoders.images import decode_image

DRAFT_SIDE = 192
"""JPEGs are decoded at the smallest scale whose sides stay at least this long: the
histogram reads a thumbnail of at most 96 pixels a side, so full-size decoding would only
cost time."""

if COLOUR_DIM != HISTOGRAM_BINS:  # pragma: no cover - a change of one layout, not the other
    raise ImportError(f"colour histogram of {COLOUR_DIM} bins, the domain reads {HISTOGRAM_BINS}")


class ColourHistograms:
    """Garment colour histograms of product photos (thread-safe: no shared state)."""

    def colour_histograms(self, images: Sequence[bytes]) -> list[bytes | None]:
        return [_histogram(data) for data in images]


def _histogram(data: bytes) -> bytes | None:
    try:
        image = decode_image(data, draft_side=DRAFT_SIDE)
    except InvalidImage:
        return None
    return histogram_bytes(colour_histogram(image))
