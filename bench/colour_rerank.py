"""Would the garment's colour histogram fix "<colour> <type>" rankings? An offline test on
the training galleries that ``bench.fusion_signals`` recorded (never a held-out split).

Each product's 54-bin HSV histogram of its garment pixels is computed from its photo as
ingest stores it (``encoders.colour.ColourHistograms``); a query's colour words map to the
bins of that colour (``domain.colour.COLOUR_WORDS``: hue sectors, saturation and brightness
halves, grey levels; "dark"/"light" keep the dark or light half), and the product's *colour
share* is the share of its garment pixels in those bins. The
default fusion's ranking is then re-ranked over its top ``depth`` by fused score + weight x
share (``add``), + weight x share / best share of the list (``relative``), or by rank
position + weight x share (``rank``: ``domain.colour.colour_order``, what the search
service does), for every query naming a colour or (``gated``) only when the words do not
answer it. Result (docs/relevance.md): ungated, no setting gains on
both catalog styles; gated, H&M gains about 0.02 on both draws and Kaggle is untouched.

    PYTHONPATH=. .venv/bin/python -m bench.colour_rerank /tmp/signals \
        kaggle-train hm-extra kaggle-train-16 hm-extra-16

Writes bench/results/colour_rerank.json.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.fusion_signals import gallery
from bench.fusion_tuning import label_precision
from domain.colour import (
    DEFAULT_COLOUR_RERANK,
    ColourRerank,
    Mask,
    colour_mask,
    colour_order,
    colour_shares,
)
from domain.fusion import DEFAULT_FUSION, FusedHit, fuse, text_confidence
from encoders.colour import ColourHistograms
from fashion_search.settings import Settings
from fashion_search.shop_evaluation import ATTRIBUTE_KEYS
from ingest.readers import RemoteImage, open_source

RESULTS = Path(__file__).resolve().parent / "results" / "colour_rerank.json"
MAX_IMAGE_BYTES = 50_000_000
WEIGHTS = (0.1, 0.2, 0.4, 0.8)
GATE = DEFAULT_COLOUR_RERANK.gate
"""Gated variants re-rank only queries whose text confidence is below this (the words do
not answer the query: H&M-style names), leaving Kaggle-style catalogs to their words."""
DEPTHS = (30, 100, 1000)
Histograms = Mapping[str, bytes | None]


def histograms(name: str, ids: frozenset[str], manifest: Path, cache: Path) -> Histograms:
    """Each gallery product's colour histogram as ingest stores it (the product's
    ``ColourAnalyser``; cached beside the recorded signals)."""
    if cache.exists():
        with cache.open("rb") as f:
            cached: Histograms = pickle.load(f)  # our own file
        return cached
    analyser = ColourHistograms()
    out: dict[str, bytes | None] = {}
    with open_source(manifest) as source:
        for item in source:
            if item.id in ids:
                if isinstance(item.image, RemoteImage):
                    raise ValueError(f"{item.id}: the galleries' photos are local files")
                data = item.image.read(MAX_IMAGE_BYTES)
                out[item.id] = analyser.colour_histograms([data])[0]
    with cache.open("wb") as f:
        pickle.dump(out, f)
    return out


Rerank = Callable[[list[FusedHit], Mask], list[FusedHit]]


def reranker(mode: str, weight: float, depth: int, hist: Histograms) -> Rerank:
    def rerank(hits: list[FusedHit], mask: Mask) -> list[FusedHit]:
        top = hits[:depth]
        share = colour_shares([hist.get(h.product_id) for h in top], mask)
        if mode == "rank":  # what the search service does (domain.colour)
            order = colour_order(share, ColourRerank(depth=depth, weight=weight))
            return [top[i] for i in order] + hits[depth:]
        share = np.nan_to_num(share)
        base = np.array([h.score for h in top])
        if mode == "relative":
            share = share / max(float(share.max()), 1e-9)
        order = np.argsort(-(base + weight * share), kind="stable").tolist()
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


@dataclass(frozen=True)
class RecordedGallery:
    """A gallery's signals recorded by ``bench.fusion_signals``, where its products come from
    and their colour histograms."""

    recorded: dict[str, Any]
    manifest: Path
    ids: frozenset[str]
    histograms: Histograms


def recorded_gallery(signals: Path, name: str, settings: Settings) -> RecordedGallery:
    """``name`` as ``bench.fusion_signals`` wrote it ("hm-extra", or "hm-extra-16" for the
    draw of seed 16), with its histograms (cached beside the signals)."""
    with (signals / f"{name}.pkl").open("rb") as f:
        recorded = pickle.load(f)  # our own file, written by bench.fusion_signals
    base, _, draw = name.rpartition("-")
    manifest, ids = (
        gallery(base, settings, int(draw)) if draw.isdigit() else gallery(name, settings)
    )
    hist = histograms(name, ids, manifest, signals / f"{name}-colour.pkl")
    return RecordedGallery(recorded, manifest, ids, hist)


def main(signals: Path, galleries: list[str]) -> None:
    settings = Settings()
    results: dict[str, Any] = {}
    for name in galleries:
        drawn = recorded_gallery(signals, name, settings)
        recorded, hist = drawn.recorded, drawn.histograms
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
