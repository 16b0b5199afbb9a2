"""The fashion-lite encoder: EfficientNet-Lite (ImageNet weights, its last blocks fine-tuned
on catalog labels when the heads file carries them) + colour statistics for images, frozen
all-MiniLM-L6-v2 for texts, mapped into one space by the trained heads. Decoding and
preprocessing happen here; the networks run in ``encoders.fashion_lite.towers``."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from domain.errors import BadInput, EncoderUnavailable
from domain.model import Modality
from domain.ports import PreparedImage, Vectors, stack_prepared
from encoders.backbones import (
    F32,
    PREPROCESSING_TAG,
    ImageBackboneSpec,
    colour_histogram,
    image_array,
)
from encoders.fashion_lite.data import query_text
from encoders.fashion_lite.heads import DEFAULT_HEADS, Heads, HeadsSummary
from encoders.fashion_lite.towers import (
    OnnxTowers,
    Runtime,
    TorchTowers,
    Towers,
    backbone_spec,
)
from encoders.images import decode_image
from encoders.onnx_models import ModelDir, models_root

ENCODER_ID = "fashion-lite"
BATCH_SIZE = 32
PIXELS, COLOUR = "pixels", "colour"
"""The prepared image's arrays: [3, s, s] ImageNet-normalised pixels, [c] colour stats."""


def _missing_heads(path: Path) -> EncoderUnavailable:
    return EncoderUnavailable(
        f"fashion-lite heads not found at {path}: run `fashion-search train-encoder`"
    )


def read_heads(path: Path) -> Heads:
    if not path.is_file():
        raise _missing_heads(path)
    return Heads.load(path)


def read_summary(path: Path) -> HeadsSummary:
    if not path.is_file():
        raise _missing_heads(path)
    try:
        return HeadsSummary.read(path)
    except ValueError as exc:
        raise EncoderUnavailable(str(exc)) from exc


def joined(parts: Sequence[Vectors]) -> Vectors:
    """The rows of ``parts`` as one float32 array (no copy for a single part: a search's)."""
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)  # none: ValueError
    return out.astype(np.float32, copy=False)


class FashionLiteEncoder:
    """Thread-safe; the heads and networks load on first use, once per process. The
    networks run on ONNX Runtime (``runtime="onnx"``, exported models under ``models_dir``)
    or on torch (``"torch"``, the ``[train]`` extra)."""

    def __init__(
        self,
        heads_path: Path = DEFAULT_HEADS,
        encoder_id: str = ENCODER_ID,
        torch_threads: int = 0,
        *,
        runtime: Runtime = "onnx",
        models_dir: str | None = None,
        float32: bool = False,
    ) -> None:
        """``torch_threads``: intra-op threads of either runtime (0: its default);
        ``float32``: no int8 first layer in the image heads (on torch: the export's
        reference; on ONNX Runtime: the float32 export)."""
        self._heads_path = heads_path
        self._id = encoder_id
        self._threads = torch_threads
        self._runtime: Runtime = runtime
        self._models_dir = models_dir
        self._float32 = float32
        self._lock = threading.Lock()
        self._heads: Heads | None = None
        self._summary: HeadsSummary | None = None
        self._towers: Towers | None = None
        self._heads_digest: str | None = None
        self._version: str | None = None

    @property
    def id(self) -> str:
        return self._id

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def _digest(self) -> str:
        with self._lock:
            if self._heads_digest is None:
                if not self._heads_path.is_file():
                    raise EncoderUnavailable(
                        f"fashion-lite heads not found at {self._heads_path}: "
                        "run `fashion-search train-encoder`"
                    )
                self._heads_digest = hashlib.sha256(self._heads_path.read_bytes()).hexdigest()
            return self._heads_digest

    @property
    def version(self) -> str:
        """The heads file's content hash and the image preprocessing's version, plus on ONNX
        Runtime a hash of the exported models: vectors change whenever one of them does."""
        if self._version is None:
            version = f"heads-{self._digest()[:12]}+{PREPROCESSING_TAG}"
            tag = self.towers.tag
            self._version = f"{version}+{tag}" if tag else version
        return self._version

    @property
    def heads(self) -> Heads:
        with self._lock:
            if self._heads is None:
                self._heads = read_heads(self._heads_path)
            return self._heads

    @property
    def summary(self) -> HeadsSummary:
        """The heads file's facts and vector width, read without its weights (all the ONNX
        Runtime path needs: the weights are in the built models)."""
        with self._lock:
            if self._summary is None:
                self._summary = read_summary(self._heads_path)
            return self._summary

    def _spec(self) -> ImageBackboneSpec:
        summary = self.summary
        return backbone_spec(summary.meta, summary.tunes_backbone, self._heads_path)

    @property
    def towers(self) -> Towers:
        if self._runtime == "torch":
            heads = self.heads
            with self._lock:
                if self._towers is None:
                    weights = heads.float32() if self._float32 else heads
                    self._towers = TorchTowers(weights, self._heads_path, self._threads)
                return self._towers
        spec, digest = self._spec(), self._digest()
        with self._lock:
            if self._towers is None:
                self._towers = OnnxTowers(
                    self._heads_path,
                    digest,
                    spec,
                    models_root(self._models_dir),
                    self._threads,
                    self._float32,
                )
            return self._towers

    def torch_reference(self) -> FashionLiteEncoder:
        """This encoder on torch in float32 (the reference of the ONNX export)."""
        return FashionLiteEncoder(
            self._heads_path, self._id, self._threads, runtime="torch", float32=True
        )

    def onnx_models(self) -> list[ModelDir]:
        towers = self.towers
        return towers.models() if isinstance(towers, OnnxTowers) else []

    def export_onnx(self, replace: bool = False) -> list[ModelDir]:
        """Export the networks to ONNX (again, with ``replace``); the directories written."""
        towers = self.towers
        if not isinstance(towers, OnnxTowers):
            raise EncoderUnavailable(f"{self._id} runs on torch here: nothing to export")
        return towers.export(replace)

    @property
    def dim(self) -> int:
        return self.summary.dim

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.TEXT, Modality.IMAGE})

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        prompts = [query_text(t) if isinstance(t, str) else "" for t in texts]
        if any(not p for p in prompts):
            raise BadInput("texts to encode must not be empty")
        if not prompts:
            return np.zeros((0, self.dim), dtype=np.float32)
        towers = self.towers
        parts = [
            towers.text_vectors(prompts[i : i + BATCH_SIZE])
            for i in range(0, len(prompts), BATCH_SIZE)
        ]
        return joined(parts)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        decoded = [decode_image(data) for data in images]  # InvalidImage before any work
        return self.encode_decoded(decoded)

    def encode_decoded(self, images: Sequence[Image.Image]) -> Vectors:
        parts = [
            self.encode_prepared(
                stack_prepared(
                    [self._prepare(image) for image in images[start : start + BATCH_SIZE]]
                )
            )
            for start in range(0, len(images), BATCH_SIZE)
        ]
        return joined(parts)

    def prepare_image(self, data: bytes) -> dict[str, F32]:
        """One image decoded and preprocessed (``PreparingEncoder``): what the image tower
        takes, computed without loading it."""
        return self._prepare(decode_image(data))

    def _prepare(self, image: Image.Image) -> dict[str, F32]:
        spec = self._spec()
        crop = bool(self.summary.meta.get("crop", False))
        return {PIXELS: image_array(image, spec.size, crop), COLOUR: colour_histogram(image)}

    def encode_prepared(self, prepared: PreparedImage) -> Vectors:
        """The image tower on prepared images, BATCH_SIZE at a time."""
        pixels, colour = prepared[PIXELS], prepared[COLOUR]
        if not len(pixels):
            return np.zeros((0, self.dim), dtype=np.float32)
        towers = self.towers
        parts = [
            towers.image_vectors(
                pixels[start : start + BATCH_SIZE], colour[start : start + BATCH_SIZE]
            )
            for start in range(0, len(pixels), BATCH_SIZE)
        ]
        return joined(parts)
