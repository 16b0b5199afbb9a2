"""Image-only encoders of raw EfficientNet-Lite features (global average pooled, L2-normalised),
the kind of baseline the original prototypes compared: ids ``effnet-lite0`` and
``effnet-lite2``. They encode images only; texts raise BadInput."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from domain.errors import BadInput, UnknownEncoder
from domain.model import Modality
from domain.ports import Encoder, Vectors
from encoders.backbones import (
    ImageBackbone,
    ImageBackboneSpec,
    configure_torch_threads,
    image_array,
    image_backbone,
)
from encoders.hookspecs import EncoderFactory, EncoderFamily, EncoderOptions, hookimpl
from encoders.images import decode_image

BATCH_SIZE = 32
VARIANTS = {
    "effnet-lite0": ImageBackboneSpec("efficientnet-lite0", 224),
    "effnet-lite2": ImageBackboneSpec("efficientnet-lite2", 260),
}


class EffNetImageEncoder:
    def __init__(self, encoder_id: str, spec: ImageBackboneSpec, torch_threads: int = 0) -> None:
        self._id = encoder_id
        self._spec = spec
        self._torch_threads = torch_threads
        self._lock = threading.Lock()
        self._backbone: ImageBackbone | None = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return 1280

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.IMAGE})

    def _load(self) -> ImageBackbone:
        with self._lock:
            if self._backbone is None:
                configure_torch_threads(self._torch_threads)
                self._backbone = image_backbone(self._spec)
            return self._backbone

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        raise BadInput(f"{self._id} encodes images only; use a text-capable encoder")

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        decoded = [decode_image(data) for data in images]
        backbone = self._load()
        parts = []
        for start in range(0, len(decoded), BATCH_SIZE):
            arrays = [
                image_array(im, self._spec.size) for im in decoded[start : start + BATCH_SIZE]
            ]
            parts.append(backbone.features(arrays))
        features = np.concatenate(parts)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        out: Vectors = (features / np.maximum(norms, 1e-12)).astype(np.float32)
        return out


def _factory(encoder_id: str) -> EncoderFactory:
    def build(spec: str, options: EncoderOptions) -> Encoder:
        if spec:
            raise UnknownEncoder(f"{encoder_id} takes no options (got {encoder_id}:{spec})")
        return EffNetImageEncoder(encoder_id, VARIANTS[encoder_id], options.torch_threads)

    return build


@hookimpl
def fashion_search_register_encoders() -> list[EncoderFamily]:
    return [
        EncoderFamily(
            name=name,
            factory=_factory(name),
            description=f"raw {spec.name} ImageNet features at {spec.size}px (images only)",
            modalities=frozenset({Modality.IMAGE}),
            examples=(name,),
            dim=1280,
        )
        for name, spec in VARIANTS.items()
    ]
