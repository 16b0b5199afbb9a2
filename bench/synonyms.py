"""The synonym lexicon (``stores.synonyms``) on the training draws: each recorded query's
lexical list is asked again from the gallery's own catalog with and without the lexicon (and
at other synonym weights), put in place of the recorded one, and ranked as the service does
(the default fusion, its colour and plain-garment re-rank); nothing else is searched again
(the lexicon changes only the lexical list). Training parts only (``bench.fusion_signals``).

    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/signals   # and 16
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/signals       # and 16
    PYTHONPATH=. .venv/bin/python -m bench.synonyms /tmp/signals \\
        kaggle-train hm-extra kaggle-train-16 hm-extra-16

Needs ``<name>.pkl``, ``<name>-colour.pkl`` and ``<name>-home/catalog.sqlite3`` (the home
``bench.fusion_signals`` ingested; opened read-mostly: copy it first to keep the original
untouched). "off" must reproduce the recorded lists exactly (checked: ``off_equals_recorded``).
Writes bench/results/synonyms.json (``--output FILE``: another file, e.g. for a fresh draw).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import bench.attribute_words as aw
import stores.synonyms
from bench.fusion_tuning import measure
from domain.colour import DEFAULT_COLOUR_RERANK
from domain.fusion import DEFAULT_FUSION, FUSION_DEPTH, Ranked, fuse
from domain.services import SearchService
from stores.catalog.sqlite_catalog import SqliteCatalog
from stores.synonyms import Lexicon, built_in

RESULTS = Path(__file__).resolve().parent / "results" / "synonyms.json"
DEFAULT_VARIANT = aw.Variant(plain=DEFAULT_COLOUR_RERANK.patterned_weight)
WEIGHTS = (0.6, 0.8, 1.0)
"""Synonym weights measured besides "off" (the weight of a variant per replaced phrase)."""
CREDITS = (1.0, 0.8, 0.5, 0.0)
"""How much a word matched through a synonym counts in the matched share (1: fully)."""


def relisted(recorded: Mapping[str, Any], catalog: SqliteCatalog) -> dict[str, Any]:
    """The recorded queries with their lexical list (and exact matches) asked again."""
    queries: dict[str, list[tuple[str, Any, Ranked]]] = {}
    for kind, asked in recorded["queries"].items():
        out = []
        for text, truth, ranked in asked:
            lexical = catalog.search_text_sync(text, FUSION_DEPTH)
            exact = SearchService._exact(text, lexical)  # the service's own rule
            out.append((text, truth, replace(ranked, lexical=lexical, exact=exact)))
        queries[kind] = out
    return {**recorded, "queries": queries}


def same_lists(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    for kind, asked in a["queries"].items():
        for (_, _, x), (_, _, y) in zip(asked, b["queries"][kind], strict=True):
            ids = [h.product_id for h in x.lexical] == [h.product_id for h in y.lexical]
            if not ids or list(x.exact) != list(y.exact):
                return False
    return True


def main(signals: Path, galleries: list[str], output: Path = RESULTS) -> None:
    data = aw.load(signals, galleries)
    settings: list[tuple[str, Lexicon, float, float]] = [("off", Lexicon.empty(), 1.0, 1.0)]
    settings += [
        (f"built-in, weight {w}, credit {c}", built_in(), w, c)
        for w, c in itertools.product(WEIGHTS, CREDITS)
    ]
    figures: dict[str, dict[str, float]] = {}
    checks: dict[str, bool] = {}
    defaults = stores.synonyms.SYNONYM_WEIGHT, stores.synonyms.SYNONYM_CREDIT
    for label, lexicon, weight, credit in settings:
        # read by Lexicon.variants at each call
        stores.synonyms.SYNONYM_WEIGHT, stores.synonyms.SYNONYM_CREDIT = weight, credit
        figures[label] = {}
        for name, (recorded, hist, words) in data.items():
            catalog = SqliteCatalog(signals / f"{name}-home" / "catalog.sqlite3", lexicon)
            catalog.build_bm25_snapshot_sync()
            again = relisted(recorded, catalog)
            if label == "off":
                checks[name] = same_lists(recorded, again)
            got = aw.figures({name: (again, hist, words)}, DEFAULT_VARIANT)
            rank: Callable[[Ranked], Any] = lambda r: fuse(r, DEFAULT_FUSION)  # noqa: E731
            other = measure(again, rank)
            got.update({f"{name} {k}": v for k, v in other.items() if "p@10" not in k})
            figures[label].update(got)
        print(label, json.dumps(figures[label]), flush=True)
    stores.synonyms.SYNONYM_WEIGHT, stores.synonyms.SYNONYM_CREDIT = defaults
    base = figures["off"]
    result = {
        "command": "python -m bench.synonyms " + " ".join(sys.argv[1:]),
        "galleries": galleries,
        "off_equals_recorded": checks,
        "load average": os.getloadavg(),
        "p@10 and flags": figures,
        "change against off": {
            label: {k: round(v - base[k], 4) for k, v in got.items()}
            for label, got in figures.items()
            if label != "off"
        },
    }
    output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    args = sys.argv[2:]
    if "--output" in args:
        at = args.index("--output")
        main(Path(sys.argv[1]), args[:at] + args[at + 2 :], Path(args[at + 1]))
    else:
        main(Path(sys.argv[1]), args)
