"""What the synonym lexicon costs the lexical stage: ``search_text`` (top 200, from the BM25
snapshot) and ``fuse`` of three top-200 lists on the whole Kaggle catalog's words (14,888
products), with the built-in lexicon and without it, interleaved per query so both arms see
the same load. Queries: ``bench.lexical_cost``'s shopper queries (most have no synonym) and
queries whose words have one (each then searches 2-8 variants).

    flock /work/bench.lock env PYTHONPATH=. .venv/bin/python -m bench.synonym_cost

Writes bench/results/synonym_cost.json.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.lexical_cost import PAGE, QUERIES
from domain.fusion import FUSION_DEPTH, Ranked, fuse
from domain.model import Product
from fashion_search.settings import Settings
from ingest.readers import open_source
from stores.catalog.sqlite_catalog import SqliteCatalog
from stores.synonyms import Lexicon, built_in

RESULTS = Path(__file__).resolve().parent / "results" / "synonym_cost.json"
SYNONYM_QUERIES = [
    "black sweater",
    "grey hoodie",
    "blue pants",
    "white tank top",
    "striped tee",
    "men jeans",
    "gray sneakers",
    "navy blue joggers",
]
ROUNDS = 20


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main() -> None:
    zip_path = Settings().datasets_dir / "kaggle-fashion-small.zip"
    with open_source(zip_path) as source:
        products = [
            Product(id=i.id, name=i.name, description=i.description, tags=i.tags)
            for i in source
            if i.id
        ]
    arms = {"off": Lexicon.empty(), "built-in": built_in()}
    times: dict[str, dict[str, list[float]]] = {
        f"{arm} {kind}": {"lexical": [], "stage": []}
        for arm in arms
        for kind in ("plain queries", "synonym queries")
    }
    rng = np.random.default_rng(0)
    ids = [p.id for p in products]
    with tempfile.TemporaryDirectory() as tmp:
        catalog = SqliteCatalog(Path(tmp) / "catalog.sqlite3")
        catalog.upsert_many_sync(products)
        catalog.build_bm25_snapshot_sync()
        catalog._build_bm25_soon = lambda: None  # type: ignore[method-assign]  # no rebuilds
        for _ in range(ROUNDS):
            for kind, queries in (("plain queries", QUERIES), ("synonym queries", SYNONYM_QUERIES)):
                for query in queries:
                    picked = rng.choice(len(ids), size=2 * FUSION_DEPTH, replace=False)
                    scores = np.sort(rng.random(FUSION_DEPTH))[::-1].tolist()
                    visual = [
                        (ids[i], s) for i, s in zip(picked[:FUSION_DEPTH], scores, strict=True)
                    ]
                    semantic = [
                        (ids[i], s) for i, s in zip(picked[FUSION_DEPTH:], scores, strict=True)
                    ]
                    for arm, lexicon in arms.items():
                        catalog._synonyms = lexicon
                        started = time.thread_time()
                        hits = catalog.search_text_sync(query, FUSION_DEPTH)
                        searched = time.thread_time()
                        fuse(Ranked(visual=visual, semantic=semantic, lexical=hits), limit=PAGE + 1)
                        done = time.thread_time()
                        times[f"{arm} {kind}"]["lexical"].append(searched - started)
                        times[f"{arm} {kind}"]["stage"].append(done - started)
        catalog.close_sync()
    result = {
        "command": "flock /work/bench.lock env PYTHONPATH=. .venv/bin/python -m bench.synonym_cost",
        "catalog": zip_path.name,
        "products": len(products),
        "queries": {"plain queries": QUERIES, "synonym queries": SYNONYM_QUERIES},
        "variants per synonym query": {q: len(built_in().variants(q)) for q in SYNONYM_QUERIES},
        "rounds": ROUNDS,
        "cpu p50 ms (search_text top 200; search_text + fuse)": {
            label: {"lexical": _ms(t["lexical"]), "bm25 + fusion": _ms(t["stage"])}
            for label, t in times.items()
        },
        "note": "CPU time of the calling thread (the stage is single-threaded); the 2-core "
        "machine was shared with other work",
        "load_average": list(os.getloadavg()),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
