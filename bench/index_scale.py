"""Benchmark 3, index scale: the FAISS adapter (``FaissVectorIndex``, exactly as the app
builds it: same HNSW threshold and parameters) filled with N clustered synthetic unit vectors
of the encoder's dimension, each size in a fresh process so its memory reads are its own.

Vectors: ``clusters`` centres on the unit sphere; each point is its centre plus a displacement
in a random ``rank``-dimensional subspace of its cluster (norm about ``spread``) plus small
isotropic noise (norm about ``noise``), normalised. That is the shape of real embeddings
(many modes, low intrinsic dimension); a large ``noise`` gives a harder, high-dimensional
case. Queries come from the same distribution and are not in the index.

Measured per size: build time (all upserts, including the automatic flat -> HNSW rebuild),
memory (the process's resident set after the build minus before it, and the peak), the FAISS
structures' own bytes, query p50/p99 through ``query_sync`` (top 10, one thread, as the API
asks) and recall@10 against exact search (computed streaming while building, so the
benchmark never holds all vectors itself). With HNSW, an efSearch sweep shows the
speed/recall trade-off of the chosen parameter.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.common import (
    Check,
    EncoderChoice,
    Json,
    Result,
    Stats,
    at_least,
    at_most,
    console,
    info,
    mib,
    peak_rss_bytes,
    rss_bytes,
)

F32 = npt.NDArray[np.float32]
ENCODER_ID = "bench-synthetic"
TOP_K = 10
QUERY_STREAM = 1_000_003


@dataclass(frozen=True)
class Clustered:
    dim: int
    clusters: int = 1000
    rank: int = 16
    spread: float = 0.6
    noise: float = 0.15
    seed: int = 0


class Generator:
    def __init__(self, spec: Clustered) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 0])
        centres = rng.standard_normal((spec.clusters, spec.dim)).astype(np.float32)
        self.centres: F32 = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        bases = rng.standard_normal((spec.clusters, spec.rank, spec.dim)).astype(np.float32)
        self.bases: F32 = bases / np.sqrt(spec.dim, dtype=np.float32)

    def chunk(self, stream: int, n: int) -> tuple[F32, npt.NDArray[np.int64]]:
        """``n`` unit vectors and their cluster numbers, deterministic per ``stream``."""
        spec = self.spec
        rng = np.random.default_rng([spec.seed, 1, stream])
        cluster = rng.integers(0, spec.clusters, n)
        z = rng.standard_normal((n, spec.rank)).astype(np.float32) * (
            spec.spread / np.sqrt(spec.rank)
        )
        x = self.centres[cluster].copy()
        x += rng.standard_normal((n, spec.dim)).astype(np.float32) * (
            spec.noise / np.sqrt(spec.dim)
        )
        order = np.argsort(cluster, kind="stable")
        bounds = np.searchsorted(cluster[order], np.arange(spec.clusters + 1))
        for k in range(spec.clusters):
            rows = order[bounds[k] : bounds[k + 1]]
            if len(rows):
                x[rows] += z[rows] @ self.bases[k]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x, dtype=np.float32), cluster


class TopK:
    """Exact top-k inner products of fixed queries, merged chunk by chunk."""

    def __init__(self, queries: F32, k: int) -> None:
        self.queries = queries
        self.k = k
        self.scores: F32 = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.rows: npt.NDArray[np.int64] = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, vectors: F32, first_row: int) -> None:
        scores = self.queries @ vectors.T
        k = min(self.k, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        cand_scores = np.concatenate([self.scores, np.take_along_axis(scores, part, 1)], axis=1)
        cand_rows = np.concatenate([self.rows, part + first_row], axis=1)
        best = np.argsort(-cand_scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(cand_scores, best, 1)
        self.rows = np.take_along_axis(cand_rows, best, 1)


def _faiss_bytes(index: Any) -> Json:
    """Bytes of the FAISS structures: vectors, and for HNSW its graph."""
    import faiss as _faiss

    faiss: Any = _faiss  # partial stubs
    out: Json = {"type": type(index).__name__}
    if hasattr(index, "hnsw"):
        storage = faiss.downcast_index(index.storage)
        half = isinstance(storage, faiss.IndexScalarQuantizer)
        per_row = int(storage.code_size) if half else int(storage.d) * 4
        out["vectors"] = int(storage.ntotal) * per_row
        out["graph"] = (
            int(index.hnsw.neighbors.size()) * 4
            + int(index.hnsw.levels.size()) * 4
            + int(index.hnsw.offsets.size()) * 8
        )
    else:
        out["vectors"] = int(index.ntotal) * int(index.d) * 4
        out["graph"] = 0
    out["total"] = out["vectors"] + out["graph"]
    return out


def _python_bytes(space: Any) -> int:
    """Approximate bytes of the adapter's per-row Python bookkeeping: the row -> id list (and
    its strings), the id -> row dict, the live flags and the tag columns."""
    ids: list[str | None] = space.ids
    total = sys.getsizeof(ids) + sum(sys.getsizeof(pid) for pid in ids if pid is not None)
    total += sys.getsizeof(space.rows)
    total += int(space.live.values.nbytes)
    total += sum(int(column.values.nbytes) for column in space.tag_codes.values())
    return total


def _query(index: Any, queries: F32, truth: npt.NDArray[np.int64]) -> tuple[Stats, float]:
    for q in queries[:20]:  # warm up
        index.query_sync(ENCODER_ID, q, TOP_K)
    times: list[float] = []
    hits = 0
    for q, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        found = index.query_sync(ENCODER_ID, q, TOP_K)
        times.append((time.perf_counter() - started) * 1000)
        hits += len({int(pid) for pid, _ in found} & {int(r) for r in expected})
    return Stats.of(times), hits / (len(queries) * TOP_K)


def measure_size(
    n: int,
    spec_json: Json,
    n_queries: int,
    chunk: int,
    ef_sweep: Sequence[int],
    storage: str = "float32",
) -> Json:
    """Runs in a fresh process: build an index of ``n`` vectors and measure it."""
    from fashion_search.settings import Settings
    from stores.vectors.faiss_index import FaissVectorIndex

    spec = Clustered(**spec_json)
    generator = Generator(spec)
    queries, _ = generator.chunk(QUERY_STREAM, n_queries)
    truth = TopK(queries, TOP_K)
    threshold = Settings().faiss_hnsw_threshold
    with tempfile.TemporaryDirectory(prefix="fs-bench-index-") as tmp:
        index = FaissVectorIndex(
            Path(tmp),
            hnsw_threshold=threshold,
            durable=False,
            hnsw_storage="float16" if storage == "float16" else "float32",
        )
        index.count_sync()  # load (nothing) now, not during the first upsert
        gc.collect()
        rss_before = rss_bytes()
        build_s = 0.0
        for stream, start in enumerate(range(0, n, chunk)):
            size = min(chunk, n - start)
            vectors, cluster = generator.chunk(stream, size)
            ids = [str(start + j) for j in range(size)]
            tags = [{"category": f"c{int(c) % 50}"} for c in cluster]
            started = time.perf_counter()
            index.upsert_sync(ENCODER_ID, ids, vectors, tags)
            build_s += time.perf_counter() - started
            truth.add(vectors, start)
            del vectors, cluster, ids, tags
        gc.collect()
        rss_after = rss_bytes()
        peak = peak_rss_bytes()
        kind = index.kind(ENCODER_ID)
        space = index._refresh()[ENCODER_ID]  # diagnostics only: the FAISS object's sizes
        faiss_bytes = _faiss_bytes(space.index)
        python_bytes = _python_bytes(space)

        stats, recall = _query(index, queries, truth.rows)
        sweep: list[Json] = []
        if kind == "hnsw":
            default_ef = index.ef_search
            for ef in ef_sweep:
                index.ef_search = ef
                s, r = _query(index, queries, truth.rows)
                sweep.append(
                    {"ef_search": ef, "latency_ms": s.to_json(), "recall_at_10": round(r, 4)}
                )
            index.ef_search = default_ef
        raw = n * spec.dim * 4
        return {
            "n": n,
            "dim": spec.dim,
            "kind": kind,
            "storage": storage if kind == "hnsw" else "float32",
            "hnsw_threshold": threshold,
            "hnsw": {
                "M": index.hnsw_m,
                "ef_construction": index.ef_construction,
                "ef_search": index.ef_search,
            },
            "build_s": round(build_s, 2),
            "build_vectors_per_s": round(n / build_s, 1) if build_s > 0 else None,
            "raw_float32_bytes": raw,
            "rss_delta_bytes": rss_after - rss_before,
            "rss_delta_ratio": round((rss_after - rss_before) / raw, 3),
            "peak_rss_bytes": peak,
            "peak_over_baseline_ratio": round((peak - rss_before) / raw, 3),
            "faiss_bytes": faiss_bytes,
            "faiss_ratio": round(faiss_bytes["total"] / raw, 3),
            "python_bookkeeping_bytes": python_bytes,
            "python_bookkeeping_ratio": round(python_bytes / raw, 3),
            "query_ms": stats.to_json(),
            "recall_at_10": round(recall, 4),
            "ef_sweep": sweep,
        }


def run(
    *,
    encoder: EncoderChoice,
    sizes: Sequence[int],
    dim: int | None = None,
    queries: int = 200,
    chunk: int = 50_000,
    ef_sweep: Sequence[int] = (64, 128, 256),
    storages: Sequence[str] = ("float32", "float16"),
    clusters: int = 1000,
    rank: int = 16,
    spread: float = 0.6,
    noise: float = 0.15,
) -> Result:
    spec = Clustered(
        dim=dim or encoder.dim, clusters=clusters, rank=rank, spread=spread, noise=noise
    )
    result = Result(
        name="index",
        config={
            "encoder": encoder.to_json(),
            "sizes": list(sizes),
            "vectors": asdict(spec),
            "queries": queries,
            "upsert_chunk": chunk,
            "ef_sweep": list(ef_sweep),
            "hnsw_storages": list(storages),
        },
    )
    rows: list[Json] = []
    from fashion_search.settings import Settings

    threshold = Settings().faiss_hnsw_threshold
    context = multiprocessing.get_context("spawn")
    runs = [
        (n, storage)
        for n in sizes
        for storage in storages
        if n > threshold or storage == storages[0]  # storage only matters for HNSW spaces
    ]
    for n, storage in runs:
        console.print(
            f"[bold]index[/]: {n:,} x {spec.dim}-d vectors, {storage} HNSW storage (fresh process) ..."
        )
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            row: Json = pool.submit(
                measure_size, n, asdict(spec), queries, chunk, list(ef_sweep), storage
            ).result()
        console.print(
            f"  {row['kind']}: build {row['build_s']:.1f} s, memory {mib(row['rss_delta_bytes']):,.0f} MiB "
            f"({row['rss_delta_ratio']:.2f}x raw), p50 {row['query_ms']['p50']:.2f} ms, "
            f"p99 {row['query_ms']['p99']:.2f} ms, recall@10 {row['recall_at_10']:.3f}"
        )
        for s in row["ef_sweep"]:
            console.print(
                f"    efSearch {s['ef_search']}: p50 {s['latency_ms']['p50']:.2f} ms, recall@10 {s['recall_at_10']:.3f}"
            )
        rows.append(row)
    result.data["sizes"] = rows
    result.checks = index_checks(rows)
    return result


def index_checks(rows: Sequence[Json]) -> list[Check]:
    checks: list[Check] = []
    for row in rows:
        kind = f"{row['kind']} {row['storage']}" if row["kind"] == "hnsw" else row["kind"]
        tag = f"[{row['n']:,}, {kind}]"
        checks.append(
            info(
                f"build time {tag}",
                row["build_s"],
                "s",
                f"{row['build_vectors_per_s']:,.0f} vectors/s",
            )
        )
        checks.append(at_least(f"recall@10 {tag}", row["recall_at_10"], 0.95, ""))
        checks.append(info(f"query p99 {tag}", row["query_ms"]["p99"], "ms"))
        if row["n"] >= 1_000_000:
            checks.append(at_most(f"query p50 {tag}", row["query_ms"]["p50"], 2.0, "ms"))
            checks.append(
                at_most(
                    f"memory / raw float32 {tag}",
                    row["rss_delta_ratio"],
                    1.3,
                    "x",
                    f"RSS +{mib(row['rss_delta_bytes']):,.0f} MiB; FAISS alone {row['faiss_ratio']:.2f}x, "
                    f"Python bookkeeping {row['python_bookkeeping_ratio']:.2f}x",
                )
            )
        else:
            checks.append(info(f"query p50 {tag}", row["query_ms"]["p50"], "ms"))
            checks.append(
                info(
                    f"memory / raw float32 {tag}",
                    row["rss_delta_ratio"],
                    "x",
                    f"FAISS alone {row['faiss_ratio']:.2f}x",
                )
            )
    return checks
