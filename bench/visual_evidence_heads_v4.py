"""Does the visual evidence (``FusionConfig.visual_evidence_*``) still sit right on the
encoder's cosine scale after a change of the default image heads? The fused "<attribute>
<type>" P@10 of the training draws (``bench.attribute_words``' figures with the default
re-rank) for a grid of (from, at) pairs around the default and without visual evidence,
with the best text-to-image cosine of the attribute queries per draw (the scale the pair
reads).

    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/sig-v4 15
    ... (kaggle-train and hm-extra, seeds 15, 16, 23)
    PYTHONPATH=. .venv/bin/python -m bench.visual_evidence_heads_v4 /tmp/sig-v4 \\
        kaggle-train kaggle-train-16 kaggle-train-23 hm-extra hm-extra-16 hm-extra-23

Writes bench/results/visual_evidence_heads_v4.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import bench.attribute_words as aw
from bench.visual_evidence import DEFAULT_VARIANT
from domain.fusion import DEFAULT_FUSION, FusionConfig

RESULTS = Path(__file__).resolve().parent / "results" / "visual_evidence_heads_v4.json"
PAIRS = (
    (0.2, 0.3),
    (0.25, 0.35),
    (0.28, 0.36),
    (0.3, 0.4),
    (0.3, 0.45),
    (0.33, 0.45),
    (0.35, 0.45),
    (0.36, 0.5),
    (0.4, 0.5),
    (0.4, 0.55),
)
"""(from, at) pairs around the default (chosen before measuring)."""
SEMANTIC_PAIRS = ((0.45, 0.65), (0.55, 0.75), (0.6, 0.8))
"""The text confidence's semantic pair (``semantic_confident_*``, also on the encoder's
cosine scale) moved up, checked alongside with the default visual evidence."""
KINDS = ("colour_type", "pattern_type")


def best_cosines(data: dict[str, Any], signal: str) -> dict[str, dict[str, float]]:
    """Per draw: quartiles of the attribute queries' best cosine of ``signal``."""
    out = {}
    for name, (recorded, _, _) in data.items():
        best = [
            max(score for _, score in getattr(ranked, signal))
            for kind in KINDS
            for _, _, ranked in recorded["queries"].get(kind, [])
            if getattr(ranked, signal)
        ]
        q = np.percentile(best, [0, 25, 50, 75, 100])
        out[name] = dict(
            zip(("min", "q1", "median", "q3", "max"), np.round(q, 3).tolist(), strict=True)
        )
    return out


def sizes(data: dict[str, Any]) -> dict[str, int]:
    return {
        f"{name} {kind}": len(recorded["queries"][kind])
        for name, (recorded, _, _) in data.items()
        for kind in KINDS
        if recorded["queries"].get(kind)
    }


def ranked_with(config: FusionConfig, data: dict[str, Any]) -> dict[str, float]:
    setattr(aw, "DEFAULT_FUSION", config)  # noqa: B010 - the fusion attribute_words ranks with
    return aw.figures(data, DEFAULT_VARIANT)


def main(signals: Path, galleries: list[str]) -> None:
    data = aw.load(signals, galleries)
    n = sizes(data)
    configs = {"without": aw.WITHOUT_VISUAL_EVIDENCE}
    for low, high in PAIRS:
        label = f"{low} .. {high}"
        if (low, high) == (DEFAULT_FUSION.visual_evidence_from, DEFAULT_FUSION.visual_evidence_at):
            label += " (the default)"
        configs[label] = replace(DEFAULT_FUSION, visual_evidence_from=low, visual_evidence_at=high)
    for low, high in SEMANTIC_PAIRS:
        configs[f"semantic confident {low} .. {high}"] = replace(
            DEFAULT_FUSION, semantic_confident_from=low, semantic_confident_at=high
        )
    base = ranked_with(DEFAULT_FUSION, data)
    table = {}
    for label, config in configs.items():
        got = ranked_with(config, data)
        # relevant results in the top 10, summed over the draw's queries, against the default
        results = {k: round((v - base[k]) * 10 * n[k]) for k, v in got.items()}
        table[label] = {"p@10": got, "results gained": results}
        print(label, json.dumps(got), json.dumps(results), flush=True)
    result = {
        "command": "python -m bench.visual_evidence_heads_v4 " + " ".join(sys.argv[1:]),
        "galleries": galleries,
        "queries": n,
        "best text-to-image cosine of the attribute queries": best_cosines(data, "visual"),
        "best product-text cosine of the attribute queries": best_cosines(data, "semantic"),
        "variants": table,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
