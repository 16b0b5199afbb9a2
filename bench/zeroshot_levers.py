"""Eighth round on hm-dev's "<attribute> <type>" gap (issue 15): the encoder's own text tower
as a zero-shot attribute scorer on the product image vectors, measured offline on
``bench.fusion_signals``' recordings (training draws only, never a held-out split).

VISUAL ranks by cos(image, text("black trousers")). The lever decomposes the query: the
gated top 30 (where the colour re-rank acts, ``domain.colour``) is re-ranked by

    rank position / 30 - colour weight x colour share + plain weight x patterned
                       - w x standardised(score(image, the query's attribute phrases))

where an attribute phrase is a colour ("black", "dark blue", "off white": the colour words
of ``domain.colour`` with their shades, a finite vocabulary) or a pattern phrase ("solid",
"stripe", "all over pattern": ``PATTERN_PHRASES``), each prompt encoded once by the same
text tower as the signals. Settings:

* prompt form: the bare phrase ("black") or "<phrase> garment";
* score: the cosine, or the cosine minus the mean cosine to the other phrases of the same
  vocabulary ("contrast": a zero-shot classifier's logit at a high temperature, which
  removes how close an image is to every colour word);
* standardisation over the top 30: z-score / 3 (as the seventh round's re-ranks) or rank
  (1 for the best, 0 for the last);
* weight 0.1-0.8; for colour queries with the colour share (0.4, the default) or instead of it;
* a control: the query's own cosine (VISUAL's signal) standardised the same way, to tell a
  gain of the decomposition from a gain of more weight on the images.

    export FASHION_SEARCH_ENCODER=fashion-lite:heads-v3
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/sig-v3        # and 16, 23
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra-codes /tmp/sig-v3 41  # and 42
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/sig-v3    # and 16
    PYTHONPATH=. .venv/bin/python -m bench.zeroshot_levers /tmp/sig-v3 hm-extra hm-extra-16 \\
        hm-extra-23 hm-extra-codes-41 hm-extra-codes-42 kaggle-train kaggle-train-16

Writes bench/results/zeroshot_levers.json (every P@10 change against the default: the fusion,
the colour re-rank and the plain-garment re-rank, as ``bench.hm_levers``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

import domain.colour
from bench.hm_levers import DEFAULT, DEPTH, Query, figures, image_vectors, load
from domain.colour import (
    COLOUR_WORDS,
    PATTERN_WORDS,
    PLAIN_WORDS,
    SHADES,
    colour_mask,
    colour_shares,
)
from domain.fusion import DEFAULT_FUSION, FusedHit, fuse
from fashion_search.evaluation import eval_settings
from fashion_search.settings import Settings
from fashion_search.wiring import build

RESULTS = Path(__file__).resolve().parent / "results" / "zeroshot_levers.json"
_WORD = re.compile(r"[a-z]+")

COLOUR_PHRASES: tuple[str, ...] = tuple(
    [*COLOUR_WORDS, *(f"{s} {c}" for s in SHADES for c in COLOUR_WORDS), "off white"]
)
"""Every colour phrase a query can name (``domain.colour``'s words and their shades)."""
PATTERN_PHRASES: tuple[str, ...] = tuple(sorted(domain.colour.PATTERN_PHRASES))
"""Pattern phrases (``domain.colour.PATTERN_PHRASES``: the plain and pattern words, and the
surface words of a fashion catalog's pattern vocabulary)."""
FORMS: dict[str, Callable[[str], str]] = {
    "bare": lambda p: p,
    "garment": lambda p: f"{p} garment",
}

Vectors = npt.NDArray[np.float32]


def colour_phrases(text: str) -> list[str]:
    """The colour phrases a query names ("dark blue trousers" -> ["dark blue"]), read as
    ``domain.colour.colour_mask`` reads them."""
    words = _WORD.findall(text.casefold())
    found = []
    for i, word in enumerate(words):
        if word not in COLOUR_WORDS:
            continue
        before = words[i - 1] if i else ""
        if before == "off" and word == "white":
            found.append("off white")
        elif before in SHADES:
            found.append(f"{before} {word}")
        else:
            found.append(word)
    return found


def pattern_phrases(text: str) -> list[str]:
    """The pattern phrases a query names, longest first ("all over pattern dress" ->
    ["all over pattern"]): ``domain.colour.pattern_phrases``."""
    return list(domain.colour.pattern_phrases(text))


class Prompts:
    """Each vocabulary phrase's text vector in every prompt form (encoded once)."""

    def __init__(self, encode: Callable[[Sequence[str]], Vectors]) -> None:
        self.vectors: dict[tuple[str, str], dict[str, Vectors]] = {}
        for form, make in FORMS.items():
            for kind, vocabulary in (("colour", COLOUR_PHRASES), ("pattern", PATTERN_PHRASES)):
                encoded = np.asarray(encode([make(p) for p in vocabulary]), np.float32)
                encoded /= np.linalg.norm(encoded, axis=1, keepdims=True)
                self.vectors[form, kind] = dict(zip(vocabulary, encoded, strict=True))

    def score(
        self, images: Vectors, form: str, kind: str, phrases: list[str], contrast: bool
    ) -> npt.NDArray[np.float64]:
        table = self.vectors[form, kind]
        cos = images @ np.stack([table[p] for p in phrases]).T
        score = cos.mean(axis=1).astype(np.float64)
        if contrast:
            others = [v for p, v in table.items() if p not in phrases]
            score -= (images @ np.stack(others).T).mean(axis=1)
        return np.asarray(score, np.float64)


def standardised(scores: npt.NDArray[np.float64], how: str) -> npt.NDArray[np.float64]:
    if how == "z":
        return np.asarray((scores - scores.mean()) / (scores.std() + 1e-9) / 3, np.float64)
    return domain.colour.rank_share(scores)


Scorer = Callable[[Query, list[FusedHit]], npt.NDArray[np.float64] | None]
"""A query's raw attribute score of each of the top DEPTH (None: the lever does not apply)."""


def ranking(
    q: Query,
    scorer: Scorer | None = None,
    weight: float = 0.0,
    how: str = "z",
    colour_weight: float = DEFAULT.colour,
) -> list[FusedHit]:
    """The product's ranking (fusion, gated colour and plain-garment re-ranks) with the
    zero-shot term added to the re-rank's key."""
    fused = fuse(q.ranked, DEFAULT_FUSION)
    hits = fused.hits
    if fused.confidence >= DEFAULT.gate:
        return hits
    top = hits[:DEPTH]
    key = np.arange(len(top)) / DEPTH
    mask = colour_mask(q.text)
    if mask is not None and colour_weight:
        shares = colour_shares([q.hist.get(h.product_id) for h in top], mask)
        known = ~np.isnan(shares)
        if known.any():
            shares = np.where(known, shares, float(shares[known].mean()))
            key = key - colour_weight * shares
    if not PLAIN_WORDS.isdisjoint(_WORD.findall(q.text.casefold())):
        patterned = [bool(PATTERN_WORDS & q.words.get(h.product_id, frozenset())) for h in top]
        key = key + DEFAULT.plain * np.array(patterned, np.float64)
    if scorer is not None and weight:
        scores = scorer(q, top)
        if scores is not None:
            key = key - weight * standardised(scores, how)
    order = np.argsort(key, kind="stable").tolist()
    return [top[i] for i in order] + hits[len(top) :]


ImageVectors = dict[str, dict[str, Vectors]]


def _rows(vectors: ImageVectors, q: Query, top: list[FusedHit]) -> Vectors | None:
    table = vectors.get(q.gallery)
    if table is None or any(h.product_id not in table for h in top):
        return None
    return np.stack([table[h.product_id] for h in top])


def attribute_scorer(
    vectors: ImageVectors, prompts: Prompts, kind: str, form: str, contrast: bool
) -> Scorer:
    phrases_of = colour_phrases if kind == "colour" else pattern_phrases

    def scorer(q: Query, top: list[FusedHit]) -> npt.NDArray[np.float64] | None:
        phrases = phrases_of(q.text)
        rows = _rows(vectors, q, top)
        if not phrases or rows is None:
            return None
        return prompts.score(rows, form, kind, phrases, contrast)

    return scorer


def query_scorer(vectors: ImageVectors, kind: str, query_vectors: Mapping[str, Vectors]) -> Scorer:
    """The control: the query's own text-to-image cosine (VISUAL's signal), for the queries
    the attribute lever of ``kind`` applies to."""
    phrases_of = colour_phrases if kind == "colour" else pattern_phrases

    def scorer(q: Query, top: list[FusedHit]) -> npt.NDArray[np.float64] | None:
        rows = _rows(vectors, q, top)
        if not phrases_of(q.text) or rows is None:
            return None
        return (rows @ query_vectors[q.text]).astype(np.float64)

    return scorer


def remainder(text: str, kind: str) -> str:
    """The query without its attribute phrases ("dark blue trousers" -> "trousers"): the
    type it asks for (the ceiling test: a per-query text encoding)."""
    phrases = colour_phrases(text) if kind == "colour" else pattern_phrases(text)
    rest = " ".join(text.casefold().split())
    for phrase in phrases:
        rest = re.sub(rf"\b{re.escape(phrase)}\b", " ", rest, count=1)
    return " ".join(rest.split())


def type_scorer(
    vectors: ImageVectors,
    kind: str,
    remainders: Mapping[str, Vectors],
    prompts: Prompts | None = None,
) -> Scorer:
    """Ceiling test: the cosine to the query's type words alone (per-query encoding), plus,
    with ``prompts``, the attribute's (bare prompt, contrast), both as z-scores."""
    phrases_of = colour_phrases if kind == "colour" else pattern_phrases

    def scorer(q: Query, top: list[FusedHit]) -> npt.NDArray[np.float64] | None:
        rows = _rows(vectors, q, top)
        phrases = phrases_of(q.text)
        rest = remainders.get(remainder(q.text, kind)) if phrases else None
        if rows is None or rest is None:
            return None
        score = standardised((rows @ rest).astype(np.float64), "z")
        if prompts is not None:
            score += standardised(prompts.score(rows, "bare", kind, phrases, True), "z")
        return score

    return scorer


def encoder(signals: Path, home: str) -> Callable[[Sequence[str]], Vectors]:
    """The signals' encoder (``FASHION_SEARCH_ENCODER``), built on a kept home."""
    settings = Settings()
    container = build(eval_settings(settings, signals / f"{home}-home"))
    return container.encoders.get(settings.encoder).encode_texts


Lever = Callable[[Query], list[FusedHit]]


def levers(
    vectors: ImageVectors,
    prompts: Prompts,
    query_vectors: Mapping[str, Vectors],
    remainders: Mapping[str, Vectors],
) -> dict[str, Lever]:
    table: dict[str, Lever] = {}
    weights = (0.1, 0.2, 0.4, 0.8)
    for kind in ("colour", "pattern"):
        shares = (DEFAULT.colour, 0.0) if kind == "colour" else (DEFAULT.colour,)
        for form, contrast, how, w, share in itertools.product(
            FORMS, (False, True), ("z", "rank"), weights, shares
        ):
            scorer = attribute_scorer(vectors, prompts, kind, form, contrast)
            label = (
                f"{kind}: {form} prompt, {'contrast' if contrast else 'cosine'}, {how}, w {w}"
                + (", instead of the colour share" if kind == "colour" and not share else "")
            )
            table[label] = _lever(scorer, w, how, share)
        for how, w, share in itertools.product(("z", "rank"), weights, shares):
            label = f"{kind} control: the query's own cosine, {how}, w {w}" + (
                ", instead of the colour share" if kind == "colour" and not share else ""
            )
            table[label] = _lever(query_scorer(vectors, kind, query_vectors), w, how, share)
        for w in weights:
            table[f"{kind} ceiling: the query's type words alone (per query), z, w {w}"] = _lever(
                type_scorer(vectors, kind, remainders), w, "z", DEFAULT.colour
            )
            table[f"{kind} ceiling: type words + attribute (bare, contrast), z, w {w}"] = _lever(
                type_scorer(vectors, kind, remainders, prompts), w, "z", DEFAULT.colour
            )
    return table


def _lever(scorer: Scorer, weight: float, how: str, share: float) -> Lever:
    return lambda q: ranking(q, scorer, weight, how, share)


def main(signals: Path, galleries: list[str], output: Path = RESULTS) -> None:
    data = load(signals, galleries)
    for name, (recorded, hist, words, texts) in data.items():  # the re-implementation holds
        for kind in ("colour_type", "pattern_type"):
            for text, _, ranked in recorded["queries"].get(kind, []):
                q = Query(text, ranked, hist, words, texts, name)
                ids = [h.product_id for h in ranking(q)]
                if ids != [h.product_id for h in q.default()]:
                    raise SystemExit(f"ranking differs from the default: {name} {text!r}")
    encode = encoder(signals, galleries[0])
    prompts = Prompts(encode)
    asked = sorted(
        {
            t
            for d in data.values()
            for k in ("colour_type", "pattern_type")
            for t, _, _ in d[0]["queries"].get(k, [])
        }
    )
    query_vectors = dict(zip(asked, np.asarray(encode(asked), np.float32), strict=True))
    rests = sorted({remainder(t, k) for t in asked for k in ("colour", "pattern")} - {""})
    remainders = dict(zip(rests, np.asarray(encode(rests), np.float32), strict=True))
    vectors = image_vectors(signals, data, hm_only=False, encoder=Settings().encoder)
    base = figures(data, Query.default)
    print("default", json.dumps(base), flush=True)
    table = {}
    for label, lever in levers(vectors, prompts, query_vectors, remainders).items():
        got = figures(data, lever)
        table[label] = {k: round(v - base[k], 4) for k, v in got.items()}
        print(label, json.dumps(table[label]), flush=True)
    result = {
        "signals": str(signals),
        "encoder": Settings().encoder,
        "galleries": galleries,
        "default": base,
        "change": table,
    }
    output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("signals", type=Path)
    parser.add_argument("galleries", nargs="+")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    main(args.signals, args.galleries, args.output)
