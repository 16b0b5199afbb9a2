"""An 8-bit copy of a flat space's vectors: the first pass of an exact search.

A flat scan of float32 (or float16) rows spends its time reading and converting the rows;
an 8-bit copy holds a quarter of the float32 bytes, and ONNX Runtime's integer matrix
product (MLAS) multiplies them with the query without converting a row to floats. The
8-bit scores only choose candidates: the answer is still the float32 scan's, restricted to
them (``faiss_index._prefiltered``), so the ids, scores, order and ties are those of the
full scan.

Why the candidates cannot miss a row of the exact top k
    Each row is stored as ``x^_i = scale_i * code_i`` (integers in [-127, 127], one scale
    per row); the query as ``q^ = s1 * c1 + s2 * c2``, two rows of integers in [-63, 63]
    (the second codes what the first leaves over, so ``q^`` is within about 1e-4 of ``q``).
    The integer products are exact (int32), so the 8-bit score ``a_i = q^ . x^_i`` differs
    from the true ``q . x_i`` by at most ``|q| |x_i - x^_i| + |q - q^| |x^_i|``
    (Cauchy-Schwarz on each rounding), and the float32 score FAISS computes differs from the
    true one by at most the rounding of a float32 dot product (``2 d u |q| |x|``, doubled
    for safety). So each row's score lies in ``[a_i - b_i, a_i + b_i]``; the k-th best lower
    bound ``tau`` is at most the exact k-th score, and every row whose score reaches it
    (ties included) has ``a_i + b_i >= tau``.

Why 7 bits for the query
    On x86 without VNNI, MLAS sums pairs of uint8 x int8 products in 16 bits with
    saturation; with the query's codes shifted into [1, 127] a pair of products stays below
    2**15, so the integer products are exact on every kernel. The copy checks this once
    when it is built (an extreme query and a random one against numpy) and is not used when
    they differ.

Rows appended after the copy was built (a serving process that picks up an ingest) are
scored exactly in float64 until they are more than ``1 / TAIL_SHARE`` of the copy, then
the copy is rebuilt; tombstoned rows stay in the copy and are masked out at query time.
Memory: a quarter of the space's float32 vector bytes (the packed matrix), plus three
float64 numbers per row."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from domain.ports import Vectors

ROW_LEVELS = 127
QUERY_LEVELS = 63
"""Largest query code: with the shift, uint8 x int8 pairs never saturate 16-bit sums."""
QUERY_ZERO = 64
"""The query's codes are shifted by this into uint8 (ONNX Runtime removes the shift)."""
TAIL_SHARE = 8
TAIL_MIN_ROWS = 1024
CHUNK_ROWS = 8192
FLOAT32_ROUNDING = 2.0**-24
OPSET = 17

FloatArray = npt.NDArray[np.float64]
StoredRows = npt.NDArray[np.float32] | npt.NDArray[np.float16]
IntArray = npt.NDArray[np.int64]


class Int8Copy:
    """The 8-bit copy of the rows of ``source`` (a flat FAISS index) that were live when it
    was built; see the module docstring."""

    def __init__(self, source: Any, vectors: StoredRows, live: npt.NDArray[np.bool_]) -> None:
        self.source = source  # the flat index it copies
        self.covered = len(vectors)
        """Rows of the space when it was built; later rows are the tail."""
        self.rows: IntArray = np.flatnonzero(live).astype(np.int64)
        self.dim = int(vectors.shape[1])
        n = len(self.rows)
        self.scale: FloatArray = np.ones(n)
        self.error: FloatArray = np.zeros(n)
        codes = np.zeros((n, self.dim), dtype=np.int8)
        self.norm = 0.0
        """The largest norm of a row."""
        self.size = 0.0
        """The largest norm of a row's 8-bit copy."""
        for start in range(0, n, CHUNK_ROWS):  # float64 temporaries of a bounded size
            part = slice(start, start + CHUNK_ROWS)
            wide = np.asarray(vectors[self.rows[part]], dtype=np.float64)
            peak = np.abs(wide).max(axis=1)
            self.scale[part] = np.where(peak > 0, peak / ROW_LEVELS, 1.0)
            chunk = np.rint(wide / self.scale[part, None])
            restored = chunk * self.scale[part, None]
            self.error[part] = np.linalg.norm(wide - restored, axis=1)
            self.size = max(self.size, float(np.linalg.norm(restored, axis=1).max()))
            self.norm = max(self.norm, float(np.linalg.norm(wide, axis=1).max()))
            codes[part] = chunk
        self._session = _matmul_session(codes)
        self.usable = n > 0 and self._exact_products(codes)

    def stale(self, source: Any, n_rows: int) -> bool:
        """Whether the space moved past this copy: a new index (a compaction), fewer rows,
        or a tail longer than a rebuild costs."""
        tail = n_rows - self.covered
        limit = max(TAIL_MIN_ROWS, len(self.rows) // TAIL_SHARE)
        return source is not self.source or tail < 0 or tail > limit

    def scores(self, query: Vectors, tail: StoredRows) -> tuple[IntArray, FloatArray, FloatArray]:
        """(space rows, 8-bit scores, bounds) of the copy's rows and then of ``tail`` (the
        space's rows from ``covered`` on, scored exactly)."""
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        scales, codes = _two_rows(q)
        q_error = float(np.linalg.norm(q - scales @ codes))
        size = float(np.linalg.norm(q))
        shifted = (codes + QUERY_ZERO).astype(np.uint8)
        products = self._session.run(None, {"q": shifted})[0]
        approx = products[0] * scales[0]
        approx += products[1] * scales[1]
        approx *= self.scale
        slack = 1 + 1e-6  # for the float64 arithmetic of the bounds
        bound = self.error * (size * slack)
        bound += (q_error * self.size + self.rounding(size, self.norm)) * slack + 1e-9
        if not len(tail):
            return self.rows, approx, bound
        exact = np.asarray(tail, dtype=np.float64) @ q
        norms = float(np.linalg.norm(np.asarray(tail, dtype=np.float64), axis=1).max())
        tail_bound = np.full(len(tail), self.rounding(size, norms) * (1 + 1e-6) + 1e-9)
        rows = np.concatenate([self.rows, np.arange(self.covered, self.covered + len(tail))])
        return rows, np.concatenate([approx, exact]), np.concatenate([bound, tail_bound])

    def rounding(self, query_norm: float, row_norm: float) -> float:
        """How far FAISS's float32 dot product may be from the true one."""
        return 2 * 2 * self.dim * FLOAT32_ROUNDING * query_norm * row_norm

    def _exact_products(self, codes: npt.NDArray[np.int8]) -> bool:
        """Whether ONNX Runtime's integer products equal numpy's on an extreme and a random
        query (a kernel that saturated would differ). Sums of such products stay below
        2**24, so float32 holds them exactly."""
        rng = np.random.default_rng(0)
        extreme = np.full(self.dim, QUERY_LEVELS, dtype=np.float32)
        random = rng.integers(-QUERY_LEVELS, QUERY_LEVELS + 1, self.dim).astype(np.float32)
        query = np.stack([extreme, random])
        got = self._session.run(None, {"q": (query + QUERY_ZERO).astype(np.uint8)})[0]
        for start in range(0, len(codes), CHUNK_ROWS):
            part = codes[start : start + CHUNK_ROWS].astype(np.float32)
            if not np.array_equal(got[:, start : start + CHUNK_ROWS], query @ part.T):
                return False
        return True


def _two_rows(query: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(scales [2], codes [2, dim]): the query's codes and the codes of what they leave
    over, each within QUERY_LEVELS."""
    first = _scale(query)
    codes = np.empty((2, len(query)))
    np.rint(query / first, out=codes[0])
    rest = query - first * codes[0]
    second = _scale(rest)
    np.rint(rest / second, out=codes[1])
    return np.array([first, second]), codes


def _scale(values: FloatArray) -> float:
    peak = float(np.abs(values).max())
    return peak / QUERY_LEVELS if peak > 0 else 1.0


def _matmul_session(codes: npt.NDArray[np.int8]) -> ort.InferenceSession:
    """An ONNX Runtime session computing ``(q - QUERY_ZERO) @ codes.T`` in int32 for two
    uint8 query rows, on one thread (a search runs on its caller's thread)."""
    n, dim = codes.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["q", "codes", "zero"], ["products"])],
        "int8_copy",
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [2, dim])],
        [helper.make_tensor_value_info("products", TensorProto.INT32, [2, n])],
        [
            numpy_helper.from_array(np.ascontiguousarray(codes.T), "codes"),
            numpy_helper.from_array(np.array(QUERY_ZERO, dtype=np.uint8), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
