"""The garment's colour, read from its photo, against the colours a query names.

Each product carries a *colour histogram* of its garment's pixels (the ``ColourAnalyser``
port computes it at ingest from the photo, whatever the encoder): ``HISTOGRAM_BINS`` float32
values, the square roots of the shares of the garment's pixels in each bin. The layout:
``GREY_LEVELS`` bins of achromatic pixels (low saturation or dark) by brightness, then
``HUE_SECTORS`` hue sectors x 2 saturation halves x 2 brightness halves. A query's colour
words map to bins (``COLOUR_WORDS``; "dark" and "light" keep one brightness half, "off
white" is cream), and a product's *colour share* is the share of its garment's pixels in
those bins (0..1).

The search re-ranks the top ``ColourRerank.depth`` of the fused ranking by rank position +
``weight`` x colour share, only when the query names a colour and the text confidence is
below ``gate``: where the catalog's words answer the query (names that say the colour), the
words rank it and the histograms of small photos would only add noise; where they do not
(terse names that never say the colour), the photo is the only witness of the colour. The
constants were chosen on training galleries of both catalog styles (``bench.colour_rerank``,
docs/relevance.md).

A query asking for a plain garment ("solid", "plain": ``PLAIN_WORDS``) is re-ranked the same
way, under the same gate: no product's words say it is plain, but some say it is not
("striped", "printed", "patterned": ``PATTERN_WORDS``), and those move down by
``ColourRerank.patterned_weight`` (``bench.attribute_words``, docs/relevance.md).

A query naming a surface ("solid", "stripe", "all over pattern": ``PATTERN_PHRASES``) also
asks the encoder, under the same gate: each phrase's text vector (encoded once per encoder,
a finite vocabulary) against the top's image vectors, a zero-shot reading of the photo that
the query's own vector mixes with the garment type; the closest move up by at most
``ColourRerank.pattern_prompt_weight`` (``bench.zeroshot_levers``, docs/relevance.md, eighth
round).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

GREY_LEVELS = 6
HUE_SECTORS = 12
HISTOGRAM_BINS = GREY_LEVELS + HUE_SECTORS * 2 * 2
"""Values of a colour histogram (see the module docstring for the layout)."""
HISTOGRAM_DTYPE = np.dtype("<f4")
"""How a histogram is stored: HISTOGRAM_BINS little-endian float32 (``Product.colour``)."""

Mask = npt.NDArray[np.float32]
MASKS_KEPT = 4096
"""Distinct query texts whose colour bins are kept."""


def _bins(
    grey: Iterable[int] = (),
    hues: Iterable[int] = (),
    sats: Iterable[int] = (0, 1),
    vals: Iterable[int] = (0, 1),
) -> frozenset[int]:
    """Grey levels and (hue sector, saturation half, brightness half) cells as bin numbers."""
    chroma = {GREY_LEVELS + (h * 2 + s) * 2 + v for h in hues for s in sats for v in vals}
    return frozenset(set(grey) | chroma)


COLOUR_WORDS: dict[str, frozenset[int]] = {
    "black": _bins(grey=(0, 1)),
    "white": _bins(grey=(5,)),
    "grey": _bins(grey=(2, 3, 4)),
    "gray": _bins(grey=(2, 3, 4)),
    "silver": _bins(grey=(3, 4, 5)),
    "charcoal": _bins(grey=(1, 2)),
    "red": _bins(hues=(0, 11), sats=(1,)),
    "maroon": _bins(hues=(0, 11), vals=(0,)),
    "pink": _bins(hues=(10, 11, 0), sats=(0,), vals=(1,)) | _bins(hues=(10, 11), sats=(1,)),
    "magenta": _bins(hues=(10,)),
    "orange": _bins(hues=(1,), sats=(1,)),
    "peach": _bins(hues=(0, 1), sats=(0,), vals=(1,)),
    "yellow": _bins(hues=(2,)),
    "mustard": _bins(hues=(1, 2), sats=(1,)),
    "gold": _bins(hues=(1, 2)),
    "green": _bins(hues=(3, 4, 5)),
    "olive": _bins(hues=(2, 3), vals=(0,)),
    "khaki": _bins(hues=(1, 2, 3), sats=(0,)),
    "turquoise": _bins(hues=(5, 6)),
    "teal": _bins(hues=(5, 6), vals=(0,)),
    "blue": _bins(hues=(7, 8)),
    "navy": _bins(hues=(7, 8), vals=(0,)) | _bins(grey=(0,)),
    "purple": _bins(hues=(9, 10)),
    "lavender": _bins(hues=(8, 9, 10), sats=(0,), vals=(1,)),
    "brown": _bins(hues=(0, 1), vals=(0,)),
    "tan": _bins(hues=(1,), sats=(0,)),
    "beige": _bins(hues=(1, 2), sats=(0,), vals=(1,)) | _bins(grey=(4, 5)),
    "cream": _bins(hues=(1, 2), sats=(0,), vals=(1,)) | _bins(grey=(5,)),
    "skin": _bins(hues=(0, 1), sats=(0,), vals=(1,)),
}
"""The bins of each colour word (hue sector 0 is red, 4 green, 8 blue)."""
SHADES = ("dark", "light")
_WORD = re.compile(r"[a-z]+")

PLAIN_WORDS = frozenset({"solid", "plain"})
"""Query words asking for a garment of one plain colour."""
PATTERN_WORDS = frozenset(
    {
        "patterned",
        "pattern",
        "print",
        "printed",
        "prints",
        "striped",
        "stripes",
        "stripe",
        "checked",
        "check",
        "checks",
        "dotted",
        "dots",
        "spotted",
        "polka",
        "floral",
        "jacquard",
        "melange",
        "marl",
        "marled",
        "leopard",
        "camouflage",
        "paisley",
        "houndstooth",
        "tartan",
        "sequins",
        "sequined",
        "glitter",
        "embroidered",
        "embroidery",
    }
)
"""Words of a product's name, description or tags that say its surface is not one plain
colour."""
PATTERN_PHRASES = frozenset(
    PLAIN_WORDS
    | PATTERN_WORDS
    | {
        "all over pattern",
        "front print",
        "placement print",
        "colour blocking",
        "stripe",
        "check",
        "dot",
        "denim",
        "lace",
        "mesh",
        "metallic",
        "sequin",
        "transparent",
    }
)
"""The surface phrases a query can ask for ("solid", "stripe", "all over pattern"): a finite
vocabulary, so the encoder's text tower encodes each once and the garments' image vectors
are scored against it without encoding anything per query (``pattern_phrases``)."""
_LONGEST_PHRASE = max(len(p.split()) for p in PATTERN_PHRASES)


def _shade(bins: frozenset[int], shade: str) -> frozenset[int]:
    """The dark (brightness half 0, grey levels 0-2) or light half of a colour's bins."""
    dark = shade == "dark"
    return frozenset(
        b
        for b in bins
        if (b < GREY_LEVELS and (b <= 2) == dark)
        or (b >= GREY_LEVELS and ((b - GREY_LEVELS) % 2 == 0) == dark)
    )


def colour_mask(text: str) -> Mask | None:
    """1.0 on the bins of the colours the text names (None when it names none). Read-only
    (one array per distinct text, kept: shoppers repeat queries)."""
    return _colour_mask(text)


@functools.lru_cache(maxsize=MASKS_KEPT)
def _colour_mask(text: str) -> Mask | None:
    words = _WORD.findall(text.casefold())
    found: set[int] = set()
    for i, word in enumerate(words):
        bins = COLOUR_WORDS.get(word)
        if bins is None:
            continue
        before = words[i - 1] if i else ""
        if before == "off" and word == "white":
            bins = COLOUR_WORDS["cream"]
        elif before in SHADES:
            bins = _shade(bins, before)
        found |= bins
    if not found:
        return None
    mask = np.zeros(HISTOGRAM_BINS, np.float32)
    mask[sorted(found)] = 1.0
    mask.flags.writeable = False
    return mask


def asks_plain(text: str) -> bool:
    """Whether the text asks for a plain garment (one of ``PLAIN_WORDS``)."""
    return not PLAIN_WORDS.isdisjoint(_WORD.findall(text.casefold()))


def pattern_phrases(text: str) -> tuple[str, ...]:
    """The ``PATTERN_PHRASES`` a text names, longest first where they overlap ("all over
    pattern dress" -> ("all over pattern",))."""
    return _pattern_phrases(text)


@functools.lru_cache(maxsize=MASKS_KEPT)
def _pattern_phrases(text: str) -> tuple[str, ...]:
    words = _WORD.findall(text.casefold())
    found: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(_LONGEST_PHRASE, len(words) - i), 0, -1):
            phrase = " ".join(words[i : i + n])
            if phrase in PATTERN_PHRASES:
                found.append(phrase)
                i += n
                break
        else:
            i += 1
    return tuple(found)


def says_patterned(name: str, description: str | None, tags: Iterable[str] = ()) -> bool:
    """Whether a product's words say its surface is patterned (one of ``PATTERN_WORDS``)."""
    text = " ".join([name, description or "", *tags]).casefold()
    return not PATTERN_WORDS.isdisjoint(_WORD.findall(text))


def histogram_bytes(histogram: npt.NDArray[np.floating]) -> bytes:
    """A histogram as ``Product.colour`` stores it."""
    values = np.asarray(histogram, HISTOGRAM_DTYPE).reshape(-1)
    if values.shape != (HISTOGRAM_BINS,):
        raise ValueError(f"a colour histogram has {HISTOGRAM_BINS} values, not {values.size}")
    return values.tobytes()


def colour_shares(histograms: Sequence[bytes | None], mask: Mask) -> npt.NDArray[np.float64]:
    """Each product's share of garment pixels in the mask's bins; NaN where a product has no
    histogram (ingested before histograms were stored, or a photo that could not be read)."""
    known = [h is not None and len(h) == _HISTOGRAM_SIZE for h in histograms]
    blob = b"".join(h if ok and h else _MISSING for h, ok in zip(histograms, known, strict=True))
    rows = np.frombuffer(blob, HISTOGRAM_DTYPE).reshape(len(histograms), HISTOGRAM_BINS)
    # the stored values are square roots of pixel shares
    shares: npt.NDArray[np.float64] = ((rows * rows) @ mask).astype(np.float64)
    if not all(known):
        shares[~np.array(known, bool)] = np.nan
    return shares


def rank_share(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1 for the highest score, 0 for the lowest, evenly between by rank (ties in list
    order)."""
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores))
    rank[order] = np.arange(len(scores))
    return np.asarray(1.0 - rank / max(len(scores) - 1, 1), np.float64)


def _mean_filled(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """NaN replaced by the mean of the others (all zeros when every value is NaN)."""
    known = ~np.isnan(values)
    if not known.any():
        return np.zeros(len(values))
    if known.all():
        return values
    return np.where(known, values, float(values[known].mean()))


_HISTOGRAM_SIZE = HISTOGRAM_BINS * HISTOGRAM_DTYPE.itemsize
_MISSING = bytes(_HISTOGRAM_SIZE)


@dataclass(frozen=True)
class ColourRerank:
    """The colour re-rank of a search's top (see the module docstring)."""

    depth: int = 30
    """How many of the fused ranking's first results are re-ranked."""
    weight: float = 0.4
    """A colour share of 1 is worth moving up ``weight * depth`` places."""
    gate: float = 0.5
    """Re-rank only when the text confidence is below this (the words do not answer)."""
    patterned_weight: float = 0.4
    """For a query asking for a plain garment, a product whose words say it is patterned
    moves down ``patterned_weight * depth`` places."""
    pattern_prompt_weight: float = 0.1
    """For a query naming a surface (``pattern_phrases``), the product whose image vector is
    the closest of the top to the phrase's text vector moves up ``pattern_prompt_weight *
    depth`` places, the furthest none, the others by their rank between."""

    def applies(self, confidence: float) -> bool:
        return confidence < self.gate


DEFAULT_COLOUR_RERANK = ColourRerank()


def colour_order(
    shares: npt.NDArray[np.float64],
    config: ColourRerank,
    patterned: npt.NDArray[np.bool_] | None = None,
    surface: npt.NDArray[np.float64] | None = None,
) -> list[int]:
    """The new order of a ranked list of at most ``config.depth`` products given their
    colour shares: by rank position / depth - weight x share (+ patterned_weight where
    ``patterned``: a query asking for a plain garment; - pattern_prompt_weight x the rank
    share of ``surface``, the image vectors' cosines to the surface the query names), ties
    kept in rank order. A product without a histogram (NaN) counts the mean share of the
    others, so it keeps about its place; when none has one, the shares change nothing. The
    same for a product without a cosine."""
    shares = _mean_filled(shares)
    key = np.arange(len(shares)) / config.depth - config.weight * shares
    if patterned is not None:
        key = key + config.patterned_weight * patterned
    if surface is not None and not np.isnan(surface).all():
        key = key - config.pattern_prompt_weight * rank_share(_mean_filled(surface))
    order: list[int] = np.argsort(key, kind="stable").tolist()
    return order
