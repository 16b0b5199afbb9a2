"""Choosing the default fusion on the *training* parts (never the held-out splits): one
gallery per catalog style (hm-dev and the Kaggle zip, ids outside their held-out splits,
the first N), each fusion configuration's HYBRID column beside VISUAL and TEXT.

    PYTHONPATH=. .venv/bin/python -m bench.fusion_tuning [N]

Writes bench/results/fusion_tuning.json.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from domain.fusion import FusionConfig
from encoders.fashion_lite.data import HELDOUT_IDS_FILE, KAGGLE_HELDOUT_IDS_FILE, read_ids
from fashion_search.evaluation import EvalOptions
from fashion_search.settings import Settings
from fashion_search.shop_evaluation import run_shop_eval
from ingest.readers import open_source

RESULTS = Path(__file__).resolve().parent / "results" / "fusion_tuning.json"
CONFIGS = {
    "coverage2": FusionConfig(),
    "full10": FusionConfig(full_match_depth=10),
    "full10+sem": FusionConfig(full_match_depth=10, semantic_follows_words=True),
    "full10+sem,v2": FusionConfig(
        full_match_depth=10, semantic_follows_words=True, visual_weight=2.0
    ),
    "full20+sem": FusionConfig(full_match_depth=20, semantic_follows_words=True),
}


def training_ids(manifest: Path, heldout: Path) -> frozenset[str]:
    with open_source(manifest) as source:
        every = {item.id for item in source}
    return frozenset(every - read_ids(heldout))


async def main(limit: int) -> None:
    settings = Settings()
    catalogs = {
        "hm-dev": (settings.datasets_dir / "hm-dev", HELDOUT_IDS_FILE),
        "kaggle": (settings.datasets_dir / "kaggle-fashion-small.zip", KAGGLE_HELDOUT_IDS_FILE),
    }
    results = {}
    for name, (manifest, heldout) in catalogs.items():
        options = EvalOptions(
            manifest=manifest,
            encoder_ids=(settings.encoder,),
            ids=training_ids(manifest, heldout),
            selection="training part",
            limit=limit,
        )
        report = await run_shop_eval(options, settings, lambda *_: None, CONFIGS)
        results[name] = report.to_dict()
        print(json.dumps({name: report.metrics}, indent=1), flush=True)
    RESULTS.write_text(json.dumps({"limit": limit, "catalogs": results}, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1200))
