"""Choosing the default fusion on *training* galleries (never the held-out splits): each
fusion configuration's HYBRID figures, beside each signal alone, computed offline from the
signals ``bench.fusion_signals`` recorded (so a configuration costs no search).

    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/signals
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/signals
    PYTHONPATH=. .venv/bin/python -m bench.fusion_tuning /tmp/signals kaggle-train hm-extra
    # with a second draw (bench.fusion_signals GALLERY /tmp/signals 16) as validation:
    PYTHONPATH=. .venv/bin/python -m bench.fusion_tuning /tmp/signals \
        kaggle-train hm-extra kaggle-train-16 hm-extra-16

kaggle-train: 3,722 Kaggle products outside the committed held-out split (the held-out
split's size); hm-extra: 1,518 hm-extra products, an H&M catalog the fashion-lite heads never
saw (hm-dev's training part is no use here: the encoder was trained on its images).
Writes bench/results/fusion_tuning.json; docs/relevance.md explains the choice.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from domain.fusion import DEFAULT_FUSION, Fused, FusionConfig, Ranked, fuse
from domain.model import MatchQuality
from fashion_search.shop_evaluation import ATTRIBUTE_KEYS, TOP_K

RESULTS = Path(__file__).resolve().parent / "results" / "fusion_tuning.json"
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
            top = [h.product_id for h in fused.hits[:TOP_K]]
            relevant = [tuple(labels[p].get(k, "") for k in keys) == values for p in top]
            precisions.append(sum(relevant) / TOP_K)
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


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["kaggle-train", "hm-extra"])
