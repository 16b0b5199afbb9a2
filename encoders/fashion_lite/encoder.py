"""The fashion-lite encoder: EfficientNet-Lite (ImageNet weights, its last blocks fine-tuned
on catalog labels when the heads file carries them) + colour statistics for images, frozen
all-MiniLM-L6-v2 for texts, mapped into one space by the trained heads."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from domain.errors import BadInput, EncoderUnavailable
from domain.model import Modality
from domain.ports import Vectors
from encoders.backbones import (
    ImageBackbone,
    ImageBackboneSpec,
    TextBackbone,
    colour_histogram,
    configure_torch_threads,
    image_array,
    image_backbone,
    text_backbone,
)
from encoders.fashion_lite.data import query_text
from encoders.fashion_lite.heads import DEFAULT_HEADS, Heads
from encoders.images import decode_image

ENCODER_ID = "fashion-lite"
BATCH_SIZE = 32


def read_heads(path: Path) -> Heads:
    if not path.is_file():
        raise EncoderUnavailable(
            f"fashion-lite heads not found at {path}: run `fashion-search train-encoder`"
        )
    return Heads.load(path)


class FashionLiteEncoder:
    """Thread-safe; the backbones and heads load on first use, once per process."""

    def __init__(
        self,
        heads_path: Path = DEFAULT_HEADS,
        encoder_id: str = ENCODER_ID,
        torch_threads: int = 0,
    ) -> None:
        self._heads_path = heads_path
        self._id = encoder_id
        self._torch_threads = torch_threads
        self._lock = threading.Lock()
        self._heads: Heads | None = None
        self._image: ImageBackbone | None = None
        self._text: TextBackbone | None = None
        self._version: str | None = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def version(self) -> str:
        """The heads file's content hash: vectors change whenever the heads do."""
        with self._lock:
            if self._version is None:
                if not self._heads_path.is_file():
                    raise EncoderUnavailable(
                        f"fashion-lite heads not found at {self._heads_path}: "
                        "run `fashion-search train-encoder`"
                    )
                digest = hashlib.sha256(self._heads_path.read_bytes()).hexdigest()
                self._version = f"heads-{digest[:12]}"
            return self._version

    @property
    def heads(self) -> Heads:
        with self._lock:
            if self._heads is None:
                self._heads = read_heads(self._heads_path)
            return self._heads

    @property
    def dim(self) -> int:
        return self.heads.dim

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.TEXT, Modality.IMAGE})

    def _image_backbone(self) -> ImageBackbone:
        heads = self.heads
        with self._lock:
            if self._image is None:
                configure_torch_threads(self._torch_threads)
                spec = ImageBackboneSpec(
                    str(heads.meta.get("image_backbone", "efficientnet-lite0")),
                    int(heads.meta.get("image_size", 224)),
                    tuple(heads.meta.get("image_parts", ("avg",))),
                    tuned=str(self._heads_path) if heads.backbone else "",
                )
                self._image = image_backbone(spec)
            return self._image

    def _text_backbone(self) -> TextBackbone:
        with self._lock:
            if self._text is None:
                configure_torch_threads(self._torch_threads)
                self._text = text_backbone()
            return self._text

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        prompts = [query_text(t) if isinstance(t, str) else "" for t in texts]
        if any(not p for p in prompts):
            raise BadInput("texts to encode must not be empty")
        heads = self.heads
        if not prompts:
            return np.zeros((0, heads.dim), dtype=np.float32)
        backbone = self._text_backbone()
        parts = [
            heads.embed_texts(backbone.features(prompts[i : i + BATCH_SIZE]))
            for i in range(0, len(prompts), BATCH_SIZE)
        ]
        return np.concatenate(parts).astype(np.float32)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        heads = self.heads
        if not images:
            return np.zeros((0, heads.dim), dtype=np.float32)
        decoded = [decode_image(data) for data in images]  # InvalidImage before any work
        return self.encode_decoded(decoded)

    def encode_decoded(self, images: Sequence[Image.Image]) -> Vectors:
        heads = self.heads
        backbone = self._image_backbone()
        size = backbone.spec.size
        parts = []
        for start in range(0, len(images), BATCH_SIZE):
            chunk = images[start : start + BATCH_SIZE]
            crop = bool(heads.meta.get("crop", False))
            cnn = backbone.features([image_array(image, size, crop) for image in chunk])
            colour = np.stack([colour_histogram(image) for image in chunk])
            parts.append(heads.embed_images(cnn, colour))
        return np.concatenate(parts).astype(np.float32)
