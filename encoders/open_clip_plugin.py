"""The open_clip encoder family: any open_clip architecture with a pretrained tag or a local
checkpoint.

Ids: ``open_clip:ARCH/PRETRAINED_TAG`` (e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``) and
``open_clip:ARCH@/path/to/checkpoint.pt``. This product runs offline: a tag is only loaded when
its weights are already in the local cache; otherwise loading fails at once with
EncoderUnavailable (never a download that hangs).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domain.errors import BadInput, EncoderUnavailable, UnknownEncoder
from domain.model import Modality
from domain.ports import Encoder, Vectors
from encoders.backbones import configure_torch_threads, pad_to_square
from encoders.hookspecs import EncoderFamily, EncoderOptions, hookimpl
from encoders.images import decode_image

FAMILY = "open_clip"
BATCH_SIZE = 32
CLIP_EXTRA_HINT = "the [clip] extra (`pip install 'fashion-search[clip]'`)"
CHECKPOINT_HINT = (
    "a local checkpoint (open_clip:ARCH@/path/to/checkpoint.pt) or weights already in the "
    "local cache (no downloads offline)"
)


_OFFLINE_HINT = (
    "this machine cannot download hub weights: use a local checkpoint with "
    "`open_clip:ARCH@/path/to/checkpoint.pt`, or set FASHION_SEARCH_ENCODER to an encoder "
    "that works offline (e.g. fashion-lite)"
)


def _open_clip() -> Any:
    """The open_clip module, or EncoderUnavailable naming the extra that installs it."""
    try:
        import open_clip
    except ImportError as exc:
        raise EncoderUnavailable(f"open_clip is not installed: install {CLIP_EXTRA_HINT}") from exc
    return open_clip


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class OpenClipSpec:
    arch: str
    tag: str | None = None
    checkpoint: Path | None = None

    @property
    def encoder_id(self) -> str:
        if self.checkpoint is not None:
            return f"{FAMILY}:{self.arch}@{self.checkpoint}"
        return f"{FAMILY}:{self.arch}/{self.tag}"


def parse_spec(spec: str) -> OpenClipSpec:
    """``ARCH/TAG`` or ``ARCH@/path/to/checkpoint.pt``."""
    if "@" in spec:
        arch, _, path = spec.partition("@")
        if not arch or not path:
            raise UnknownEncoder(f"expected open_clip:ARCH@/path/to/checkpoint.pt, got {spec!r}")
        return OpenClipSpec(arch.strip(), checkpoint=Path(path.strip()).expanduser())
    arch, _, tag = spec.rpartition("/")
    if not arch or not tag or arch.startswith(("hf-hub", "local-dir")):
        raise UnknownEncoder(
            f"expected open_clip:ARCH/PRETRAINED_TAG or open_clip:ARCH@/path/to/checkpoint.pt, "
            f"got {spec!r}"
        )
    return OpenClipSpec(arch.strip(), tag=tag.strip())


def _cached_weights(arch: str, tag: str, cache_dir: str | None) -> str | None:
    """The local file of a pretrained tag when it is already cached, else None. Never
    touches the network."""
    open_clip = _open_clip()
    cfg: dict[str, Any] = open_clip.get_pretrained_cfg(arch, tag) or {}
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise UnknownEncoder(f"open_clip has no tag {tag!r} for {arch!r} (known: {known})")
    if cfg.get("file"):
        return str(cfg["file"])
    hub = str(cfg.get("hf_hub", ""))
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)  # "org/model/" names the default file
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        for name in candidates:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = str(cfg.get("url", ""))
    if url:
        local = Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


class OpenClipEncoder:
    """Lazy (first use loads the model, once), batched, thread-safe inference."""

    def __init__(self, spec: OpenClipSpec, options: EncoderOptions | None = None) -> None:
        open_clip = _open_clip()
        self._spec = spec
        self._options = options or EncoderOptions()
        config = open_clip.get_model_config(spec.arch)
        if config is None:
            raise UnknownEncoder(f"open_clip has no architecture {spec.arch!r}")
        self._dim = int(config["embed_dim"])
        if spec.checkpoint is not None and not spec.checkpoint.is_file():
            raise EncoderUnavailable(f"open_clip checkpoint not found: {spec.checkpoint}")
        self._lock = threading.Lock()
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None

    @property
    def id(self) -> str:
        return self._spec.encoder_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset({Modality.TEXT, Modality.IMAGE})

    def _load(self) -> tuple[Any, Any, Any]:
        with self._lock:
            if self._model is None:
                self._model, self._preprocess, self._tokenizer = self._build()
            return self._model, self._preprocess, self._tokenizer

    def _build(self) -> tuple[Any, Any, Any]:
        _offline()
        open_clip = _open_clip()

        configure_torch_threads(self._options.torch_threads)
        spec = self._spec
        extra: dict[str, Any] = {}
        if spec.checkpoint is not None:
            weights = str(spec.checkpoint)
        else:
            assert spec.tag is not None
            cache_dir = self._options.extra.get("open_clip_cache_dir")
            cached = _cached_weights(spec.arch, spec.tag, cache_dir)
            if cached is None:
                raise EncoderUnavailable(
                    f"{spec.encoder_id}: weights are not in the local cache and {_OFFLINE_HINT}"
                )
            weights = cached
            cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) or {}
            for key in ("mean", "std"):
                if cfg.get(key):
                    extra[f"image_{key}"] = cfg[key]
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=weights, device="cpu", **extra
            )
            tokenizer = open_clip.get_tokenizer(spec.arch)
        except EncoderUnavailable:
            raise
        except Exception as exc:
            raise EncoderUnavailable(f"cannot load {spec.encoder_id}: {exc}") from exc
        model.eval()
        return model, preprocess, tokenizer

    def _normalised(self, features: Any) -> Vectors:
        array = features.float().numpy()
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        out: Vectors = (array / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise BadInput("texts to encode must not be empty")
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        import torch

        model, _, tokenizer = self._load()
        parts = []
        for start in range(0, len(texts), BATCH_SIZE):
            tokens = tokenizer([t.strip() for t in texts[start : start + BATCH_SIZE]])
            with torch.inference_mode():
                parts.append(self._normalised(model.encode_text(tokens)))
        return np.concatenate(parts)

    def encode_images(self, images: Sequence[bytes]) -> Vectors:
        if not images:
            return np.zeros((0, self._dim), dtype=np.float32)
        import torch

        decoded = [decode_image(data) for data in images]
        model, preprocess, _ = self._load()
        parts = []
        for start in range(0, len(decoded), BATCH_SIZE):
            chunk = decoded[start : start + BATCH_SIZE]
            batch = torch.stack([preprocess(pad_to_square(image)) for image in chunk])
            with torch.inference_mode():
                parts.append(self._normalised(model.encode_image(batch)))
        return np.concatenate(parts)


def build(spec: str, options: EncoderOptions) -> Encoder:
    if not spec:
        raise UnknownEncoder(
            "open_clip needs a model: open_clip:ARCH/PRETRAINED_TAG or "
            "open_clip:ARCH@/path/to/checkpoint.pt"
        )
    return OpenClipEncoder(parse_spec(spec), options)


def requirements() -> str:
    """What the family needs here before any of its encoders can load."""
    if importlib.util.find_spec("open_clip") is None:
        return f"{CLIP_EXTRA_HINT} and {CHECKPOINT_HINT}"
    return CHECKPOINT_HINT


@hookimpl
def fashion_search_register_encoders() -> list[EncoderFamily]:
    return [
        EncoderFamily(
            name=FAMILY,
            factory=build,
            description=(
                "any open_clip model: open_clip:ARCH/TAG (weights must be cached locally) or "
                "open_clip:ARCH@/path/to/checkpoint.pt"
            ),
            modalities=frozenset({Modality.TEXT, Modality.IMAGE}),
            examples=("open_clip:ViT-B-32/laion2b_s34b_b79k",),
            dim=512,
            available=False,  # no CLIP weights can be had offline here
            requires=requirements(),
        )
    ]
