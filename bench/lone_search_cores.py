"""Whether a text search that is alone in its worker gains from the machine's second core,
in-process on the latency bench's catalog (``python -m bench latency`` builds it):

* the text encoder's MiniLM session on one intra-op thread (what serving uses) against the
  same model on two (ONNX Runtime, threads not spinning, as ``encoders.onnx_models``
  configures them);
* the image space and the product-words space scanned side by side on two threads
  (``FaissVectorIndex.query_several_now``, what a lone search does) against one after the
  other on one thread (``query_several_sync``), both right after the query is encoded, as
  in a request (the encoder's weights go through the caches first).

A and B alternate on every query (their order swapped each round), so both see the same
load; medians of wall time over the bench's shopper texts, in ``--repeats`` blocks (the
load of a shared machine drifts within a minute).

    PYTHONPATH=. .venv/bin/python -m bench.lone_search_cores [--rounds 4] [--repeats 3]

Writes bench/results/lone_search_cores.json (``--out`` to change).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.catalog import bench_catalog, catalog_bench_parser
from bench.common import Result, console, write_result
from bench.latency import query_texts

WARMUP = 10


def _median_ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _alternate(
    rounds: int, items: Sequence[Any], a: Callable[[Any], float], b: Callable[[Any], float]
) -> tuple[float, float]:
    """Medians (ms) of ``a`` and ``b`` (each returns its own timed seconds), A then B on
    every item in even rounds, B then A in odd ones."""
    timed: tuple[list[float], list[float]] = ([], [])
    for round_ in range(rounds):
        for item in items:
            order = ((0, a), (1, b)) if round_ % 2 == 0 else ((1, b), (0, a))
            for slot, run in order:
                timed[slot].append(run(item))
    return _median_ms(timed[0]), _median_ms(timed[1])


def measure(home: Path, rounds: int, repeats: int, encoder_id: str) -> dict[str, Any]:
    from domain.model import product_text_space
    from domain.ports import SpaceQuery
    from encoders.fashion_lite.data import query_text
    from encoders.fashion_lite.encoder import FashionLiteEncoder
    from encoders.fashion_lite.towers import TEXT_MAX_TOKENS, OnnxTowers
    from encoders.onnx_models import TEXT_OPTIMIZATION, inference_session
    from encoders.tokens import SentenceTokenizer
    from fashion_search.settings import Settings
    from fashion_search.wiring import build_encoders
    from stores.vectors.faiss_index import FaissVectorIndex

    settings = Settings(home=home, encoder=encoder_id, torch_threads=1)
    encoder = build_encoders(settings).get(encoder_id)
    if not isinstance(encoder, FashionLiteEncoder) or not isinstance(encoder.towers, OnnxTowers):
        raise SystemExit("this bench needs fashion-lite on ONNX Runtime")
    _, minilm = encoder.towers.exported()
    tokenizer = SentenceTokenizer(minilm.file("tokenizer.json"), TEXT_MAX_TOKENS)
    sessions = [
        inference_session(minilm.file("model.onnx"), threads, TEXT_OPTIMIZATION)
        for threads in (1, 2)
    ]
    texts = query_texts()
    feeds = []
    for text in texts:
        ids, mask = tokenizer.token_ids([query_text(text)])  # as encode_texts words it
        feeds.append({"input_ids": ids, "attention_mask": mask})

    def run_session(session: Any) -> Callable[[Any], float]:
        def timed(feed: Any) -> float:
            started = time.perf_counter()
            session.run(None, feed)
            return time.perf_counter() - started

        return timed

    index = FaissVectorIndex(settings.vectors_dir)
    spaces = [encoder.id, product_text_space(encoder.id)]

    def asks(text: str) -> list[SpaceQuery]:
        vector = encoder.encode_texts([text])[0]  # untimed: fills the caches as a request does
        return [SpaceQuery(space, vector, 200) for space in spaces]

    def side_by_side(text: str) -> float:
        queries = asks(text)
        started = time.perf_counter()
        answered = index.query_several_now(queries)
        elapsed = time.perf_counter() - started
        assert answered is not None, "the index was busy or not loaded"
        return elapsed

    def one_after_the_other(text: str) -> float:
        queries = asks(text)
        started = time.perf_counter()
        index.query_several_sync(queries)
        return time.perf_counter() - started

    for i in range(WARMUP):
        for session in sessions:
            session.run(None, feeds[i % len(feeds)])
        index.query_several_sync(asks(texts[i % len(texts)]))
    blocks = []
    for _ in range(repeats):  # the machine's load drifts: each block is its own A/B
        one_thread, two_threads = _alternate(
            rounds, feeds, run_session(sessions[0]), run_session(sessions[1])
        )
        together, apart = _alternate(rounds, texts, side_by_side, one_after_the_other)
        blocks.append(
            {
                "load_average": list(os.getloadavg()),
                "minilm_p50_ms": {
                    "1 intra-op thread": one_thread,
                    "2 intra-op threads": two_threads,
                },
                "both_spaces_top200_after_encode_p50_ms": {
                    "side by side on two threads (query_several_now)": together,
                    "one after the other on one thread (query_several_sync)": apart,
                },
            }
        )
    vectors = {space: index.count_sync(space) for space in spaces}
    index.close_sync()
    return {"queries_per_block": len(texts) * rounds, "vectors": vectors, "blocks": blocks}


def main(argv: Sequence[str] | None = None) -> int:
    parser = catalog_bench_parser("bench.lone_search_cores", __doc__, "lone_search_cores.json")
    parser.add_argument("--rounds", type=int, default=4, help="Passes over the 64 texts.")
    parser.add_argument("--repeats", type=int, default=3, help="A/B blocks, one after another.")
    args = parser.parse_args(argv)
    bench = bench_catalog(args, "bench.lone_search_cores", argv)
    if bench is None:
        return 1
    config = {"home": str(bench.home), "rounds": args.rounds, "repeats": args.repeats}
    result = Result(name=args.out.stem, config={**config, "command": bench.command})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result.data = measure(bench.home, args.rounds, args.repeats, bench.encoder.id)
    for block in result.data["blocks"]:
        for name in ("minilm_p50_ms", "both_spaces_top200_after_encode_p50_ms"):
            for label, ms in block[name].items():
                console.print(f"{label:<58} {ms:8.3f} ms")
    path = write_result(result, args.out.parent)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
