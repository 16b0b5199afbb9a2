"""Levers for "<pattern> <type>" queries on H&M-style catalogs, measured offline on the
training galleries ``bench.fusion_signals`` recorded (never a held-out split), with the
colour re-rank of ``domain.colour`` in place for the colour queries:

* **the colour histogram's concentration**: "solid" asks for one colour, "all over pattern",
  "stripe", "check", "dot" for several, so the top 30 of such queries are re-ranked by rank
  position / 30 - weight x concentration (or 1 - concentration), the concentration being the
  largest bin share or the sum of squared shares, over the 54 bins or over coarse groups
  (hue sectors, grey levels);
* **the fusion's floors and weights, again**: the neighbourhood of the default now that
  colour queries are re-ranked by the photos (a higher semantic floor gained on patterns
  before but lost on colours).

    PYTHONPATH=. .venv/bin/python -m bench.pattern_levers /tmp/signals \\
        kaggle-train hm-extra kaggle-train-16 hm-extra-16

Writes bench/results/pattern_levers.json (docs/relevance.md reads it).
"""

from __future__ import annotations

import functools
import itertools
import json
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.fusion_tuning import label_precision
from domain.colour import (
    DEFAULT_COLOUR_RERANK,
    GREY_LEVELS,
    HUE_SECTORS,
    ColourRerank,
    colour_mask,
    colour_order,
    colour_shares,
)
from domain.fusion import DEFAULT_FUSION, FusedHit, FusionConfig, fuse

RESULTS = Path(__file__).resolve().parent / "results" / "pattern_levers.json"
ONE_COLOUR = ("solid",)
SEVERAL_COLOURS = ("all over pattern", "stripe", "check", "dot")
WEIGHTS = (0.2, 0.4, 0.8)
GRID: dict[str, tuple[float, ...]] = {
    "visual_floor": (0.05, 0.1, 0.2),
    "lexical_floor": (0.1, 0.15, 0.25),
    "semantic_floor": (0.05, 0.1, 0.15, 0.2),
    "semantic_weight": (0.25, 0.4),
}
Recorded = Mapping[str, Any]
Histograms = Mapping[str, bytes | None]
Shares = npt.NDArray[np.float64]


def concentrations(histogram: bytes) -> dict[str, float]:
    shares = np.frombuffer(histogram, "<f4").astype(np.float64) ** 2
    hues = shares[GREY_LEVELS:].reshape(HUE_SECTORS, 4).sum(axis=1)
    coarse = np.concatenate([hues, shares[:GREY_LEVELS]])
    return {
        "largest bin": float(shares.max()),
        "sum of squares": float((shares**2).sum()),
        "largest coarse group": float(coarse.max()),
        "sum of squares, coarse": float((coarse**2).sum()),
    }


def precision(
    recorded: Recorded,
    histograms: Histograms,
    kind: str,
    config: FusionConfig = DEFAULT_FUSION,
    pattern: Callable[[str, list[FusedHit]], list[FusedHit]] | None = None,
) -> float | None:
    """Mean P@10 of one kind of query (colour queries with the colour re-rank)."""
    precisions = []
    for text, (keys, values), ranked in recorded["queries"].get(kind, []):
        fused = fuse(ranked, config)
        hits = fused.hits
        mask = colour_mask(text)
        rerank = DEFAULT_COLOUR_RERANK
        if mask is not None and rerank.applies(fused.confidence):
            top = hits[: rerank.depth]
            shares = colour_shares([histograms.get(h.product_id) for h in top], mask)
            hits = [top[i] for i in colour_order(shares, rerank)] + hits[rerank.depth :]
        elif pattern is not None and DEFAULT_COLOUR_RERANK.applies(fused.confidence):
            hits = pattern(text, hits)
        precisions.append(label_precision(hits, recorded["labels"], keys, values))
    return round(float(np.mean(precisions)), 4) if precisions else None


def concentration_rerank(
    measure: str, weight: float, histograms: Histograms, several: bool
) -> Callable[[str, list[FusedHit]], list[FusedHit]]:
    known = {p: concentrations(h)[measure] for p, h in histograms.items() if h is not None}
    config = ColourRerank(weight=weight)

    def rerank(text: str, hits: list[FusedHit]) -> list[FusedHit]:
        if text.startswith(ONE_COLOUR):
            flip = False
        elif several and text.startswith(SEVERAL_COLOURS):
            flip = True
        else:
            return hits
        top = hits[: config.depth]
        values: Shares = np.array([known.get(h.product_id, np.nan) for h in top])
        order = colour_order(1 - values if flip else values, config)
        return [top[i] for i in order] + hits[config.depth :]

    return rerank


def _lever(
    measure: str, weight: float, several: bool, _: str, histograms: Histograms
) -> Callable[[str, list[FusedHit]], list[FusedHit]]:
    return concentration_rerank(measure, weight, histograms, several)


def main(signals: Path, galleries: list[str]) -> None:
    data = {}
    for name in galleries:
        with (signals / f"{name}.pkl").open("rb") as f:
            recorded = pickle.load(f)  # our own file, written by bench.fusion_signals
        with (signals / f"{name}-colour.pkl").open("rb") as f:
            histograms = pickle.load(f)  # written by bench.colour_rerank
        data[name] = (recorded, histograms)

    def figures(
        config: FusionConfig = DEFAULT_FUSION,
        pattern: Callable[[str, Histograms], Any] | None = None,
    ) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, (recorded, histograms) in data.items():
            lever = pattern(name, histograms) if pattern else None
            for kind in ("colour_type", "pattern_type"):
                value = precision(recorded, histograms, kind, config, lever)
                if value is not None:
                    out[f"{name} {kind}_p@10"] = value
        return out

    results: dict[str, Any] = {"default (with the colour re-rank)": figures()}
    concentration: dict[str, Any] = {}
    for measure in concentrations(bytes(4 * (GREY_LEVELS + HUE_SECTORS * 4))):
        for weight in WEIGHTS:
            for several in (False, True):
                label = f"{measure}, weight {weight}" + (", several colours too" if several else "")
                lever = functools.partial(_lever, measure, weight, several)
                concentration[label] = figures(pattern=lever)
    results["histogram concentration"] = concentration
    grid: dict[str, Any] = {}
    for values in itertools.product(*GRID.values()):
        setting: dict[str, Any] = dict(zip(GRID, values, strict=True))
        grid[json.dumps(setting)] = figures(replace(DEFAULT_FUSION, **setting))
    results["fusion grid"] = grid
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["default (with the colour re-rank)"], indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["kaggle-train", "hm-extra"])
