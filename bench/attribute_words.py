"""Do the products' own words help "<attribute> <type>" queries the words do not answer?
An offline test on the training galleries ``bench.fusion_signals`` recorded (never a
held-out split), with the product's colour re-rank (``domain.colour``) in place.

When the text confidence is below the colour re-rank's gate (H&M-style terse names: the
images lead, the words only nudge), the fused top ``depth`` is re-ranked by

    rank position / depth - colour weight x colour share
                          - words weight x words(product)
                          + plain weight x patterned(product)   ("solid"/"plain" queries)

* ``words``: how much of the query the product's words have, from the lexical list the
  fusion already holds (0 for a product outside it): the matched share ("matched"), or the
  normalised lexical signal (relative BM25 x matched share^2, "lexical");
* ``patterned``: 1 when the product's name or description says it is patterned
  (``domain.colour.PATTERN_WORDS``: "striped", "checked", "printed", "patterned", ...), for
  queries asking for a solid colour, which no product's words say (what the product does);
* ``pattern``: a bonus when the product's words name the query's pattern
  (``PATTERN_FAMILIES``: "stripe" -> "striped", "stripes");
* ``named colour``: a bonus when the product's words name the query's colour, a malus when
  they name only other colours.

Also: the Kaggle queries HYBRID loses against TEXT (lexical + semantic alone), per query.

    PYTHONPATH=. .venv/bin/python -m bench.attribute_words /tmp/signals \\
        kaggle-train hm-extra kaggle-train-16 hm-extra-16

Needs each gallery's ``<name>.pkl`` (``bench.fusion_signals``) and ``<name>-colour.pkl``
(``bench.colour_rerank``, computed here when missing). Writes
bench/results/attribute_words.json.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.colour_rerank import recorded_gallery
from bench.fusion_tuning import label_precision
from domain.colour import (
    COLOUR_WORDS,
    DEFAULT_COLOUR_RERANK,
    PATTERN_WORDS,
    PLAIN_WORDS,
    colour_mask,
    colour_shares,
)
from domain.fusion import DEFAULT_FUSION, FusedHit, FusionConfig, Ranked, fuse, words_score
from fashion_search.settings import Settings
from fashion_search.shop_evaluation import TOP_K
from ingest.readers import open_source

RESULTS = Path(__file__).resolve().parent / "results" / "attribute_words.json"
PATTERN_FAMILIES: dict[str, frozenset[str]] = {
    "stripe": frozenset({"stripe", "striped", "stripes"}),
    "check": frozenset({"check", "checked", "checks", "checkered", "tartan", "gingham"}),
    "dot": frozenset({"dot", "dots", "dotted", "spotted", "polka"}),
    "pattern": frozenset({"pattern", "patterned", "print", "printed"}),
    "print": frozenset({"print", "printed", "prints"}),
    "melange": frozenset({"melange", "marl", "marled"}),
    "denim": frozenset({"denim"}),
    "lace": frozenset({"lace"}),
    "jacquard": frozenset({"jacquard"}),
}
"""A query's pattern word and the words of the products that have it (chosen before
measuring)."""
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Variant:
    colour: float = DEFAULT_COLOUR_RERANK.weight
    words: float = 0.0
    words_kind: str = "matched"
    plain: float = 0.0
    pattern: float = 0.0
    named_colour: float = 0.0
    visual_evidence: tuple[float, float, float] | None = None
    """(from, at, floor): the visual weight times clip((best visual cosine - from) / (at -
    from), floor, 1), for text queries (see ``with_visual_evidence``)."""
    depth: int = DEFAULT_COLOUR_RERANK.depth
    gate: float = DEFAULT_COLOUR_RERANK.gate

    def label(self) -> str:
        parts = [f"colour {self.colour}"]
        if self.words:
            parts.append(f"words ({self.words_kind}) {self.words}")
        if self.plain:
            parts.append(f"plain {self.plain}")
        if self.pattern:
            parts.append(f"pattern {self.pattern}")
        if self.named_colour:
            parts.append(f"named colour {self.named_colour}")
        if self.visual_evidence:
            parts.append("visual evidence {} .. {}, floor {}".format(*self.visual_evidence))
        if self.depth != DEFAULT_COLOUR_RERANK.depth:
            parts.append(f"depth {self.depth}")
        if self.gate != DEFAULT_COLOUR_RERANK.gate:
            parts.append(f"gate {self.gate}")
        return ", ".join(parts)


DEFAULT = Variant()
WITHOUT_VISUAL_EVIDENCE = replace(
    DEFAULT_FUSION, visual_evidence_from=-2.0, visual_evidence_at=-1.0
)
"""The default fusion with its own visual evidence off (every cosine is above
``visual_evidence_at``): what a variant's emulated visual evidence starts from."""


def texts(manifest: Path, ids: frozenset[str]) -> dict[str, frozenset[str]]:
    """Each gallery product's words (name and description, lower case)."""
    out = {}
    with open_source(manifest) as source:
        for item in source:
            if item.id in ids:
                text = f"{item.name} {item.description or ''}".casefold()
                out[item.id] = frozenset(_WORD.findall(text))
    return out


def ranking(
    text: str,
    ranked: Ranked,
    variant: Variant,
    hist: Mapping[str, bytes | None],
    words: Mapping[str, frozenset[str]],
    fusion: FusionConfig = DEFAULT_FUSION,
) -> list[FusedHit]:
    config = fusion
    if variant.visual_evidence is not None:
        ranked = with_visual_evidence(ranked, *variant.visual_evidence)
        config = WITHOUT_VISUAL_EVIDENCE
    fused = fuse(ranked, config)
    hits = fused.hits
    if fused.confidence >= variant.gate:
        return hits
    mask = colour_mask(text)
    asked = set(_WORD.findall(text.casefold()))
    plain = PLAIN_WORDS & asked
    family = frozenset().union(*(PATTERN_FAMILIES.get(w, frozenset()) for w in asked))
    top = hits[: variant.depth]
    key = np.arange(len(top)) / variant.depth
    if mask is not None:
        shares = colour_shares([hist.get(h.product_id) for h in top], mask)
        known = ~np.isnan(shares)
        if known.any():
            shares = np.where(known, shares, float(shares[known].mean()))
            key = key - variant.colour * shares
    if variant.words:
        if variant.words_kind == "matched":
            have = {h.product_id: h.matched for h in ranked.lexical}
        elif variant.words_kind == "full":
            have = {h.product_id: float(h.matched >= 1.0) for h in ranked.lexical}
        else:
            have = words_score(ranked.lexical, DEFAULT_FUSION.matched_exponent)
        key = key - variant.words * np.array([have.get(h.product_id, 0.0) for h in top])
    if plain and variant.plain:
        patterned = [bool(PATTERN_WORDS & words.get(h.product_id, frozenset())) for h in top]
        key = key + variant.plain * np.array(patterned, np.float64)
    asked_colours = asked & COLOUR_WORDS.keys()
    if asked_colours and variant.named_colour:
        named = [words.get(h.product_id, frozenset()) & COLOUR_WORDS.keys() for h in top]
        same = [
            float(bool(n & asked_colours)) - float(bool(n) and not n & asked_colours) for n in named
        ]
        key = key - variant.named_colour * np.array(same, np.float64)
    if family and variant.pattern:
        has = [bool(family & words.get(h.product_id, frozenset())) for h in top]
        key = key - variant.pattern * np.array(has, np.float64)
    order = np.argsort(key, kind="stable").tolist()
    return [top[i] for i in order] + hits[variant.depth :]


def with_visual_evidence(ranked: Ranked, low: float, high: float, floor: float) -> Ranked:
    """The visual weight scaled by how far the best text-to-image cosine reaches (the images
    of 60x80 Kaggle photos hardly see attribute queries: best cosine 0.21-0.52, H&M's
    0.36-0.58). Emulated by dividing the text signals' weights (``text_share``): only the
    weights' ratios order the fused list, and the text confidence does not read them."""
    if not ranked.visual or ranked.image_query:
        return ranked
    best = max(score for _, score in ranked.visual)
    scale = min(1.0, max(floor, (best - low) / (high - low)))
    return replace(ranked, text_share=ranked.text_share / scale)


def figures(data: Mapping[str, Any], variant: Variant) -> dict[str, float]:
    out = {}
    for name, (recorded, hist, words) in data.items():
        for kind in ("colour_type", "pattern_type"):
            asked = recorded["queries"].get(kind, [])
            if not asked:
                continue
            p = [
                label_precision(
                    ranking(text, ranked, variant, hist, words), recorded["labels"], *truth
                )
                for text, truth, ranked in asked
            ]
            out[f"{name} {kind}"] = round(float(np.mean(p)), 4)
    return out


def text_losses(recorded: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The colour queries where HYBRID's top 10 holds fewer relevant results than TEXT's."""
    rows = []
    for text, (keys, values), ranked in recorded["queries"].get("colour_type", []):
        hybrid = fuse(ranked, DEFAULT_FUSION)
        alone = fuse(replace(ranked, visual=()), DEFAULT_FUSION)
        h = label_precision(hybrid.hits, recorded["labels"], keys, values)
        t = label_precision(alone.hits, recorded["labels"], keys, values)
        if h != t:
            rows.append(
                {
                    "query": text,
                    "hybrid": h,
                    "text": t,
                    "confidence": round(hybrid.confidence, 3),
                    "hybrid top": [
                        recorded["labels"][x.product_id].get("colour", "")
                        + "/"
                        + recorded["labels"][x.product_id].get("product_type", "")
                        for x in hybrid.hits[:TOP_K]
                    ],
                }
            )
    return rows


VARIANTS = [
    DEFAULT,
    *(Variant(words=w) for w in (0.1, 0.2, 0.4, 0.8)),
    *(Variant(words=w, words_kind="lexical") for w in (0.1, 0.2, 0.4, 0.8)),
    *(Variant(words=w, words_kind="full") for w in (0.1, 0.2, 0.4, 0.8)),
    *(Variant(plain=w) for w in (0.1, 0.2, 0.3, 0.4, 0.6, 0.8)),
    *(Variant(pattern=w) for w in (0.1, 0.2, 0.4, 0.8)),
    *(Variant(named_colour=w) for w in (0.1, 0.2, 0.4, 0.8)),
    *(Variant(named_colour=w, plain=0.4) for w in (0.1, 0.2, 0.4)),
    *(Variant(pattern=w, plain=p) for w, p in itertools.product((0.2, 0.4), (0.2, 0.4))),
    *(
        Variant(plain=0.4, visual_evidence=(low, high, floor))
        for (low, high), floor in itertools.product(
            (
                (0.2, 0.3),
                (0.25, 0.35),
                (0.28, 0.36),
                (0.3, 0.4),
                (0.33, 0.45),
                (0.36, 0.5),
                (0.4, 0.55),
            ),
            (0.05, 0.1, 0.25, 0.5),
        )
    ),
    *(
        Variant(words=w, words_kind=k, plain=p)
        for k, w, p in itertools.product(("matched", "full"), (0.1, 0.2, 0.4), (0.2, 0.4))
    ),
]


def load(signals: Path, galleries: list[str]) -> dict[str, Any]:
    """Each gallery's recorded signals, colour histograms and product words."""
    settings = Settings()
    data = {}
    for name in galleries:
        drawn = recorded_gallery(signals, name, settings)
        data[name] = (drawn.recorded, drawn.histograms, texts(drawn.manifest, drawn.ids))
    return data


def main(signals: Path, galleries: list[str]) -> None:
    data = load(signals, galleries)
    base_figures = figures(data, DEFAULT)
    table = {}
    for variant in VARIANTS:
        got = figures(data, variant)
        table[variant.label()] = {
            "p@10": got,
            "change": {k: round(v - base_figures[k], 4) for k, v in got.items()},
        }
        print(variant.label(), json.dumps(table[variant.label()]["change"]), flush=True)
    losses = {n: text_losses(r) for n, (r, _, _) in data.items() if n.startswith("kaggle")}
    result = {"galleries": galleries, "default": base_figures, "variants": table}
    result["kaggle: HYBRID (fusion only) against TEXT, queries won / lost"] = {
        n: [sum(r["hybrid"] > r["text"] for r in rows), sum(r["hybrid"] < r["text"] for r in rows)]
        for n, rows in losses.items()
    }
    result["kaggle: queries where HYBRID and TEXT differ"] = losses
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(base_figures, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["kaggle-train", "hm-extra"])
