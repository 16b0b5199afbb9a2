"""The 8-bit copy's score bounds (``stores.vectors.int8_copy``): every row's float32 score
lies within its bound of the 8-bit score, whatever the rows' sizes."""

from __future__ import annotations

import numpy as np

from stores.vectors.int8_copy import TAIL_MIN_ROWS, Int8Copy


def _rows(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows[3] = 0.0  # a zero row
    rows[4] *= 40.0  # a far larger one
    rows[5] = 0.0
    rows[5, 7] = -0.5  # one component only: its code is exact
    return rows


def test_every_score_lies_within_its_bound_of_the_8bit_score() -> None:
    rows = _rows(600, 48, seed=1)
    live = np.ones(len(rows), dtype=np.bool_)
    live[10:20] = False
    copy = Int8Copy(object(), rows[:500], live[:500])
    assert copy.usable  # ONNX Runtime's integer products are numpy's
    queries = [rows[0], rows[4] / 40, *np.random.default_rng(2).standard_normal((5, 48))]
    for query in queries:
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        found, approx, bound = copy.scores(q, rows[500:])
        assert set(found.tolist()) == set(range(600)) - set(range(10, 20))
        exact = rows[found].astype(np.float64) @ q[0].astype(np.float64)
        float32 = rows[found] @ q[0]  # what a float32 scan computes, rounding included
        assert np.all(np.abs(exact - approx) <= bound)
        assert np.all(np.abs(float32 - approx) <= bound)
        assert np.median(bound[:490]) < 0.02 * np.linalg.norm(q)  # tight enough to choose


def test_the_copy_is_stale_after_a_new_index_fewer_rows_or_a_long_tail() -> None:
    rows = _rows(200, 8, seed=3)
    source = object()
    copy = Int8Copy(source, rows, np.ones(200, dtype=np.bool_))
    assert not copy.stale(source, 200)
    assert not copy.stale(source, 200 + TAIL_MIN_ROWS)
    assert copy.stale(source, 200 + TAIL_MIN_ROWS + 1)
    assert copy.stale(source, 199)
    assert copy.stale(object(), 200)
