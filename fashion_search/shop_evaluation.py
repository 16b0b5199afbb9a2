"""``fashion-search eval --mode shop``: the search a shop serves, judged by its labels.

Unlike the image-only evaluation (``fashion_search.evaluation``), the gallery keeps the
products' words (name and description) so the lexical and semantic signals can answer; the
label columns the judging reads (type, colour, pattern, section) are left out of the catalog.
Every query goes through ``SearchService.search``, in each mode side by side:

* "<colour> <type>" and "<pattern> <type>" queries (combinations held by at least
  ``min_products`` gallery products): precision@10, a hit counting when it has both labels;
* exact names: products whose name is unique in the gallery, the name typed as it is,
  Recall@1 (the product first);
* no-match honesty: 50 random-letter strings, the share flagged ``MatchQuality.NONE``, beside
  the share of the attribute queries flagged NONE (which should be small).
"""

from __future__ import annotations

import random
import string
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from domain import evaluation as ev
from domain.fusion import FusionConfig
from domain.model import MatchQuality, SearchMode, SearchQuery, TextQuery
from domain.services import SearchService
from fashion_search.evaluation import (
    SEED,
    EvalOptions,
    LabelledItem,
    Progress,
    eval_home,
    eval_settings,
    select_items,
)
from fashion_search.settings import Settings
from fashion_search.wiring import build
from ingest.pipeline import IngestOptions
from ingest.readers import Source, SourceItem, open_source

SHOP_MODES = (SearchMode.VISUAL, SearchMode.TEXT, SearchMode.HYBRID)
RANDOM_STRINGS = 50
RANDOM_LENGTHS = (5, 10)
EXACT_NAME_QUERIES = 300
TOP_K = 10
ATTRIBUTE_KEYS = {
    "colour_type": ("colour", "product_type"),
    "pattern_type": ("pattern", "product_type"),
}


@dataclass
class ShopReport:
    manifest: str
    selection: str
    encoder: str
    gallery: int
    queries: dict[str, int]
    """Metric -> number of queries it averages over."""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Metric -> mode -> value."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "shop",
            "manifest": self.manifest,
            "selection": self.selection,
            "encoder": self.encoder,
            "gallery": self.gallery,
            "queries": self.queries,
            "metrics": self.metrics,
            "seconds": round(self.seconds, 1),
        }


def shop_gallery_item(item: LabelledItem) -> SourceItem:
    """What is ingested: the image, the name and the description; no tags (the labels are
    what the judging reads)."""
    return replace(item.item, tags={})


def random_strings(n: int = RANDOM_STRINGS, seed: int = SEED) -> list[str]:
    """Random lower-case letter strings a shop's search should say it cannot match."""
    rng = random.Random(seed)
    return [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(*RANDOM_LENGTHS)))
        for _ in range(n)
    ]


def unique_names(items: Sequence[LabelledItem], limit: int, seed: int) -> list[LabelledItem]:
    """Up to ``limit`` items whose name no other gallery item has (case and spacing aside)."""
    counts = Counter(" ".join(i.name.casefold().split()) for i in items if i.name)
    unique = [i for i in items if i.name and counts[" ".join(i.name.casefold().split())] == 1]
    rng = random.Random(seed)
    return sorted(rng.sample(unique, min(limit, len(unique))), key=lambda i: i.item.id)


async def _ask(
    search: SearchService, text: str, mode: SearchMode
) -> tuple[list[str], MatchQuality]:
    page = await search.search(SearchQuery(text=TextQuery(text), top_k=TOP_K, mode=mode))
    return [h.product.id for h in page.hits], page.match_quality


async def run_shop_eval(
    options: EvalOptions,
    settings: Settings,
    progress: Progress,
    fusions: Mapping[str, FusionConfig] | None = None,
) -> ShopReport:
    """Ingest the gallery once and measure each mode; ``fusions`` (name -> configuration)
    adds a HYBRID column per configuration, for choosing the default on training parts."""
    started = time.perf_counter()
    with open_source(options.manifest) as source:  # open while ingesting (zip members)
        return await _run(source, options, settings, progress, dict(fusions or {}), started)


async def _run(
    source: Source,
    options: EvalOptions,
    settings: Settings,
    progress: Progress,
    fusions: Mapping[str, FusionConfig],
    started: float,
) -> ShopReport:
    items = select_items(source, options)
    encoder_id = options.encoder_ids[0]
    labels = {i.item.id: i.labels for i in items}
    plans = {
        name: ev.attribute_queries([i.labels for i in items], keys, options.min_products)
        for name, keys in ATTRIBUTE_KEYS.items()
    }
    names = unique_names(items, EXACT_NAME_QUERIES, options.seed)
    nonsense = random_strings(RANDOM_STRINGS, options.seed)
    report = ShopReport(
        manifest=str(options.manifest),
        selection=options.selection,
        encoder=encoder_id,
        gallery=len(items),
        queries={
            **{f"{k}_p@10": len(v) for k, v in plans.items()},
            "exact_name_r@1": len(names),
            "random_none": len(nonsense),
            "attribute_none": sum(len(v) for v in plans.values()),
        },
    )
    with eval_home(options.home) as home:
        container = build(eval_settings(settings, home))
        try:
            encoder = container.encoders.get(encoder_id)
            pipeline = container.ingest_pipeline(
                [encoder],
                IngestOptions(
                    batch_size=options.batch_size,
                    max_image_bytes=container.settings.max_image_bytes,
                ),
                lambda p: progress("gallery", p.done, p.total),
            )
            gallery = [shop_gallery_item(i) for i in items]
            await pipeline.run(gallery, total=len(gallery))
            search = container.search
            for mode in SHOP_MODES:
                progress(f"queries · {mode.value}", 0, None)
                found = await _measure(search, mode, plans, labels, names, nonsense)
                report.metrics = _merge(report.metrics, found)
            for name, fusion in fusions.items():
                progress(f"queries · {name}", 0, None)
                search.fusion = fusion
                found = await _measure(search, SearchMode.HYBRID, plans, labels, names, nonsense)
                renamed = {m: {name: v["hybrid"]} for m, v in found.items()}
                report.metrics = _merge(report.metrics, renamed)
        finally:
            await container.aclose()
    report.seconds = time.perf_counter() - started
    return report


def _merge(
    metrics: dict[str, dict[str, float]], found: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    merged = {k: dict(v) for k, v in metrics.items()}
    for metric, per_mode in found.items():
        merged.setdefault(metric, {}).update(per_mode)
    return merged


async def _measure(
    search: SearchService,
    mode: SearchMode,
    plans: dict[str, list[ev.AttributeQuery]],
    labels: dict[str, dict[str, str]],
    names: Sequence[LabelledItem],
    nonsense: Sequence[str],
) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    attribute_none: list[bool] = []
    for plan_name, queries in plans.items():
        precisions: list[float] = []
        for query in queries:
            ids, quality = await _ask(search, query.text, mode)
            keys = query.keys
            relevant = sum(
                1
                for pid in ids
                if tuple(labels.get(pid, {}).get(k, "") for k in keys) == query.values
            )
            precisions.append(relevant / TOP_K)
            attribute_none.append(quality is MatchQuality.NONE)
        if precisions:
            found[f"{plan_name}_p@10"] = {mode.value: sum(precisions) / len(precisions)}
    if names:
        first = [(await _ask(search, i.name, mode))[0][:1] == [i.item.id] for i in names]
        found["exact_name_r@1"] = {mode.value: sum(first) / len(first)}
    flagged = [(await _ask(search, text, mode))[1] is MatchQuality.NONE for text in nonsense]
    found["random_none"] = {mode.value: sum(flagged) / len(flagged)}
    if attribute_none:
        found["attribute_none"] = {mode.value: sum(attribute_none) / len(attribute_none)}
    return found
