"""Cached backbone features for training: the image and text backbones are frozen while the
heads train, so their outputs are computed once per image (or view) and text and kept in
.npz files keyed by item id / text. A rerun, or another run on the same images with the same
preprocessing, reads them instead of running the backbones again."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from encoders.augment import augment_image
from encoders.backbones import ImageBackboneSpec, image_backbone, image_inputs, text_backbone
from encoders.fashion_lite.data import Item
from encoders.fashion_lite.photo_views import photo_view
from encoders.images import decode_image
from encoders.shopper_photos import EVAL_RANGES, PhotoChain

F32 = npt.NDArray[np.float32]
Progress = Callable[[str, int, int], None]
Transform = Callable[[Item, bytes], bytes]

IMAGE_BATCH = 32  # images per progress report (the backbone still runs one image per call)
CHECKPOINT_BATCHES = 64  # write the cache every this many batches (keeps work if interrupted)
TEXT_BATCH = 64
TEXT_DIM = 384  # all-MiniLM-L6-v2

# The kinds of augmented view of a training image (see ``view_transform``).
PACKSHOT_VIEW = "augmented"  # encoders.augment: crop 80-95%, flip, brightness/contrast, JPEG
SHOPPER_VIEW = "photo"  # photo_views: background, rotation, perspective, cut, light, blur
# the photo-style query of `fashion-search eval` (encoders.shopper_photos, EVAL_RANGES): for
# validation only, never a training view
EVAL_PHOTO_VIEW = "photo-style"


def fingerprint(*parts: str) -> str:
    """A short stable name for cache files (16 hex digits of a SHA-256)."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def view_transform(kind: str, seed: int) -> Transform:
    """The transform of one augmented view: each item's image altered by an rng seeded with
    the view's seed and the item's id (the same view on every run)."""
    if kind == EVAL_PHOTO_VIEW:
        return lambda item, data: eval_photo_query(data, item.id, seed)
    alter = {PACKSHOT_VIEW: augment_image, SHOPPER_VIEW: photo_view}[kind]

    def transform(item: Item, data: bytes) -> bytes:
        return alter(decode_image(data), random.Random(f"{seed}:{item.id}"))

    return transform


def eval_photo_query(data: bytes, product_id: str, seed: int) -> bytes:
    """The photo-style query ``fashion-search eval`` makes of a product photo (the chain of
    ``fashion_search.evaluation.photo_style_chain``: EVAL_RANGES, seeded by seed and id)."""
    chain = PhotoChain.draw(random.Random(f"{seed}:photo:{product_id}"), EVAL_RANGES)
    return chain.apply(decode_image(data))


def image_features(
    items: Sequence[Item],
    load: Callable[[Item], bytes],
    spec: ImageBackboneSpec,
    cache_file: Path,
    progress: Progress | None = None,
    transform: Transform | None = None,
    crop: bool = False,
) -> tuple[F32, F32]:
    """Backbone features [n, dim] and colour stats [n, COLOUR_DIM] of the items' images,
    read from / added to ``cache_file`` (keyed by item id)."""
    cached = _read_image_cache(cache_file)
    missing = [item for item in items if item.id not in cached]
    if missing:
        backbone = image_backbone(spec)
        for start in range(0, len(missing), IMAGE_BATCH):
            chunk = missing[start : start + IMAGE_BATCH]
            arrays, colours = [], []
            for item in chunk:
                data = load(item)
                if transform is not None:
                    data = transform(item, data)
                array, colour = image_inputs(decode_image(data), spec.size, crop)
                arrays.append(array)
                colours.append(colour)
            cnn = backbone.features(arrays)
            for item, row, colour in zip(chunk, cnn, colours, strict=True):
                cached[item.id] = (row, colour)
            if progress is not None:
                progress(f"image features ({cache_file.stem})", start + len(chunk), len(missing))
            if (start // IMAGE_BATCH) % CHECKPOINT_BATCHES == CHECKPOINT_BATCHES - 1:
                _save_image_cache(cached, cache_file)
        _save_image_cache(cached, cache_file)
    cnn_out = np.stack([cached[item.id][0] for item in items]).astype(np.float32)
    colour_out = np.stack([cached[item.id][1] for item in items]).astype(np.float32)
    return cnn_out, colour_out


def _read_image_cache(cache_file: Path) -> dict[str, tuple[F32, F32]]:
    cached: dict[str, tuple[F32, F32]] = {}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as data:
            for key, cnn, colour in zip(data["ids"], data["cnn"], data["colour"], strict=True):
                cached[str(key)] = (cnn, colour)
    return cached


def _save_image_cache(cached: dict[str, tuple[F32, F32]], cache_file: Path) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(cached)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        ids=np.array(ids),
        cnn=np.stack([cached[i][0] for i in ids]).astype(np.float32),
        colour=np.stack([cached[i][1] for i in ids]).astype(np.float32),
    )
    tmp.replace(cache_file)


def text_features(texts: Sequence[str], cache_file: Path, progress: Progress | None = None) -> F32:
    """MiniLM features [n, TEXT_DIM] of the texts, read from / added to ``cache_file``."""
    cached = _read_text_cache(cache_file)
    missing = sorted({t for t in texts if t not in cached}, key=len)
    if missing:
        backbone = text_backbone()
        for start in range(0, len(missing), TEXT_BATCH):
            chunk = missing[start : start + TEXT_BATCH]
            for text, row in zip(chunk, backbone.features(chunk), strict=True):
                cached[text] = row
            if progress is not None:
                progress("text features", start + len(chunk), len(missing))
        for text, row in _read_text_cache(cache_file).items():  # another run's additions
            cached.setdefault(text, row)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(cached)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            texts=np.array(keys),
            features=np.stack([cached[k] for k in keys]).astype(np.float32),
        )
        tmp.replace(cache_file)
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    return np.stack([cached[t] for t in texts]).astype(np.float32)


def _read_text_cache(cache_file: Path) -> dict[str, F32]:
    cached: dict[str, F32] = {}
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as data:
            for text, row in zip(data["texts"], data["features"], strict=True):
                cached[str(text)] = row
    return cached
