"""Choosing the default fusion on *training* galleries (never the held-out splits): each
fusion configuration's HYBRID figures, beside each signal alone, computed offline from the
signals ``bench.fusion_signals`` recorded (so a configuration costs no search).

    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/signals
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/signals
    PYTHONPATH=. .venv/bin/python -m bench.fusion_tuning /tmp/signals kaggle-train hm-extra
    # with a second draw (bench.fusion_signals GALLERY /tmp/signals 16) as validation:
    PYTHONPATH=. .venv/bin/python -m bench.fusion_tuning /tmp/signals \
        kaggle-train hm-extra kaggle-train-16 hm-extra-16
    # every combination of GRID around the default (writes bench/results/fusion_grid.json):
    PYTHONPATH=. .venv/bin/python -m bench.fusion_tuning --grid /tmp/signals kaggle-train hm-extra

kaggle-train: 3,722 Kaggle products outside the committed held-out split (the held-out
split's size); hm-extra: 1,518 hm-extra products, an H&M catalog the fashion-lite heads never
saw (hm-dev's training part is no use here: the encoder was trained on its images).
Writes bench/results/fusion_tuning.json; docs/relevance.md explains the choice.
"""

from __future__ import annotations

import itertools
import json
import pickle
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from domain.fusion import DEFAULT_FUSION, Fused, FusedHit, FusionConfig, Ranked, fuse
from domain.model import MatchQuality
from fashion_search.shop_evaluation import ATTRIBUTE_KEYS, TOP_K

RESULTS = Path(__file__).resolve().parent / "results" / "fusion_tuning.json"
GRID_RESULTS = RESULTS.with_name("fusion_grid.json")
GRID: dict[str, tuple[float, ...]] = {
    "visual_floor": (0.05, 0.1, 0.2),
    "lexical_floor": (0.1, 0.15, 0.25),
    "semantic_floor": (0.05, 0.1, 0.15),
    "semantic_weight": (0.1, 0.25, 0.4),
    "matched_exponent": (1.0, 2.0, 3.0),
    "coverage_exponent": (1.0, 2.0, 3.0),
}
"""The neighbourhood of the default searched by ``--grid`` (729 configurations)."""
GRID_SHOWN = 10
PREVIOUS = FusionConfig(
    visual_floor=1.0,
    lexical_floor=0.0,
    semantic_floor=0.0,
    semantic_weight=1.0,
    matched_exponent=0.0,
    semantic_confident_from=1.5,
    semantic_confident_at=2.0,
)
"""The default before (text weight = coverage^2 x full share of the top 10, for both text
signals; visual always 1), up to its min-max normalisation (see docs/relevance.md)."""
CONFIGS: dict[str, FusionConfig] = {
    "default": DEFAULT_FUSION,
    "previous weights": PREVIOUS,
    "no semantic evidence": replace(
        DEFAULT_FUSION, semantic_confident_from=1.5, semantic_confident_at=2.0
    ),
    "no floors": replace(DEFAULT_FUSION, lexical_floor=0.0, semantic_floor=0.0),
    "bm25 alone (matched^0)": replace(DEFAULT_FUSION, matched_exponent=0.0),
    "visual floor 0.3": replace(DEFAULT_FUSION, visual_floor=0.3),
    "semantic weight 0.5": replace(DEFAULT_FUSION, semantic_weight=0.5),
    "visual floor 0.05": replace(DEFAULT_FUSION, visual_floor=0.05),
    "lexical floor 0.25": replace(DEFAULT_FUSION, lexical_floor=0.25),
    "semantic floor 0.2": replace(DEFAULT_FUSION, semantic_floor=0.2),
    "matched^1": replace(DEFAULT_FUSION, matched_exponent=1.0),
    "semantic evidence 0.45-0.65": replace(
        DEFAULT_FUSION, semantic_confident_from=0.45, semantic_confident_at=0.65
    ),
    "semantic evidence 0.55-0.75": replace(
        DEFAULT_FUSION, semantic_confident_from=0.55, semantic_confident_at=0.75
    ),
}
SIGNALS_ALONE = {
    "visual": {"semantic": (), "lexical": ()},
    "text": {"visual": ()},
    "lexical": {"visual": (), "semantic": ()},
    "semantic": {"visual": (), "lexical": ()},
}


def label_precision(
    hits: Sequence[FusedHit],
    labels: Mapping[str, Mapping[str, str]],
    keys: Sequence[str],
    values: tuple[str, ...],
) -> float:
    """P@10 judged by the labels: a hit counts when its ``keys`` have exactly ``values``."""
    top = [h.product_id for h in hits[:TOP_K]]
    return sum(tuple(labels[p].get(k, "") for k in keys) == values for p in top) / TOP_K


def measure(recorded: Mapping[str, Any], rank: Callable[[Ranked], Fused]) -> dict[str, float]:
    """The shop-mode figures of one way of ranking over one recorded gallery."""
    labels = recorded["labels"]
    queries = recorded["queries"]
    figures: dict[str, float] = {}
    attribute_none = []
    for kind in ATTRIBUTE_KEYS:
        precisions = []
        for _, (keys, values), ranked in queries.get(kind, []):
            fused = rank(ranked)
            precisions.append(label_precision(fused.hits, labels, keys, values))
            attribute_none.append(fused.quality is MatchQuality.NONE)
        if precisions:
            figures[f"{kind}_p@10"] = round(sum(precisions) / len(precisions), 4)
    exact = [rank(r).hits[:1] for _, _, r in queries["exact_name"]]
    named = [pid for _, pid, _ in queries["exact_name"]]
    figures["exact_name_r@1"] = sum(
        bool(h) and h[0].product_id == pid for h, pid in zip(exact, named, strict=True)
    ) / len(named)
    random_none = [rank(r).quality is MatchQuality.NONE for _, _, r in queries["random"]]
    figures["random_none"] = sum(random_none) / len(random_none)
    figures["attribute_none"] = sum(attribute_none) / max(1, len(attribute_none))
    return figures


def _alone(ranked: Ranked, keep: Mapping[str, Any]) -> Fused:
    return fuse(replace(ranked, **keep), limit=TOP_K)


def _fused(ranked: Ranked, config: FusionConfig) -> Fused:
    return fuse(ranked, config, TOP_K)


def main(signals: Path, galleries: list[str]) -> None:
    results: dict[str, Any] = {}
    for gallery in galleries:
        with (signals / f"{gallery}.pkl").open("rb") as f:
            recorded = pickle.load(f)  # our own file, written by bench.fusion_signals
        table = {
            name: measure(recorded, partial(_alone, keep=keep))
            for name, keep in SIGNALS_ALONE.items()
        }
        for name, config in CONFIGS.items():
            table[f"hybrid: {name}"] = measure(recorded, partial(_fused, config=config))
        results[gallery] = {"gallery": len(recorded["labels"]), "figures": table}
        print(json.dumps({gallery: table}, indent=1), flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def _attribute_figures(recorded: Mapping[str, Any], config: FusionConfig) -> dict[str, float]:
    """Only the attribute queries' P@10 (what the weights move; a grid needs no more)."""
    return measure_attributes(recorded, partial(_fused, config=config))


def measure_attributes(
    recorded: Mapping[str, Any], rank: Callable[[Ranked], Fused]
) -> dict[str, float]:
    """P@10 of each kind of attribute query ("<colour> <type>", "<pattern> <type>")."""
    labels = recorded["labels"]
    figures: dict[str, float] = {}
    for kind in ATTRIBUTE_KEYS:
        precisions = []
        for _, (keys, values), ranked in recorded["queries"].get(kind, []):
            precisions.append(label_precision(rank(ranked).hits, labels, keys, values))
        if precisions:
            figures[f"{kind}_p@10"] = round(sum(precisions) / len(precisions), 4)
    return figures


def grid(signals: Path, galleries: list[str]) -> None:
    """Every combination of GRID: each one's change from the default per gallery and metric;
    the best by the sum of changes among those losing nowhere, and the best per metric."""
    recorded = {}
    for gallery in galleries:
        with (signals / f"{gallery}.pkl").open("rb") as f:
            recorded[gallery] = pickle.load(f)  # our own file, written by bench.fusion_signals
    default = {g: _attribute_figures(r, DEFAULT_FUSION) for g, r in recorded.items()}
    rows = []
    for combination in itertools.product(*GRID.values()):
        setting: dict[str, Any] = dict(zip(GRID, combination, strict=True))
        config = replace(DEFAULT_FUSION, **setting)
        change = {
            f"{g} {metric}": round(value - default[g][metric], 4)
            for g, r in recorded.items()
            for metric, value in _attribute_figures(r, config).items()
        }
        rows.append({"setting": setting, "change": change})
    harmless = [r for r in rows if min(r["change"].values()) >= 0]
    harmless.sort(key=lambda r: -sum(r["change"].values()))
    metrics = list(rows[0]["change"])
    result = {
        "galleries": galleries,
        "grid": GRID,
        "configurations": len(rows),
        "default": default,
        "best_losing_nowhere": harmless[:GRID_SHOWN],
        "best_per_metric": {m: max(rows, key=lambda r: r["change"][m]) for m in metrics},
    }
    GRID_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "grid"}, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "--grid":
        grid(Path(sys.argv[2]), sys.argv[3:] or ["kaggle-train", "hm-extra"])
    else:
        main(Path(sys.argv[1]), sys.argv[2:] or ["kaggle-train", "hm-extra"])
