"""What the colour re-rank adds to a HYBRID text search: the search service's work after the
signals' lists are in (fusion, the colour re-rank, the catalog rows of the page, the hits),
with the colour machinery on and off, interleaved per query so both see the same load.

The galleries are those ``bench.fusion_signals`` recorded (their kept homes hold the colour
histograms written at ingest), and each query's recorded lists stand in for the encoder and
the vector and lexical searches, which the re-rank does not touch. Each variant goes first
for half of the pairs (the second of a pair finds warmer caches). On a catalog whose words
answer colour queries (Kaggle style) the gate leaves them alone; on one whose words do not
(H&M style) most are re-ranked (the top 30's rows come with the page's).

    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/signals 16
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/signals 16
    flock /work/bench.lock env PYTHONPATH=. .venv/bin/python -m bench.colour_cost /tmp/signals \
        kaggle-train-16 hm-extra-16
    # the same for the "<pattern> <type>" queries (the plain-garment and surface re-ranks on
    # and off)
    flock /work/bench.lock env PYTHONPATH=. .venv/bin/python -m bench.colour_cost --pattern \
        /tmp/signals hm-extra-16
    # the "<pattern> <type>" queries with only the surface re-rank on and off (the phrases'
    # cosines to the top 30's image vectors; the colour and plain-garment re-ranks on in both)
    flock /work/bench.lock env PYTHONPATH=. .venv/bin/python -m bench.colour_cost --surface \
        /tmp/signals hm-extra-16

Writes bench/results/colour_cost.json (``--pattern``: colour_cost_plain.json, ``--surface``:
colour_cost_surface.json).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import load_average, machine
from domain.colour import asks_plain, colour_mask, pattern_phrases
from domain.fusion import Ranked, text_confidence
from domain.model import SearchQuery, TextQuery
from domain.services import QueryVectors
from fashion_search.evaluation import eval_settings
from fashion_search.settings import Settings
from fashion_search.wiring import build

RESULTS = Path(__file__).resolve().parent / "results" / "colour_cost.json"
PLAIN_RESULTS = RESULTS.with_name("colour_cost_plain.json")
SURFACE_RESULTS = RESULTS.with_name("colour_cost_surface.json")
ROUNDS = 40
TOP_K = 10


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 4)


async def measure(
    signals: Path, name: str, kind: str = "colour_type", surface_only: bool = False
) -> dict[str, Any]:
    with (signals / f"{name}.pkl").open("rb") as f:
        recorded = pickle.load(f)  # our own file, written by bench.fusion_signals
    queries: list[tuple[str, Ranked]] = [(t, r) for t, _, r in recorded["queries"][kind]]
    container = build(eval_settings(Settings(), signals / f"{name}-home"))
    service = container.search
    current: dict[str, Ranked] = {}

    async def vectors(encoder: Any, query: SearchQuery) -> QueryVectors:
        return QueryVectors(np.zeros(1, np.float32), None, None)

    async def rank(encoder: Any, query: SearchQuery, vectors: Any, *asked: Any) -> Ranked:
        return current["ranked"]

    service._query_vectors = vectors  # type: ignore[method-assign]  # the recorded lists
    service._rank = rank  # type: ignore[method-assign,assignment]
    service._lexical_early = lambda query: None  # type: ignore[method-assign]
    colour_on, plain_on, surface_on = service._colour_mask, service._asks_plain, service._surfaces
    samples: dict[str, list[float]] = {"on": [], "off": [], "on_cpu": [], "off_cpu": []}
    paired: list[float] = []
    try:
        for round_ in range(ROUNDS):
            for n, (text, ranked) in enumerate(queries):
                current["ranked"] = ranked
                took = {}
                # each variant goes first half of the time (the second finds warmer caches)
                for variant in ("on", "off") if (round_ + n) % 2 else ("off", "on"):
                    on = variant == "on" or surface_only
                    service._colour_mask = colour_on if on else _no_colour  # type: ignore[method-assign]
                    service._asks_plain = plain_on if on else _no_plain  # type: ignore[method-assign]
                    service._surfaces = surface_on if variant == "on" else _no_surface  # type: ignore[method-assign]
                    query = SearchQuery(text=TextQuery(text), top_k=TOP_K)
                    started, cpu = time.perf_counter(), time.thread_time()
                    await service.search(query)
                    samples[f"{variant}_cpu"].append(time.thread_time() - cpu)
                    took[variant] = time.perf_counter() - started
                    samples[variant].append(took[variant])
                paired.append(took["on"] - took["off"])
    finally:
        await container.aclose()
    gated = sum(
        service.colour_rerank.applies(text_confidence(r, service.fusion))
        and (colour_mask(t) is not None or asks_plain(t) or bool(pattern_phrases(t)))
        for t, r in queries
    )
    return {
        "queries": kind,
        "queries_measured": len(queries),
        "re_ranked_queries": gated,
        "rounds": ROUNDS,
        "after_lists_p50_ms_colour_on": _ms(samples["on"]),
        "after_lists_p50_ms_colour_off": _ms(samples["off"]),
        "after_lists_cpu_p50_ms_colour_on": _ms(samples["on_cpu"]),
        "after_lists_cpu_p50_ms_colour_off": _ms(samples["off_cpu"]),
        "added_p50_ms_paired": _ms(paired),
    }


def _no_colour(query: SearchQuery) -> None:
    return None


def _no_plain(query: SearchQuery) -> bool:
    return False


def _no_surface(query: SearchQuery) -> tuple[str, ...]:
    return ()


async def main(
    signals: Path, galleries: list[str], pattern: bool = False, surface: bool = False
) -> None:
    before = load_average()
    kind = "pattern_type" if pattern or surface else "colour_type"
    flag = "--surface " if surface else "--pattern " if pattern else ""
    result: dict[str, Any] = {
        "benchmark": "colour_cost",
        "command": "flock /work/bench.lock env PYTHONPATH=. .venv/bin/python -m "
        f"bench.colour_cost {flag}/tmp/signals {' '.join(galleries)}",
        "load_average_before": before,
        "galleries": {name: await measure(signals, name, kind, surface) for name in galleries},
        "load_average_after": load_average(),
        "machine": machine(),
    }
    output = SURFACE_RESULTS if surface else PLAIN_RESULTS if pattern else RESULTS
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    flagged = sys.argv[1] in ("--pattern", "--surface")
    args = sys.argv[2:] if flagged else sys.argv[1:]
    default = ["hm-extra-16"] if flagged else ["kaggle-train-16", "hm-extra-16"]
    surface = sys.argv[1] == "--surface"
    asyncio.run(main(Path(args[0]), args[1:] or default, flagged and not surface, surface))
