"""Encoding cost at batch 1 on one thread: the latency a single search pays."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from domain.model import Modality
from domain.ports import Encoder


@dataclass(frozen=True)
class Cost:
    encoder_id: str
    ms_per_image_median: float | None
    ms_per_image_min: float | None
    ms_per_text_median: float | None
    ms_per_text_min: float | None
    threads: int
    cpu_ms_per_image_median: float | None = None
    cpu_ms_per_text_median: float | None = None


def _timings(
    calls: Sequence[Any], run: Callable[[Any], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds of each call (CPU time of the calling thread, which
    does all the work at one torch thread; it is less disturbed by other processes)."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(repeats):
        for item in calls:
            started, started_cpu = time.perf_counter(), time.thread_time()
            run(item)
            wall.append((time.perf_counter() - started) * 1000)
            cpu.append((time.thread_time() - started_cpu) * 1000)
    return wall, cpu


def measure_cost(
    encoder: Encoder,
    images: Sequence[bytes],
    texts: Sequence[str],
    repeats: int = 3,
    threads: int = 1,
) -> Cost:
    """Median and best time of encoding one image (bytes to vector: decode, preprocess,
    backbone, heads) and one query text, after a warm-up call. ``threads`` applies to torch
    when it is loaded; an ONNX Runtime encoder has its threads from its options (build it
    with ``torch_threads=threads``)."""
    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch is not None else 0
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        image_ms = text_ms = image_cpu = text_cpu = None
        if Modality.IMAGE in encoder.modalities and images:
            encoder.encode_images([images[0]])
            image_ms, image_cpu = _timings(images, lambda b: encoder.encode_images([b]), repeats)
        if Modality.TEXT in encoder.modalities and texts:
            encoder.encode_texts([texts[0]])
            text_ms, text_cpu = _timings(texts, lambda t: encoder.encode_texts([t]), repeats)
    finally:
        if torch is not None:
            torch.set_num_threads(previous)
    return Cost(
        encoder_id=encoder.id,
        ms_per_image_median=statistics.median(image_ms) if image_ms else None,
        ms_per_image_min=min(image_ms) if image_ms else None,
        ms_per_text_median=statistics.median(text_ms) if text_ms else None,
        ms_per_text_min=min(text_ms) if text_ms else None,
        threads=threads,
        cpu_ms_per_image_median=statistics.median(image_cpu) if image_cpu else None,
        cpu_ms_per_text_median=statistics.median(text_cpu) if text_cpu else None,
    )
