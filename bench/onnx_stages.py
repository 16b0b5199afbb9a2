"""Where one image's encoding goes on ONNX Runtime (batch 1, one thread, issue 19): CPU
milliseconds (``time.thread_time`` of the calling thread, median over the calls) of each
stage of ``FashionLiteEncoder.encode_images([photo])``, for the preprocessing before and
after version 2 and the image tower with float32 and int8 heads, interleaved photo by photo
so that both see the same load.

- before: preprocessing version 1 (the photo padded to a square, then resized; bilinear
  thumbnails; the normalisation computed pixel by pixel; the foreground mask computed twice)
  and the float32 export (``FashionLiteEncoder(float32=True)``);
- after: the current preprocessing and the default export (int8 heads).

Run: ``python -m bench.onnx_stages [--count 20] [--rounds 5]``; results go to
bench/results/onnx-stages.json. The machine is shared: read the before/after pairs, which
alternate, rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from bench.common import RESULTS_DIR
from bench.onnx import MODELS_DIR, add_datasets_argument
from encoders.backbones import (
    BACKGROUND_TOLERANCE,
    F32,
    IMAGENET_MEAN,
    IMAGENET_STD,
    colour_histogram,
    content_box,
    fit_to_square,
    normalised_pixels,
    pad_to_square,
    thumbnail_mask,
)
from encoders.fashion_lite.encoder import FashionLiteEncoder
from encoders.fashion_lite.towers import OnnxTowers
from encoders.images import decode_image

THUMB = 96  # encoders.backbones' thumbnail side
STAGES = ("decode", "thumbnail + mask", "crop, square, normalise", "colour histogram", "network")


def _v1_thumbnail(image: Image.Image) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    return thumb


def _v1_normalised(square: Image.Image) -> F32:
    pixels = np.asarray(square, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def _v1_mask(thumb: Image.Image) -> npt.NDArray[np.bool_]:
    """foreground_mask as version 1 computed it (in float, a max over the channel axis)."""
    rgb = np.asarray(thumb, dtype=np.uint8)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    distance = np.abs(rgb.astype(np.int16) - np.median(border, axis=0)).max(axis=-1)
    mask: npt.NDArray[np.bool_] = distance > BACKGROUND_TOLERANCE
    return mask if mask.mean() >= 0.02 else np.ones(mask.shape, dtype=bool)


def _v1_box(image: Image.Image, mask: npt.NDArray[np.bool_], margin: float = 0.04) -> Any:
    """content_box's arithmetic on a given mask."""
    width, height = image.size
    if mask.all():
        return (0, 0, width, height)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    sx, sy, pad = width / mask.shape[1], height / mask.shape[0], margin * max(width, height)
    return (
        max(0, int(cols[0] * sx - pad)),
        max(0, int(rows[0] * sy - pad)),
        min(width, int((cols[-1] + 1) * sx + pad)),
        min(height, int((rows[-1] + 1) * sy + pad)),
    )


def _timed(times: dict[str, list[float]], stage: str, work: Callable[[], Any]) -> Any:
    started = time.thread_time()
    result = work()
    times.setdefault(stage, []).append((time.thread_time() - started) * 1000)
    return result


def _before(photo: bytes, size: int, session: Any, times: dict[str, list[float]]) -> None:
    image = _timed(times, "decode", lambda: decode_image(photo))
    thumb, mask = _timed(
        times, "thumbnail + mask", lambda: (t := _v1_thumbnail(image), _v1_mask(t))
    )
    pixels = _timed(
        times,
        "crop, square, normalise",
        lambda: _v1_normalised(
            pad_to_square(image.crop(_v1_box(image, mask))).resize(
                (size, size), Image.Resampling.BILINEAR
            )
        ),
    )
    colour = _timed(times, "colour histogram", lambda: _v1_colour(image, thumb))
    _timed(times, "network", lambda: session.run(None, {"pixels": pixels[None], "colour": colour}))


def _v1_colour(image: Image.Image, thumb: Image.Image) -> F32:
    """colour_histogram on version 1's thumbnail, with the mask computed again (as it was)."""
    thumb._fashion_search_mask = _v1_mask(thumb)  # type: ignore[attr-defined]
    image._fashion_search_thumb = thumb  # type: ignore[attr-defined]
    return colour_histogram(image)[None]


def _after(photo: bytes, size: int, session: Any, times: dict[str, list[float]]) -> None:
    image = _timed(times, "decode", lambda: decode_image(photo))
    _timed(times, "thumbnail + mask", lambda: thumbnail_mask(image))
    pixels = _timed(
        times,
        "crop, square, normalise",
        lambda: normalised_pixels(np.asarray(fit_to_square(image.crop(content_box(image)), size))),
    )
    colour = _timed(times, "colour histogram", lambda: colour_histogram(image)[None])
    _timed(times, "network", lambda: session.run(None, {"pixels": pixels[None], "colour": colour}))


def run(photos: Sequence[bytes], rounds: int, models_dir: str) -> dict[str, Any]:
    after = FashionLiteEncoder(torch_threads=1, models_dir=models_dir)
    before = FashionLiteEncoder(torch_threads=1, models_dir=models_dir, float32=True)
    size = after._spec().size
    sessions = {}
    for name, encoder in (("before", before), ("after", after)):
        towers = encoder.towers
        if not isinstance(towers, OnnxTowers):
            raise SystemExit("fashion-lite does not run on ONNX Runtime here")
        sessions[name] = towers._image_session()[0]  # the network alone, on its inputs
    times: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for name, encode in (("before", _before), ("after", _after)):  # warm-up
        encode(photos[0], size, sessions[name], {})
    for _ in range(rounds):
        for photo in photos:
            _before(photo, size, sessions["before"], times["before"])
            _after(photo, size, sessions["after"], times["after"])
    stages = {
        stage: {name: round(statistics.median(times[name][stage]), 2) for name in times}
        for stage in STAGES
    }
    totals = {name: round(sum(stages[s][name] for s in STAGES), 2) for name in times}
    return {"stages_cpu_ms_median": stages, "sum_of_stages": totals, "calls": len(photos) * rounds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_datasets_argument(parser)
    parser.add_argument("--count", type=int, default=20, help="hm-demo photos.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "onnx-stages.json")
    args = parser.parse_args(argv)
    folder = args.datasets / "hm-demo" / "images"
    photos = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[: args.count]]
    models_dir = os.environ.get("FASHION_SEARCH_MODELS_DIR", str(MODELS_DIR))
    result = {
        "command": "python -m bench.onnx_stages " + " ".join(argv or sys.argv[1:]),
        "load_average_at_start": list(os.getloadavg()),
        **run(photos, args.rounds, models_dir),
    }
    result["load_average_at_end"] = list(os.getloadavg())
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
