"""Recording each signal's list for the shop-mode queries of one gallery, so fusion
variants can be compared offline (``bench.fusion_tuning``) without searching again.

The gallery is ingested as ``eval --mode shop`` does (names and descriptions, no label
columns) into a kept home (reused when it exists), every attribute, exact-name and
random-letter query goes through ``SearchService`` in HYBRID mode, and the ``Ranked`` lists
the service hands to ``domain.fusion.fuse`` are written, with the gallery's labels, to a
pickle.

    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/signals
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/signals
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/signals 16  # another draw
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra-codes /tmp/signals 41

Galleries (``GALLERIES``): training parts only (never a held-out split) unless the name
ends in ``-heldout``.
"""

from __future__ import annotations

import asyncio
import pickle
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import domain.fusion
import domain.services
from domain import evaluation as ev
from domain.fusion import Ranked
from domain.model import SearchMode, SearchQuery, TextQuery
from encoders.fashion_lite.data import HELDOUT_IDS_FILE, KAGGLE_HELDOUT_IDS_FILE, read_ids
from fashion_search.evaluation import (
    MIN_PRODUCTS,
    SEED,
    EvalOptions,
    LabelledItem,
    eval_settings,
    select_items,
)
from fashion_search.settings import Settings
from fashion_search.shop_evaluation import (
    ATTRIBUTE_KEYS,
    EXACT_NAME_QUERIES,
    RANDOM_STRINGS,
    TOP_K,
    random_strings,
    shop_gallery_item,
    unique_names,
)
from fashion_search.wiring import build
from ingest.pipeline import IngestOptions
from ingest.readers import open_source

GALLERY_SEED = 15
"""Seed of the random gallery samples (training parts)."""
HM_GALLERY = 1518
"""The size of hm-dev's held-out split, so the training galleries are as crowded."""
KAGGLE_GALLERY = 3722
"""The size of the Kaggle held-out split."""


def _all_ids(manifest: Path) -> list[str]:
    with open_source(manifest) as source:
        return [item.id for item in source]


def _whole_products(manifest: Path, n: int, seed: int) -> frozenset[str]:
    """Articles of whole products (``product_code``: colour variants kept together, as in
    hm-dev's held-out split), products in a seeded order, until ``n`` articles."""
    variants: dict[str, list[str]] = {}
    with open_source(manifest) as source:
        for item in source:
            variants.setdefault(item.tags.get("product_code", item.id), []).append(item.id)
    codes = sorted(variants)
    random.Random(seed).shuffle(codes)
    chosen: list[str] = []
    for code in codes:
        if len(chosen) >= n:
            break
        chosen += variants[code]
    return frozenset(chosen)


def gallery(name: str, settings: Settings, seed: int = GALLERY_SEED) -> tuple[Path, frozenset[str]]:
    """(manifest, selected ids) of a named gallery (training parts: a sample drawn with
    ``seed``)."""
    data = settings.datasets_dir

    def _sample(ids: list[str], excluded: frozenset[str], n: int) -> frozenset[str]:
        kept = sorted(set(ids) - excluded)
        return frozenset(random.Random(seed).sample(kept, min(n, len(kept))))

    choices: dict[str, Callable[[], tuple[Path, frozenset[str]]]] = {
        # hm-extra: H&M style, never seen by heads-v3 (heads-v4 trained on it)
        "hm-extra": lambda: (
            data / "hm-extra",
            _sample(_all_ids(data / "hm-extra"), frozenset(), HM_GALLERY),
        ),
        # the same, drawn by whole products (colour variants together, as hm-dev's held-out
        # split is): a query meets the other colours of the products it finds
        "hm-extra-codes": lambda: (
            data / "hm-extra",
            _whole_products(data / "hm-extra", HM_GALLERY, seed),
        ),
        # hm-dev's training part: the encoder was trained on it (its images look too good)
        "hm-train": lambda: (
            data / "hm-dev",
            _sample(_all_ids(data / "hm-dev"), frozenset(read_ids(HELDOUT_IDS_FILE)), HM_GALLERY),
        ),
        "kaggle-train": lambda: (
            data / "kaggle-fashion-small.zip",
            _sample(
                _all_ids(data / "kaggle-fashion-small.zip"),
                frozenset(read_ids(KAGGLE_HELDOUT_IDS_FILE)),
                KAGGLE_GALLERY,
            ),
        ),
        "hm-dev-heldout": lambda: (data / "hm-dev", frozenset(read_ids(HELDOUT_IDS_FILE))),
        "kaggle-heldout": lambda: (
            data / "kaggle-fashion-small.zip",
            frozenset(read_ids(KAGGLE_HELDOUT_IDS_FILE)),
        ),
    }
    return choices[name]()


async def record(name: str, out: Path, seed: int = GALLERY_SEED) -> None:
    settings = Settings()
    manifest, ids = gallery(name, settings, seed)
    options = EvalOptions(manifest=manifest, encoder_ids=(settings.encoder,), ids=ids)
    if seed != GALLERY_SEED:
        name = f"{name}-{seed}"
    home = out / f"{name}-home"
    captured: list[Ranked] = []

    def capturing_fuse(ranked: Ranked, *args: Any, **kwargs: Any) -> Any:
        captured.append(ranked)
        return domain.fusion.fuse(ranked, *args, **kwargs)

    setattr(domain.services, "fuse", capturing_fuse)  # noqa: B010 - the service's own name
    with open_source(manifest) as source:
        items = select_items(source, options)
        fresh = not home.exists()
        home.mkdir(parents=True, exist_ok=True)
        container = build(eval_settings(settings, home))
        try:
            if fresh:
                encoder = container.encoders.get(settings.encoder)
                pipeline = container.ingest_pipeline(
                    [encoder], IngestOptions(), lambda p: print(p.done, p.total, flush=True)
                )
                await pipeline.run([shop_gallery_item(i) for i in items], total=len(items))
            queries = _queries(items)
            recorded: dict[str, list[tuple[str, Any, Ranked]]] = {}
            for kind, asked in queries.items():
                for text, truth in asked:
                    captured.clear()
                    await container.search.search(
                        SearchQuery(text=TextQuery(text), top_k=TOP_K, mode=SearchMode.HYBRID)
                    )
                    recorded.setdefault(kind, []).append((text, truth, captured[0]))
                print(kind, len(asked), flush=True)
        finally:
            await container.aclose()
    labels = {i.item.id: i.labels for i in items}
    with (out / f"{name}.pkl").open("wb") as f:
        pickle.dump({"gallery": name, "labels": labels, "queries": recorded}, f)


def _queries(items: list[LabelledItem]) -> dict[str, list[tuple[str, Any]]]:
    """kind -> (query text, what judges it): label values, the named id, or None."""
    queries: dict[str, list[tuple[str, Any]]] = {}
    for kind, keys in ATTRIBUTE_KEYS.items():
        plan = ev.attribute_queries([i.labels for i in items], keys, MIN_PRODUCTS)
        queries[kind] = [(q.text, (q.keys, q.values)) for q in plan]
    names = unique_names(items, EXACT_NAME_QUERIES, SEED)
    queries["exact_name"] = [(i.name, i.item.id) for i in names]
    queries["random"] = [(t, None) for t in random_strings(RANDOM_STRINGS, SEED)]
    return queries


if __name__ == "__main__":
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else GALLERY_SEED
    asyncio.run(record(sys.argv[1], Path(sys.argv[2]), seed))
