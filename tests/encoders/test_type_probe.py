"""The type probe of the scaling diagnostic: it learns separable types, and photo-style
queries are scored against the clean items with the query itself excluded."""

from __future__ import annotations

import numpy as np

from encoders.fashion_lite.data import Item
from encoders.fashion_lite.type_probe import probe_point, probe_scores


def _items(prefix: str, count: int) -> list[Item]:
    kinds = ("Dress", "Trousers")
    return [
        Item(f"{prefix}{n}", "hm", f"{prefix}{n}", "x", "", {"product_type": kinds[n % 2]})
        for n in range(count)
    ]


def test_the_probe_learns_types_and_scores_queries_against_the_clean_items() -> None:
    rng = np.random.default_rng(0)
    train, heldout = _items("t", 60), _items("h", 20)

    def inputs_of(items: list[Item], shift: float) -> dict[str, np.ndarray]:
        centre = {"Dress": 3.0, "Trousers": -3.0}
        return {
            i.id: (rng.normal(0, 1, 16) + centre[i.product_type] + shift).astype(np.float32)
            for i in items
        }

    inputs = inputs_of(train, 0.0) | inputs_of(heldout, 0.0)
    probe = probe_point(train, heldout, inputs, steps=60)
    accuracy, precision = probe_scores(probe, heldout, inputs)
    assert accuracy == 1.0
    assert precision > 0.8  # at most 0.9: 10 items a type, the query itself excluded
    # queries of half the held-out items, labelled by the opposite type's features
    flipped = {i.id: inputs[heldout[k + 1].id] for k, i in enumerate(heldout[:-1]) if k % 2 == 0}
    wrong_accuracy, wrong_precision = probe_scores(probe, heldout, inputs, flipped)
    assert wrong_accuracy == 0.0
    assert wrong_precision < 0.1
