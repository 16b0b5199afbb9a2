"""The networks of fashion-lite on either runtime: ONNX Runtime (the default install) or torch
(the ``[train]`` extra; the reference the ONNX export is checked against).

Both take the same inputs, made outside the networks: preprocessed pixels and colour
statistics (``encoders.backbones``) for images, prompts for texts.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from encoders.backbones import (
    F32,
    ImageBackbone,
    ImageBackboneSpec,
    TextBackbone,
    configure_torch_threads,
    image_backbone,
    text_backbone,
)
from encoders.fashion_lite.heads import Heads
from encoders.onnx_models import (
    IMAGE_FILE,
    TEXT_HEAD_FILE,
    TEXT_OPTIMIZATION,
    Exporter,
    ModelDir,
    ensure_exported,
    export_into,
    fashion_lite_model,
    inference_session,
    minilm_model,
)
from encoders.tokens import SentenceTokenizer

Runtime = Literal["onnx", "torch"]
RUNTIMES: tuple[Runtime, ...] = ("onnx", "torch")

TEXT_MAX_TOKENS = TextBackbone.max_length


def backbone_spec(
    meta: dict[str, Any], tunes_backbone: bool, heads_path: Path
) -> ImageBackboneSpec:
    """The image backbone a heads file was trained on (with its tuned layers, if any)."""
    return ImageBackboneSpec(
        str(meta.get("image_backbone", "efficientnet-lite0")),
        int(meta.get("image_size", 224)),
        tuple(meta.get("image_parts", ("avg",))),
        tuned=str(heads_path) if tunes_backbone else "",
    )


class Towers(Protocol):
    """Vectors from network inputs; thread-safe, loaded lazily."""

    @property
    def tag(self) -> str:
        """Names the exported models in use ("" for torch, whose weights the heads name)."""
        ...

    def image_vectors(self, pixels: F32, colour: F32) -> F32:
        """[n, dim] unit vectors from [n, 3, s, s] pixels and [n, c] colour statistics."""
        ...

    def text_vectors(self, prompts: Sequence[str]) -> F32:
        """[n, dim] unit vectors from non-empty prompts."""
        ...


class TorchTowers:
    """The torch path: the traced backbone (one image per call), the hand-written MiniLM
    forward pass, the heads with an int8 first layer (``encoders.fashion_lite.heads``)."""

    def __init__(self, heads: Heads, heads_path: Path, threads: int) -> None:
        self._heads = heads
        self._spec = backbone_spec(heads.meta, bool(heads.backbone), heads_path)
        self._threads = threads
        self._lock = threading.Lock()
        self._image: ImageBackbone | None = None
        self._text: TextBackbone | None = None

    @property
    def tag(self) -> str:
        return ""

    def _image_backbone(self) -> ImageBackbone:
        with self._lock:
            if self._image is None:
                configure_torch_threads(self._threads)
                self._image = image_backbone(self._spec)
            return self._image

    def _text_backbone(self) -> TextBackbone:
        with self._lock:
            if self._text is None:
                configure_torch_threads(self._threads)
                self._text = text_backbone()
            return self._text

    def image_vectors(self, pixels: F32, colour: F32) -> F32:
        features = self._image_backbone().features(list(pixels))
        return self._heads.embed_images(features, colour)

    def text_vectors(self, prompts: Sequence[str]) -> F32:
        return self._heads.embed_texts(self._text_backbone().features(prompts))


IMAGE_MICRO_BATCH = 4
"""Images per ONNX Runtime call. Unlike torch's traced backbone (fastest one image at a
time), the exported tower gains from small batches: the heads' first layers are read once
per call. CPU per image at one thread on heads-v3 (192 px), batches of 1/4/8/16: with
float32 heads 13.0/9.8/11.0/10.8 ms (shared machine, best of 3 x 16 images); with the int8
heads 9.9/8.9/9.3/9.3 ms (best of 4 x 16, load 12). A vector does not depend on its batch
beyond float rounding (1e-6)."""


class OnnxTowers:
    """The ONNX Runtime path: the exported image tower (backbone, pooling and heads in one
    graph), MiniLM and the text head; built from the packaged weights on first use when
    missing (``encoders.onnx_models``, ``encoders.onnx_build``). As on torch, the image
    heads' wide first layers run on int8 weights unless ``float32``."""

    def __init__(
        self,
        heads_path: Path,
        heads_digest: str,
        spec: ImageBackboneSpec,
        root: Path,
        threads: int,
        float32: bool = False,
    ) -> None:
        self._heads_path = heads_path
        self._spec = spec
        self._threads = threads
        self._float32 = float32
        self._towers = fashion_lite_model(root, heads_digest, heads_path.name, float32)
        self._minilm = minilm_model(root)
        self._lock = threading.Lock()
        # one lock per tower: a text search never waits for the image session being loaded
        self._image_lock = threading.Lock()
        self._image: tuple[Any, bool] | None = None
        self._text: tuple[SentenceTokenizer, Any, Any] | None = None

    def _towers_exporter(self) -> Exporter:
        from encoders.onnx_build import build_fashion_lite

        return functools.partial(
            build_fashion_lite, self._heads_path, self._spec, int8_heads=not self._float32
        )

    @staticmethod
    def _minilm_exporter() -> Exporter:
        from encoders.onnx_build import build_minilm

        return build_minilm

    def models(self) -> list[ModelDir]:
        return [self._towers, self._minilm]

    def export(self, replace: bool) -> list[ModelDir]:
        """Export both model directories now (again, when ``replace``)."""
        with self._lock, self._image_lock:
            self._image = self._text = None
            export_into(self._towers, self._towers_exporter(), replace=replace)
            export_into(self._minilm, self._minilm_exporter(), replace=replace)
        return [self._towers, self._minilm]

    def exported(self) -> tuple[ModelDir, ModelDir]:
        """The model directories, exported first when missing."""
        return (
            ensure_exported(self._towers, self._towers_exporter),
            ensure_exported(self._minilm, self._minilm_exporter),
        )

    @property
    def tag(self) -> str:
        towers, minilm = self.exported()
        joined = f"{towers.digest()}:{minilm.digest()}"
        return "onnx-" + hashlib.sha256(joined.encode()).hexdigest()[:12]

    def _image_session(self) -> tuple[Any, bool]:
        """The image tower's session, and whether it takes colour statistics."""
        with self._image_lock:
            if self._image is None:
                towers = ensure_exported(self._towers, self._towers_exporter)
                session = inference_session(towers.file(IMAGE_FILE), self._threads)
                self._image = (session, "colour" in {i.name for i in session.get_inputs()})
            return self._image

    def _text_sessions(self) -> tuple[SentenceTokenizer, Any, Any]:
        with self._lock:
            if self._text is None:
                towers, minilm = self.exported()
                self._text = (
                    SentenceTokenizer(minilm.file("tokenizer.json"), TEXT_MAX_TOKENS),
                    inference_session(minilm.file("model.onnx"), self._threads, TEXT_OPTIMIZATION),
                    inference_session(
                        towers.file(TEXT_HEAD_FILE), self._threads, TEXT_OPTIMIZATION
                    ),
                )
            return self._text

    def image_vectors(self, pixels: F32, colour: F32) -> F32:
        session, takes_colour = self._image_session()
        rows = []
        for start in range(0, len(pixels), IMAGE_MICRO_BATCH):
            feeds = {"pixels": pixels[start : start + IMAGE_MICRO_BATCH]}
            if takes_colour:  # heads trained without colour stats do not take them
                feeds["colour"] = colour[start : start + IMAGE_MICRO_BATCH]
            rows.append(session.run(None, feeds)[0])
        out: F32 = rows[0] if len(rows) == 1 else np.concatenate(rows)
        return out.astype(np.float32, copy=False)

    def text_vectors(self, prompts: Sequence[str]) -> F32:
        tokenizer, minilm, head = self._text_sessions()
        ids, mask = tokenizer.token_ids(prompts)
        features = minilm.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        out: F32 = head.run(None, {"features": features})[0].astype(np.float32)
        return out
