"""Seventh round on hm-dev's "<attribute> <type>" gap (issue 15): more levers over the
gated top 30 and the fusion, measured offline on ``bench.fusion_signals``' recordings.

heads-v4 trained on hm-extra, so its hm-extra draws are no test of a lever (P@10 0.83-0.89,
inflated). The H&M-style draws here are recorded with heads-v3, which never saw hm-extra: the
three random draws (seeds 15, 16, 23) and two drawn by whole products (``hm-extra-codes``,
colour variants together, as in hm-dev's held-out split); two Kaggle draws are the no-harm
check. The default is the product's: the fusion, the colour re-rank and the plain-garment
re-rank (``bench.attribute_words``' ranking with ``plain=0.4``).

    export FASHION_SEARCH_ENCODER=fashion-lite:heads-v3
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra /tmp/sig-v3        # and 16, 23
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals kaggle-train /tmp/sig-v3    # and 16
    PYTHONPATH=. .venv/bin/python -m bench.fusion_signals hm-extra-codes /tmp/sig-v3 41  # and 42
    PYTHONPATH=. .venv/bin/python -m bench.hm_levers /tmp/sig-v3 hm-extra hm-extra-16 \\
        hm-extra-23 hm-extra-codes-41 hm-extra-codes-42 kaggle-train kaggle-train-16

Writes bench/results/hm_levers.json (every P@10 change against the default). The same
levers on heads-v4's recordings of hm-extra (seen in training: a no-harm check only):

    PYTHONPATH=. .venv/bin/python -m bench.hm_levers /tmp/sig-v4 hm-extra hm-extra-16 \\
        hm-extra-23 kaggle-train kaggle-train-16 --output bench/results/hm_levers_heads_v4.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import bench.attribute_words as aw
from bench.colour_rerank import histograms
from bench.fusion_signals import GALLERY_SEED, gallery
from bench.fusion_tuning import label_precision
from domain.colour import (
    COLOUR_WORDS,
    HISTOGRAM_BINS,
    HISTOGRAM_DTYPE,
    PLAIN_WORDS,
    colour_mask,
    colour_shares,
)
from domain.fusion import DEFAULT_FUSION, FUSION_DEPTH, FusedHit, Ranked, fuse
from domain.model import PRODUCT_TEXT_SPACE_SUFFIX, Signals
from encoders.backbones import text_backbone
from encoders.fashion_lite.data import HELDOUT_IDS_FILE, KAGGLE_HELDOUT_IDS_FILE, read_ids
from fashion_search.evaluation import LabelledItem, eval_settings
from fashion_search.settings import Settings
from fashion_search.wiring import build
from ingest.readers import open_source

RESULTS = Path(__file__).resolve().parent / "results" / "hm_levers.json"
DEFAULT = aw.Variant(plain=0.4)
DEPTH = 30
NEWTON_STEPS = 25
MIN_LABELLED = 20
ATTRIBUTE_KINDS = ("colour_type", "pattern_type")
"""A colour label needs this many training products to get a learned model."""
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class LogisticRegression:
    """A linear classifier with an L2 penalty of 1/2 (scikit-learn's default), fitted by
    Newton's method: 55 weights need no library."""

    weights: npt.NDArray[np.float64]

    @classmethod
    def fit(cls, rows: npt.NDArray[np.float64], truth: npt.NDArray[np.bool_]) -> LogisticRegression:
        x = np.hstack([rows, np.ones((len(rows), 1))])
        w = np.zeros(x.shape[1])
        penalty = np.eye(x.shape[1])
        penalty[-1, -1] = 0.0  # no penalty on the intercept
        for _ in range(NEWTON_STEPS):
            p = 1.0 / (1.0 + np.exp(-x @ w))
            gradient = x.T @ (p - truth) + penalty @ w
            hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
            w = w - np.linalg.solve(hessian, gradient)
        return cls(w)

    def probability(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        logits = rows @ self.weights[:-1] + self.weights[-1]
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), np.float64)


@dataclass(frozen=True)
class Query:
    """One recorded query with what the levers read."""

    text: str
    ranked: Ranked
    hist: Mapping[str, bytes | None]
    words: Mapping[str, frozenset[str]]
    texts: Mapping[str, tuple[str, str]]
    """Each gallery product's (name, description), lower case."""
    gallery: str = ""

    def default(self) -> list[FusedHit]:
        return aw.ranking(self.text, self.ranked, DEFAULT, self.hist, self.words)

    def gated(self) -> bool:
        return fuse(self.ranked, DEFAULT_FUSION).confidence < DEFAULT.gate


Lever = Callable[[Query], list[FusedHit]]


def _reordered(hits: list[FusedHit], bonus: npt.NDArray[np.float64]) -> list[FusedHit]:
    """The top ``len(bonus)`` re-ranked by rank position / DEPTH - bonus."""
    top = hits[: len(bonus)]
    order = np.argsort(np.arange(len(top)) / DEPTH - bonus, kind="stable").tolist()
    return [top[i] for i in order] + hits[len(top) :]


def semantic_floor_without_colour(floor: float) -> Lever:
    """A higher semantic floor for queries that name no colour (pattern words are in H&M
    descriptions, colours hardly)."""

    def lever(q: Query) -> list[FusedHit]:
        if colour_mask(q.text) is not None:
            return q.default()
        fusion = replace(DEFAULT_FUSION, semantic_floor=floor)
        return aw.ranking(q.text, q.ranked, DEFAULT, q.hist, q.words, fusion)

    return lever


def semantic_rerank(weight: float, colour_queries: bool) -> Lever:
    """The gated top 30 re-ranked by the product-text cosine (standardised over the top 30),
    for colour queries or for the others."""

    def lever(q: Query) -> list[FusedHit]:
        hits = q.default()
        if not q.gated() or (colour_mask(q.text) is not None) != colour_queries:
            return hits
        semantic = dict(q.ranked.semantic)
        scores = np.array([semantic.get(h.product_id, np.nan) for h in hits[:DEPTH]])
        if np.isnan(scores).all():
            return hits
        scores = np.where(np.isnan(scores), np.nanmin(scores), scores)
        z = (scores - scores.mean()) / (scores.std() + 1e-9)
        return _reordered(hits, weight * z / 3)

    return lever


def _stem(word: str) -> str:
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def type_in_name(weight: float) -> Lever:
    """The gated top 30 re-ranked by the share of the query's other words (not colours, not
    "solid") in the product's name (H&M names often end in the garment: "Tilly top")."""

    def lever(q: Query) -> list[FusedHit]:
        hits = q.default()
        asked = {_stem(w) for w in _WORD.findall(q.text)} - set(COLOUR_WORDS) - PLAIN_WORDS
        if not q.gated() or not asked:
            return hits
        names = [
            {_stem(w) for w in _WORD.findall(q.texts.get(h.product_id, ("", ""))[0])}
            for h in hits[:DEPTH]
        ]
        return _reordered(hits, weight * np.array([len(asked & n) / len(asked) for n in names]))

    return lever


def _features(hist: list[bytes | None]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    known = np.array([bool(h) for h in hist])
    rows = np.zeros((len(hist), HISTOGRAM_BINS))
    for i, h in enumerate(hist):
        if h:
            rows[i] = np.frombuffer(h, HISTOGRAM_DTYPE)
    return rows, known


def _probabilities(model: LogisticRegression, hist: list[bytes | None]) -> npt.NDArray[np.float64]:
    rows, known = _features(hist)
    p = np.full(len(hist), 0.5)
    if known.any():
        p[known] = model.probability(rows[known])
        p[~known] = p[known].mean()
    return p


def learned_colour(models: Mapping[str, LogisticRegression], weight: float) -> Lever:
    """The colour share replaced by a colour label's logistic regression on the histogram
    (the longest label phrase the query names; the share where it names none)."""
    phrases = sorted(models, key=len, reverse=True)

    def lever(q: Query) -> list[FusedHit]:
        text = " ".join(_WORD.findall(q.text.casefold()))
        phrase = next((p for p in phrases if re.search(rf"\b{re.escape(p)}\b", text)), None)
        if phrase is None or not q.gated():
            return q.default()
        hits = fuse(q.ranked, DEFAULT_FUSION).hits
        p = _probabilities(models[phrase], [q.hist.get(h.product_id) for h in hits[:DEPTH]])
        return _reordered(hits, weight * p)

    return lever


def learned_plain(model: LogisticRegression, weight: float) -> Lever:
    """For "solid"/"plain" queries, the gated top 30 re-ranked by a logistic regression's
    probability that the histogram is of a Solid garment."""

    def lever(q: Query) -> list[FusedHit]:
        hits = q.default()
        if not q.gated() or PLAIN_WORDS.isdisjoint(_WORD.findall(q.text)):
            return hits
        p = _probabilities(model, [q.hist.get(h.product_id) for h in hits[:DEPTH]])
        return _reordered(hits, weight * p)

    return lever


def colour_variants(from_top: int) -> Lever:
    """Colour queries: the colour variants (same name and description) of the top
    ``from_top`` join the gated top 30 at their variant's position, then the colour re-rank."""

    def lever(q: Query) -> list[FusedHit]:
        mask = colour_mask(q.text)
        if mask is None or not q.gated():
            return q.default()
        hits = fuse(q.ranked, DEFAULT_FUSION).hits
        group: dict[tuple[str, str], list[str]] = {}
        for pid, text in q.texts.items():
            group.setdefault(text, []).append(pid)
        ids = [h.product_id for h in hits[:DEPTH]]
        position = list(range(len(ids)))
        for i, h in enumerate(hits[:from_top]):
            for sibling in group.get(q.texts.get(h.product_id, ("", "")), []):
                if sibling not in ids:
                    ids.append(sibling)
                    position.append(i)
        share = np.nan_to_num(colour_shares([q.hist.get(p) for p in ids], mask))
        key = np.array(position) / DEPTH - DEFAULT.colour * share
        ranked_ids = [ids[i] for i in np.argsort(key, kind="stable")]
        by_id = {h.product_id: h for h in hits}
        out = [by_id.get(p, FusedHit(p, 0.0, Signals())) for p in ranked_ids]
        taken = set(ranked_ids)
        return out + [h for h in hits[DEPTH:] if h.product_id not in taken]

    return lever


def _training(
    signals: Path, exclude: frozenset[str]
) -> tuple[list[bytes | None], list[dict[str, str]]]:
    """Histograms and labels of hm-dev's and Kaggle's training parts (never a held-out split,
    never a product of the measured galleries)."""
    settings = Settings()
    parts = {
        "hm-dev": (settings.datasets_dir / "hm-dev", read_ids(HELDOUT_IDS_FILE)),
        "kaggle": (
            settings.datasets_dir / "kaggle-fashion-small.zip",
            read_ids(KAGGLE_HELDOUT_IDS_FILE),
        ),
    }
    hist: list[bytes | None] = []
    labels: list[dict[str, str]] = []
    for name, (manifest, heldout) in parts.items():
        with open_source(manifest) as source:
            labelled = {i.id: LabelledItem.of(i).labels for i in source}
        ids = frozenset(labelled) - frozenset(heldout) - exclude
        digest = hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:12]
        drawn = histograms(name, ids, manifest, signals / f"training-{name}-{digest}-colour.pkl")
        for pid in sorted(ids):
            hist.append(drawn.get(pid))
            labels.append(labelled[pid])
    return hist, labels


def _fit(rows: npt.NDArray[np.float64], truth: npt.NDArray[np.bool_]) -> LogisticRegression:
    return LogisticRegression.fit(rows, truth)


def colour_models(
    hist: list[bytes | None], labels: list[dict[str, str]]
) -> dict[str, LogisticRegression]:
    rows, known = _features(hist)
    colour = np.array([lab.get("colour", "").strip().casefold() for lab in labels])
    keep = known & (colour != "")
    counts = dict(zip(*np.unique(colour[keep], return_counts=True), strict=True))
    return {
        str(c): _fit(rows[keep], colour[keep] == c)
        for c, n in counts.items()
        if n >= MIN_LABELLED and c not in {"unknown", "undefined", "other", "multi"}
    }


def plain_model(hist: list[bytes | None], labels: list[dict[str, str]]) -> LogisticRegression:
    rows, known = _features(hist)
    pattern = np.array([lab.get("pattern", "") for lab in labels])
    keep = known & (pattern != "")
    return _fit(rows[keep], pattern[keep] == "Solid")


SemanticLists = dict[tuple[str, str], tuple[tuple[str, float], ...]]


def minilm_lists(data: Mapping[str, Any]) -> SemanticLists:
    """(gallery, query) -> the top FUSION_DEPTH products by the raw all-MiniLM-L6-v2
    cosine of query and product words (what the text tower reads before its head)."""
    backbone = text_backbone()
    out: SemanticLists = {}
    for name, (recorded, _, _, texts) in data.items():
        ids = sorted(texts)
        words = [". ".join(t.strip() for t in texts[i] if t.strip()) for i in ids]
        products = np.concatenate(
            [backbone.features(words[i : i + 64]) for i in range(0, len(words), 64)]
        )
        asked = [t for kind in ATTRIBUTE_KINDS for t, _, _ in recorded["queries"].get(kind, [])]
        for text, query in zip(asked, backbone.features(asked), strict=True):
            cosines = products @ query
            best = np.argsort(-cosines)[:FUSION_DEPTH]
            out[name, text] = tuple((ids[i], float(cosines[i])) for i in best)
    return out


def minilm_semantic(lists: SemanticLists, evidence: tuple[float, float], floor: float) -> Lever:
    """The semantic list from raw MiniLM instead of the fashion-lite text tower, with the
    semantic evidence and floor moved to MiniLM's cosines."""
    fusion = replace(
        DEFAULT_FUSION,
        semantic_confident_from=evidence[0],
        semantic_confident_at=evidence[1],
        semantic_floor=floor,
    )

    def lever(q: Query) -> list[FusedHit]:
        ranked = replace(q.ranked, semantic=lists[q.gallery, q.text])
        return aw.ranking(q.text, ranked, DEFAULT, q.hist, q.words, fusion)

    return lever


ImageVectors = dict[str, dict[str, npt.NDArray[np.float32]]]


async def _image_vectors(
    home: Path, ids: list[str], encoder: str | None
) -> dict[str, npt.NDArray[np.float32]]:
    """Unit image vectors of ``ids`` in ``home`` (whose image space must be ``encoder``'s,
    when given)."""
    container = build(eval_settings(Settings(), home))
    try:
        spaces = await container.index.encoder_ids()
        space = next(e for e in spaces if not e.endswith(PRODUCT_TEXT_SPACE_SUFFIX))
        if encoder is not None and space != encoder:
            raise SystemExit(f"{home} holds {space}, not {encoder}")
        found = await container.index.fetch(space, ids)
        vectors = {i: np.asarray(v, np.float32).reshape(-1) for i, v in found.items()}
        return {i: v / np.linalg.norm(v) for i, v in vectors.items()}
    finally:
        await container.aclose()


def image_vectors(
    signals: Path, data: Mapping[str, Any], hm_only: bool = True, encoder: str | None = None
) -> ImageVectors:
    """Each gallery's image vectors (the H&M galleries' only, by default), from the home
    ``bench.fusion_signals`` kept (checked to hold ``encoder``'s vectors, when given)."""
    return {
        name: asyncio.run(_image_vectors(signals / f"{name}-home", sorted(texts), encoder))
        for name, (_, _, _, texts) in data.items()
        if name.startswith("hm") or not hm_only
    }


def image_consensus(vectors: ImageVectors, weight: float, leaders: int, colour: bool) -> Lever:
    """The gated top 30 re-ranked by each product's mean image cosine to the first
    ``leaders`` (standardised): the look the top of the list agrees on. Pattern (and, with
    ``colour``, colour) queries of the H&M galleries."""

    def lever(q: Query) -> list[FusedHit]:
        hits = q.default()
        asks_colour = colour_mask(q.text) is not None
        if q.gallery not in vectors or not q.gated() or (asks_colour and not colour):
            return hits
        rows = np.stack([vectors[q.gallery][h.product_id] for h in hits[:DEPTH]])
        agreement = (rows @ rows[:leaders].T).mean(axis=1)
        z = (agreement - agreement.mean()) / (agreement.std() + 1e-9)
        return _reordered(hits, weight * z / 3)

    return lever


def levers(signals: Path, exclude: frozenset[str], data: Mapping[str, Any]) -> dict[str, Lever]:
    hist, labels = _training(signals, exclude)
    colours, plain = colour_models(hist, labels), plain_model(hist, labels)
    table: dict[str, Lever] = {}
    for f in (0.12, 0.15, 0.2, 0.25):
        table[f"semantic floor {f} for queries naming no colour"] = semantic_floor_without_colour(f)
    for w in (0.05, 0.1, 0.2, 0.4):
        table[f"semantic re-rank {w}, colour queries"] = semantic_rerank(w, True)
        table[f"semantic re-rank {w}, other queries"] = semantic_rerank(w, False)
        table[f"type words in the name {w}"] = type_in_name(w)
    for w in (0.2, 0.4, 0.8, 1.6):
        table[f"learned colour {w} (instead of the share)"] = learned_colour(colours, w)
    for w in (0.1, 0.2, 0.4, 0.8):
        table[f"learned plain {w}"] = learned_plain(plain, w)
    for n in (5, 10, 30):
        table[f"colour variants of the top {n}"] = colour_variants(n)
    for w in (0.3, 0.5, 0.6):
        for depth in (20, 30, 50):
            variant = replace(DEFAULT, colour=w, depth=depth)
            table[f"colour re-rank {w} x share, top {depth}"] = _variant(variant)
    vectors = image_vectors(signals, data)
    for leaders in (5, 10):
        for w in (0.05, 0.1, 0.2, 0.4):
            table[f"image consensus of the top {leaders} {w}, pattern queries"] = image_consensus(
                vectors, w, leaders, colour=False
            )
            table[f"image consensus of the top {leaders} {w}, all queries"] = image_consensus(
                vectors, w, leaders, colour=True
            )
    lists = minilm_lists(data)
    for evidence in ((0.5, 0.7), (0.6, 0.8), (0.7, 0.9)):
        for floor in (0.1, 0.15, 0.2):
            label = f"raw MiniLM semantic, evidence {evidence[0]}..{evidence[1]}, floor {floor}"
            table[label] = minilm_semantic(lists, evidence, floor)
    return table


def _variant(variant: aw.Variant) -> Lever:
    return lambda q: aw.ranking(q.text, q.ranked, variant, q.hist, q.words)


def _texts(manifest: Path, ids: frozenset[str]) -> dict[str, tuple[str, str]]:
    with open_source(manifest) as source:
        return {
            i.id: (i.name.casefold(), (i.description or "").casefold())
            for i in source
            if i.id in ids
        }


def figures(data: Mapping[str, Any], lever: Lever) -> dict[str, float]:
    out = {}
    for name, (recorded, hist, words, texts) in data.items():
        for kind in ATTRIBUTE_KINDS:
            asked = recorded["queries"].get(kind, [])
            if asked:
                p = [
                    label_precision(
                        lever(Query(text, ranked, hist, words, texts, name)),
                        recorded["labels"],
                        *truth,
                    )
                    for text, truth, ranked in asked
                ]
                out[f"{name} {kind}"] = round(float(np.mean(p)), 4)
    return out


def load(signals: Path, galleries: list[str]) -> dict[str, Any]:
    settings = Settings()
    data = {}
    for name, (recorded, hist, words) in aw.load(signals, galleries).items():
        base, _, draw = name.rpartition("-")
        seed = int(draw) if draw.isdigit() else GALLERY_SEED
        manifest, ids = gallery(base if draw.isdigit() else name, settings, seed)
        data[name] = (recorded, hist, words, _texts(manifest, ids))
    return data


def main(signals: Path, galleries: list[str], output: Path = RESULTS) -> None:
    data = load(signals, galleries)
    measured = frozenset().union(*(d[0]["labels"] for d in data.values()))
    base = figures(data, Query.default)
    print("default", json.dumps(base), flush=True)
    table = {}
    for label, lever in levers(signals, measured, data).items():
        got = figures(data, lever)
        table[label] = {k: round(v - base[k], 4) for k, v in got.items()}
        print(label, json.dumps(table[label]), flush=True)
    result = {"signals": str(signals), "galleries": galleries, "default": base, "change": table}
    output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("signals", type=Path)
    parser.add_argument("galleries", nargs="+")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    main(args.signals, args.galleries, args.output)
