"""What each group of shopper-photo changes costs an encoder: photo-style image-image type
P@10 (``fashion-search eval``'s metric) on a sample of hm-dev's held-out queries against the
whole clean held-out gallery, with all of ``EVAL_RANGES``' changes and with one group at a time
(the others neutral: no tilt, perspective, cut, light, blur, noise; 85% of the frame; JPEG 92;
the packshot's own near-white backdrop unless the group is the background).

    PYTHONPATH=. .venv/bin/python -m bench.photo_style_ablation [--sample 300] [--encoder ID]

Writes bench/results/photo_style_ablation.json. For training (issue 18): which change the
heads must learn to ignore first. The sample's queries and seeds are those of the eval, so
"all" matches the eval's figure on the same queries.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import datasets_dir, load_average
from domain import evaluation as ev
from domain.ports import Encoder, Vectors
from encoders.fashion_lite.data import HELDOUT_IDS_FILE, read_ids
from encoders.images import decode_image
from encoders.shopper_photos import EVAL_RANGES, PACKSHOT, PhotoChain, PhotoRanges, Span
from fashion_search.evaluation import SEED
from fashion_search.settings import Settings
from fashion_search.wiring import build_encoders

RESULTS = Path(__file__).resolve().parent / "results" / "photo_style_ablation.json"
SAMPLE = 300
BATCH = 32
NEUTRAL = PhotoRanges(
    rotation_degrees=Span(0.0, 0.0),
    perspective=Span(0.0, 0.0),
    scale=Span(0.85, 0.85),
    cut_probability=0.0,
    cut=Span(0.0, 0.0),
    warm_probability=1.0,
    temperature=Span(0.0, 0.0),
    lighting=Span(0.0, 0.0),
    shadow_opacity=Span(0.0, 0.0),
    blur_radius=Span(0.0, 0.0),
    noise_sigma=Span(0.0, 0.0),
    jpeg_quality=(92, 92),
    backgrounds=(PACKSHOT,),
)
"""The garment cut out and put back on a white backdrop, nothing else changed."""
GROUPS: dict[str, tuple[str, ...]] = {
    "background only": ("backgrounds", "shadow_opacity"),
    "geometry only": ("rotation_degrees", "perspective", "scale", "cut_probability", "cut"),
    "light, blur, noise, JPEG only": (
        "warm_probability",
        "temperature",
        "lighting",
        "blur_radius",
        "noise_sigma",
        "jpeg_quality",
    ),
}


def variants() -> dict[str, PhotoRanges]:
    out = {"all (EVAL_RANGES)": EVAL_RANGES, "cut-out on white, nothing else": NEUTRAL}
    for name, fields in GROUPS.items():
        out[name] = dataclasses.replace(NEUTRAL, **{f: getattr(EVAL_RANGES, f) for f in fields})
    return out


def encode(encoder: Encoder, images: Sequence[bytes]) -> Vectors:
    parts = [encoder.encode_images(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    return np.concatenate(parts).astype(np.float32)


def run(sample: int, encoder_id: str) -> dict[str, Any]:
    root = datasets_dir() / "hm-dev"
    heldout = read_ids(HELDOUT_IDS_FILE)
    with (root / "products.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["id"] in heldout]
    ids = [r["id"] for r in rows]
    types = [r["product_type"] for r in rows]
    photos = [(root / r["image"]).read_bytes() for r in rows]
    encoder = build_encoders(Settings(encoder=encoder_id)).get(encoder_id)
    gallery = encode(encoder, photos)
    known = [i for i, t in enumerate(types) if ev.is_known(t)]
    queries = known[:: max(1, len(known) // sample)][:sample]
    labels = [types[i] for i in queries]
    clean = ev.retrieval_metrics(
        gallery[queries], gallery, labels, types, ks=(10,), exclude_index=queries
    )
    figures: dict[str, float] = {}
    for name, ranges in variants().items():
        started = time.perf_counter()
        copies = [
            PhotoChain.draw(random.Random(f"{SEED}:photo:{ids[i]}"), ranges).apply(
                decode_image(photos[i])
            )
            for i in queries
        ]
        result = ev.retrieval_metrics(
            encode(encoder, copies), gallery, labels, types, ks=(10,), exclude_index=queries
        )
        figures[name] = round(result.precision[10], 3)
        print(f"{name}: {figures[name]:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return {
        "encoder": encoder_id,
        "queries": clean.n_queries,
        "gallery": len(ids),
        "clean image-image type P@10": round(clean.precision[10], 3),
        "photo-style image-image type P@10": figures,
        "load_average": load_average(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=SAMPLE, help="held-out queries")
    parser.add_argument("--encoder", default="fashion-lite")
    args = parser.parse_args(argv)
    result = run(args.sample, args.encoder)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
