"""Image-only encoders of raw EfficientNet-Lite features (global average pooled, L2-normalised),
the kind of baseline the original prototypes compared: ids ``effnet-lite0`` and
``effnet-lite2``. They encode images only; texts raise BadInput."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from domain.errors import BadInput, EncoderUnavailable, UnknownEncoder
from domain.model import Modality
from domain.ports import Encoder, Vectors
from encoders.backbones import (
    F32,
    PREPROCESSING_TAG,
    ImageBackbone,
    ImageBackboneSpec,
    configure_torch_threads,
    image_array,
    image_backbone,
)
from encoders.hookspecs import EncoderFactory, EncoderFamily, EncoderOptions, hookimpl
from encoders.images import decode_image
from encoders.onnx_models import (
    IMAGE_FILE,
    Exporter,
    ModelDir,
    effnet_model,
    ensure_exported,
    export_into,
    inference_session,
    models_root,
)

BATCH_SIZE = 32
VARIANTS = {
    "effnet-lite0": ImageBackboneSpec("efficientnet-lite0", 224),
    "effnet-lite2": ImageBackboneSpec("efficientnet-lite2", 260),
}


class EffNetImageEncoder:
    """Thread-safe; the network loads on first use. On ONNX Runtime (the default) it runs the
    exported model under ``models_dir`` (built from the packaged weights on first use)."""

    def __init__(
        self,
        encoder_id: str,
        spec: ImageBackboneSpec,
        torch_threads: int = 0,
        *,
        runtime: str = "onnx",
        models_dir: str | None = None,
    ) -> None:
        self._id = encoder_id
        self._spec = spec
        self._threads = torch_threads
        self._runtime = runtime
        self._model = effnet_model(models_root(models_dir), spec.name, spec.size)
        self._lock = threading.Lock()
        self._backbone: ImageBackbone | None = None
        self._session: Any = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return 1280

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.IMAGE})

    @property
    def version(self) -> str:
        """The image preprocessing's version, after a hash of the exported model on ONNX
        Runtime (vectors change when either does; the packaged ImageNet weights never do)."""
        if self._runtime == "torch":
            return PREPROCESSING_TAG
        return f"onnx-{self._exported().digest()}+{PREPROCESSING_TAG}"

    def torch_reference(self) -> EffNetImageEncoder:
        """This encoder on torch (the reference of the ONNX export)."""
        return EffNetImageEncoder(self._id, self._spec, self._threads, runtime="torch")

    def onnx_models(self) -> list[ModelDir]:
        return [] if self._runtime == "torch" else [self._model]

    def export_onnx(self, replace: bool = False) -> list[ModelDir]:
        """Export the network to ONNX (again, with ``replace``); the directory written."""
        if self._runtime == "torch":
            raise EncoderUnavailable(f"{self._id} runs on torch here: nothing to export")
        with self._lock:
            self._session = None
            export_into(self._model, self._exporter(), replace=replace)
        return [self._model]

    def _exported(self) -> ModelDir:
        return ensure_exported(self._model, self._exporter)

    def _exporter(self) -> Exporter:
        from encoders.onnx_build import build_effnet

        return functools.partial(build_effnet, self._spec)

    def _load(self) -> ImageBackbone:
        with self._lock:
            if self._backbone is None:
                configure_torch_threads(self._threads)
                self._backbone = image_backbone(self._spec)
            return self._backbone

    def _load_session(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = inference_session(self._exported().file(IMAGE_FILE), self._threads)
            return self._session

    def _features(self, arrays: list[F32]) -> Vectors:
        """Unit vectors of preprocessed images, one image per call on either runtime."""
        if self._runtime == "torch":
            features = self._load().features(arrays)
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            out: Vectors = (features / np.maximum(norms, 1e-12)).astype(np.float32)
            return out
        session = self._load_session()
        rows = [session.run(None, {"pixels": array[None]})[0] for array in arrays]
        return np.concatenate(rows).astype(np.float32)

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        raise BadInput(f"{self._id} encodes images only; use a text-capable encoder")

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        decoded = [decode_image(data) for data in images]
        parts = []
        for start in range(0, len(decoded), BATCH_SIZE):
            arrays = [
                image_array(im, self._spec.size) for im in decoded[start : start + BATCH_SIZE]
            ]
            parts.append(self._features(arrays))
        return np.concatenate(parts)


def _factory(encoder_id: str) -> EncoderFactory:
    def build(spec: str, options: EncoderOptions) -> Encoder:
        if spec:
            raise UnknownEncoder(f"{encoder_id} takes no options (got {encoder_id}:{spec})")
        return EffNetImageEncoder(
            encoder_id,
            VARIANTS[encoder_id],
            options.torch_threads,
            runtime=options.runtime,
            models_dir=options.models_dir,
        )

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
