"""A/B of the text tower in one process: transformers' eager BertModel (what TextBackbone
ran before) against encoders.minilm (what it runs now), same texts, interleaved rounds.

    python -m bench.text_backbone [--threads 1] [--rounds 5] [--calls 60]

Prints the median CPU milliseconds of the calling thread per call (all the work runs on it
at one torch thread, so other processes on the machine disturb it less than wall time) at
batch 1 and batch 8, and the largest feature difference between the two."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from bench.latency import query_texts

Features = Callable[[Sequence[str]], np.ndarray]


def eager_features() -> Features:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from encoders.backbones import minilm_path

    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def features(texts: Sequence[str]) -> np.ndarray:
        batch = tokenizer(
            list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            result: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return result

    return features


def cpu_ms(features: Features, batches: Sequence[Sequence[str]]) -> list[float]:
    times = []
    for batch in batches:
        started = time.thread_time()
        features(batch)
        times.append((time.thread_time() - started) * 1000)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.text_backbone", description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=60, help="Calls per round and variant.")
    args = parser.parse_args(argv)

    import torch

    from encoders.backbones import text_backbone

    torch.set_num_threads(args.threads)
    texts = query_texts()
    variants: dict[str, Features] = {
        "transformers eager": eager_features(),
        "encoders.minilm": text_backbone().features,
    }
    diff = float(
        np.abs(variants["encoders.minilm"](texts) - variants["transformers eager"](texts)).max()
    )
    for size in (1, 8):
        batches = [
            [texts[(i * size + j) % len(texts)] for j in range(size)] for i in range(args.calls)
        ]
        times: dict[str, list[float]] = {name: [] for name in variants}
        for features in variants.values():
            features(batches[0])  # warm up
        for _ in range(args.rounds):  # interleaved, so a drifting machine load hits both
            for name, features in variants.items():
                times[name] += cpu_ms(features, batches)
        medians = {name: statistics.median(t) for name, t in times.items()}
        before, after = medians["transformers eager"], medians["encoders.minilm"]
        print(
            f"batch {size}, {torch.get_num_threads()} thread(s): "
            + ", ".join(f"{name} {ms:.2f} ms CPU" for name, ms in medians.items())
            + f" -> {before / after:.2f}x less"
        )
    print(f"max |feature difference| over {len(texts)} texts: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
