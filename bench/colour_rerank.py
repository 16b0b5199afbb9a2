"""Would the garment's colour histogram fix "<colour> <type>" rankings? An offline test on
the training galleries that ``bench.fusion_signals`` recorded (never a held-out split).

Each product's 54-bin HSV histogram of its garment pixels (``encoders.backbones.
colour_histogram``, what the fashion-lite image tower reads) is computed from its photo; a
query's colour words map to the bins of that colour (``COLOUR_BINS``: hue sectors,
saturation and brightness halves, grey levels; "dark"/"light" keep the dark or light half),
and the product's *colour share* is the share of its garment pixels in those bins. The
default fusion's ranking is then re-ranked over its top ``depth`` by fused score + weight x
share (``add``), + weight x share / best share of the list (``relative``), or by rank
position + weight x share (``rank``), for every query naming a colour or (``gated``) only
when the words do not answer it. Result (docs/relevance.md): ungated, no setting gains on
both catalog styles; gated, H&M gains about 0.02 on both draws and Kaggle is untouched.

    PYTHONPATH=. .venv/bin/python -m bench.colour_rerank /tmp/signals \
        kaggle-train hm-extra kaggle-train-16 hm-extra-16

Writes bench/results/colour_rerank.json.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from bench.fusion_signals import gallery
from bench.fusion_tuning import label_precision
from domain.fusion import DEFAULT_FUSION, FusedHit, fuse, text_confidence
from encoders.backbones import COLOUR_DIM, colour_histogram
from fashion_search.settings import Settings
from fashion_search.shop_evaluation import ATTRIBUTE_KEYS
from ingest.readers import RemoteImage, open_source

RESULTS = Path(__file__).resolve().parent / "results" / "colour_rerank.json"
GREY_BINS, HUE_BINS = 6, 12
"""The histogram's layout (``encoders.backbones``): 6 grey levels by brightness, then hue
sector x saturation half x brightness half."""
MAX_IMAGE_BYTES = 50_000_000
WEIGHTS = (0.1, 0.2, 0.4, 0.8)
GATE = 0.5
"""Gated variants re-rank only queries whose text confidence is below this (the words do
not answer the query: H&M-style names), leaving Kaggle-style catalogs to their words."""
DEPTHS = (30, 100, 1000)
Histograms = Mapping[str, npt.NDArray[np.float32]]


def _bins(
    grey: Iterable[int] = (),
    hues: Iterable[int] = (),
    sats: Iterable[int] = (0, 1),
    vals: Iterable[int] = (0, 1),
) -> frozenset[int]:
    chroma = {GREY_BINS + (h * 2 + s) * 2 + v for h in hues for s in sats for v in vals}
    return frozenset(set(grey) | chroma)


COLOUR_BINS: dict[str, frozenset[int]] = {
    "black": _bins(grey=(0, 1)),
    "white": _bins(grey=(5,)),
    "grey": _bins(grey=(2, 3, 4)),
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


def _shade(bins: frozenset[int], shade: str) -> frozenset[int]:
    """The dark (brightness half 0, grey levels 0-2) or light half of a colour's bins."""
    dark = shade == "dark"
    return frozenset(
        b
        for b in bins
        if (b < GREY_BINS and (b <= 2) == dark)
        or (b >= GREY_BINS and ((b - GREY_BINS) % 2 == 0) == dark)
    )


def colour_mask(text: str) -> npt.NDArray[np.float64] | None:
    """The bins of the query's colour words (None when it names no colour)."""
    words = text.lower().replace("-", " ").split()
    found: set[int] = set()
    for i, word in enumerate(words):
        bins = COLOUR_BINS.get(word)
        if bins is None:
            continue
        before = words[i - 1] if i else ""
        if before == "off" and word == "white":
            bins = COLOUR_BINS["cream"]
        elif before in ("dark", "light"):
            bins = _shade(bins, before)
        found |= bins
    if not found:
        return None
    mask = np.zeros(COLOUR_DIM, np.float64)
    mask[sorted(found)] = 1.0
    return mask


def histograms(name: str, ids: frozenset[str], manifest: Path, cache: Path) -> Histograms:
    """Each gallery product's colour histogram (cached beside the recorded signals)."""
    if cache.exists():
        with cache.open("rb") as f:
            cached: Histograms = pickle.load(f)  # our own file
        return cached
    out: dict[str, npt.NDArray[np.float32]] = {}
    with open_source(manifest) as source:
        for item in source:
            if item.id in ids:
                if isinstance(item.image, RemoteImage):
                    raise ValueError(f"{item.id}: the galleries' photos are local files")
                out[item.id] = colour_histogram(
                    Image.open(io.BytesIO(item.image.read(MAX_IMAGE_BYTES)))
                )
    with cache.open("wb") as f:
        pickle.dump(out, f)
    return out


Rerank = Callable[[list[FusedHit], npt.NDArray[np.float64]], list[FusedHit]]


def reranker(mode: str, weight: float, depth: int, hist: Histograms) -> Rerank:
    def rerank(hits: list[FusedHit], mask: npt.NDArray[np.float64]) -> list[FusedHit]:
        top = hits[:depth]
        # the histogram holds square roots of pixel shares
        share = np.array([float(hist[h.product_id] ** 2 @ mask) for h in top])
        if mode == "add":
            base = np.array([h.score for h in top])
        elif mode == "relative":
            base = np.array([h.score for h in top])
            share = share / max(float(share.max()), 1e-9)
        else:  # rank
            base = -np.arange(len(top)) / max(len(top), 1)
        order = np.argsort(-(base + weight * share), kind="stable")
        return [top[i] for i in order] + hits[depth:]

    return rerank


def precision(
    recorded: Mapping[str, Any], rerank: Rerank | None, gate: float | None = None
) -> dict[str, float]:
    """P@10 of the attribute queries, re-ranked when the query names a colour (and, with
    ``gate``, only when the fusion's text confidence is below it: the words do not answer)."""
    labels = recorded["labels"]
    figures: dict[str, float] = {}
    for kind in ATTRIBUTE_KEYS:
        precisions = []
        for text, (keys, values), ranked in recorded["queries"].get(kind, []):
            hits = fuse(ranked).hits
            mask = colour_mask(text)
            gated = gate is not None and text_confidence(ranked, DEFAULT_FUSION) >= gate
            if rerank is not None and mask is not None and not gated:
                hits = rerank(hits, mask)
            precisions.append(label_precision(hits, labels, keys, values))
        if precisions:
            figures[f"{kind}_p@10"] = round(sum(precisions) / len(precisions), 4)
    return figures


def main(signals: Path, galleries: list[str]) -> None:
    settings = Settings()
    results: dict[str, Any] = {}
    for name in galleries:
        with (signals / f"{name}.pkl").open("rb") as f:
            recorded = pickle.load(f)  # our own file, written by bench.fusion_signals
        base, _, draw = name.rpartition("-")
        drawn = gallery(base, settings, int(draw)) if draw.isdigit() else gallery(name, settings)
        hist = histograms(name, drawn[1], drawn[0], signals / f"{name}-colour.pkl")
        table = {"default fusion": precision(recorded, None)}
        for mode in ("add", "relative", "rank"):
            for depth in DEPTHS:
                for weight in WEIGHTS:
                    rerank = reranker(mode, weight, depth, hist)
                    label = f"{mode} depth {depth} weight {weight}"
                    table[label] = precision(recorded, rerank)
                    table[f"{label}, gated"] = precision(recorded, rerank, GATE)
        results[name] = table
        print(json.dumps({name: table}, indent=1), flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["kaggle-train", "hm-extra"])
