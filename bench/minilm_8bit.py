"""What a text search would gain and lose with MiniLM's weights in 8-bit blocks: a lever
for the text encoder call, measured, not adopted (it changes the query vectors, so it is a
relevance decision with its own evaluation).

The text tower's MatMul weights are rewritten as ONNX Runtime ``MatMulNBits`` nodes, the
scheme the image heads' first layers use (``encoders.onnx_build``: 8 bits, one symmetric
scale per block of ``--block`` inputs of each output, the input quantised per block at run
time), into a temporary directory; the shipped float32 export is untouched. On the latency bench's catalog and shopper texts
(``python -m bench latency`` builds it), in-process:

* MiniLM alone, float32 against 8-bit, alternated per text in ``--repeats`` blocks (medians,
  one intra-op thread, as serving runs it);
* the final query vectors (MiniLM, then the text head): cosine of the 8-bit one to the
  float32 one (the exports' parity bar is 0.999 against torch);
* what the searches see: the share of the float32 vector's top 10 and top 200 that the
  8-bit vector finds, in the image space and in the products' words space.

    PYTHONPATH=. .venv/bin/python -m bench.minilm_8bit [--repeats 3] [--block 32]

Writes bench/results/minilm_8bit.json (``--out`` to change). Needs the ``onnx`` package.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.catalog import bench_catalog, catalog_bench_parser
from bench.common import Result, console, write_result
from bench.latency import query_texts
from encoders.onnx_build import INT8_BLOCK

DEPTHS = (10, 200)


def eight_bit_blocks(source: Path, target: Path, block: int) -> int:
    """``source`` (an ONNX model) with each MatMul whose weight is a constant [K, N] with K a
    multiple of ``block`` as a MatMulNBits node, saved at ``target``; how many were."""
    import onnx
    from onnx import helper, numpy_helper

    from encoders.onnx_build import (
        INT8_ACCURACY_LEVEL,
        INT8_LEVELS,
        INT8_MIN_SCALE,
        INT8_ZERO_POINT,
        MS_DOMAIN,
        MS_OPSET,
    )

    model = onnx.load(str(source), load_external_data=True)
    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    nodes, replaced, added = [], set(), []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or numpy_helper.to_array(weight).shape[0] % block:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        k, n = w.shape
        blocks = w.T.reshape(n, k // block, block)
        scale = np.maximum(np.abs(blocks).max(axis=2) / INT8_LEVELS, INT8_MIN_SCALE)
        levels = np.clip(np.rint(blocks / scale[..., None]), -INT8_LEVELS, INT8_LEVELS)
        codes = levels + INT8_ZERO_POINT
        name = node.name or node.output[0]
        added += [
            numpy_helper.from_array(codes.astype(np.uint8), f"{weight.name}.q8"),
            numpy_helper.from_array(scale.astype(np.float32).reshape(-1), f"{weight.name}.s"),
        ]
        replaced.add(weight.name)
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], f"{weight.name}.q8", f"{weight.name}.s"],
                list(node.output),
                name=f"{name}.nbits",
                domain=MS_DOMAIN,
                K=k,
                N=n,
                bits=8,
                block_size=block,
                accuracy_level=INT8_ACCURACY_LEVEL,
            )
        )
    kept = [w for w in graph.initializer if w.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, MS_OPSET))
    onnx.save(model, str(target), save_as_external_data=True, location=target.name + ".weights")
    return len(replaced)


def _overlap(a: Sequence[tuple[str, float]], b: Sequence[tuple[str, float]]) -> float:
    return len({p for p, _ in a} & {p for p, _ in b}) / max(len(a), 1)


def measure(home: Path, repeats: int, block: int, encoder_id: str, work: Path) -> dict[str, Any]:
    from domain.model import product_text_space
    from encoders.fashion_lite.data import query_text
    from encoders.fashion_lite.encoder import FashionLiteEncoder
    from encoders.fashion_lite.towers import TEXT_MAX_TOKENS, OnnxTowers
    from encoders.onnx_models import TEXT_HEAD_FILE, TEXT_OPTIMIZATION, inference_session
    from encoders.tokens import SentenceTokenizer
    from fashion_search.settings import Settings
    from fashion_search.wiring import build_encoders
    from stores.vectors.faiss_index import FaissVectorIndex

    settings = Settings(home=home, encoder=encoder_id, torch_threads=1)
    encoder = build_encoders(settings).get(encoder_id)
    if not isinstance(encoder, FashionLiteEncoder) or not isinstance(encoder.towers, OnnxTowers):
        raise SystemExit("this bench needs fashion-lite on ONNX Runtime")
    towers, minilm = encoder.towers.exported()
    quantised = work / "minilm-8bit.onnx"
    matmuls = eight_bit_blocks(minilm.file("model.onnx"), quantised, block)
    tokenizer = SentenceTokenizer(minilm.file("tokenizer.json"), TEXT_MAX_TOKENS)
    full = inference_session(minilm.file("model.onnx"), 1, TEXT_OPTIMIZATION)
    eight = inference_session(quantised, 1, TEXT_OPTIMIZATION)
    head = inference_session(towers.file(TEXT_HEAD_FILE), 1, TEXT_OPTIMIZATION)
    texts = query_texts()
    feeds = []
    for text in texts:
        ids, mask = tokenizer.token_ids([query_text(text)])  # as encode_texts words it
        feeds.append({"input_ids": ids, "attention_mask": mask})

    def vector(session: Any, feed: Any) -> Any:
        features = session.run(None, feed)[0]
        out = head.run(None, {"features": features})[0][0].astype(np.float64)
        return out / np.linalg.norm(out)

    index = FaissVectorIndex(settings.vectors_dir)
    spaces = {"image space": encoder.id, "words space": product_text_space(encoder.id)}
    cosines: list[float] = []
    found: dict[str, list[float]] = {f"{s} top {d}": [] for s in spaces for d in DEPTHS}
    for feed in feeds:
        a, b = vector(full, feed), vector(eight, feed)
        cosines.append(float(a @ b))
        for label, space in spaces.items():
            for depth in DEPTHS:
                plain = index.query_sync(space, a.astype(np.float32), depth)
                eighth = index.query_sync(space, b.astype(np.float32), depth)
                found[f"{label} top {depth}"].append(_overlap(plain, eighth))
    index.close_sync()
    blocks = []
    for _ in range(repeats):
        timed: dict[str, list[float]] = {"float32": [], "8-bit blocks": []}
        for i, feed in enumerate(feeds):
            pair = [("float32", full), ("8-bit blocks", eight)]
            for label, session in pair if i % 2 == 0 else pair[::-1]:
                started = time.perf_counter()
                session.run(None, feed)
                timed[label].append(time.perf_counter() - started)
        blocks.append(
            {
                "load_average": list(os.getloadavg()),
                "minilm_p50_ms": {
                    k: round(statistics.median(v) * 1000, 3) for k, v in timed.items()
                },
            }
        )
    return {
        "texts": len(texts),
        "matmuls_quantised": matmuls,
        "block": block,
        "query_vector_cosine": {
            "min": round(min(cosines), 6),
            "median": round(statistics.median(cosines), 6),
        },
        "float32_results_found_mean": {k: round(statistics.mean(v), 4) for k, v in found.items()},
        "blocks": blocks,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = catalog_bench_parser("bench.minilm_8bit", __doc__, "minilm_8bit.json")
    parser.add_argument("--repeats", type=int, default=3, help="Timing blocks (A/B each).")
    parser.add_argument("--block", type=int, default=INT8_BLOCK, help="Weights per scale.")
    args = parser.parse_args(argv)
    bench = bench_catalog(args, "bench.minilm_8bit", argv)
    if bench is None:
        return 1
    config = {"home": str(bench.home), "repeats": args.repeats, "block": args.block}
    result = Result(name=args.out.stem, config={**config, "command": bench.command})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="minilm-8bit-") as work:
        result.data = measure(bench.home, args.repeats, args.block, bench.encoder.id, Path(work))
    console.print(result.data)
    path = write_result(result, args.out.parent)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
