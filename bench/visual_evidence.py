"""Visual evidence on other training draws: the fused "<attribute> <type>" P@10 with the
default fusion and with its visual evidence switched off, from signals recorded by
``bench.fusion_signals`` (training parts only; the figures of ``bench.attribute_words``
with the plain-garment re-rank).

    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/sig23 23
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/sig23 23
    PYTHONPATH=. .venv/bin/python -m bench.visual_evidence /tmp/sig23 kaggle-train-23 hm-extra-23
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bench.attribute_words as aw
from domain.colour import DEFAULT_COLOUR_RERANK
from domain.fusion import DEFAULT_FUSION

RESULTS = Path(__file__).resolve().parent / "results" / "visual_evidence_fresh_draw.json"
DEFAULT_VARIANT = aw.Variant(plain=DEFAULT_COLOUR_RERANK.patterned_weight)
"""The default re-rank: colour shares and the plain-garment lever."""


def main(signals: Path, galleries: list[str]) -> None:
    data = aw.load(signals, galleries)
    figures = {}
    for label, config in (
        ("without", aw.WITHOUT_VISUAL_EVIDENCE),
        ("with (the default)", DEFAULT_FUSION),
    ):
        setattr(aw, "DEFAULT_FUSION", config)  # noqa: B010 - the fusion attribute_words ranks with
        figures[label] = aw.figures(data, DEFAULT_VARIANT)
        print(label, json.dumps(figures[label]), flush=True)
    result = {
        "command": "python -m bench.visual_evidence " + " ".join(sys.argv[1:]),
        "galleries": galleries,
        "p@10": figures,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
