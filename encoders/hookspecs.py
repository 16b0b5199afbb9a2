"""The hooks an encoder plugin can implement.

A plugin is any module or object with ``@hookimpl``-decorated functions; third-party
packages expose theirs through the ``fashion_search.encoders`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pluggy

from domain.model import Modality
from domain.ports import Encoder

PROJECT_NAME = "fashion_search"
ENTRY_POINT_GROUP = "fashion_search.encoders"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class EncoderOptions:
    """What an encoder factory may need from the configuration."""

    models_dir: str | None = None  # exported ONNX models (None: a per-user cache)
    torch_threads: int = 0  # intra-op threads of torch and ONNX Runtime (0: their default)
    runtime: str = "onnx"  # what runs the built-in networks: "onnx" or "torch" ([train])
    extra: dict[str, str] = field(default_factory=dict)


EncoderFactory = Callable[[str, EncoderOptions], Encoder]
"""Builds an encoder from the part of the id after ``family:`` ("" when there is none)."""


@dataclass(frozen=True)
class EncoderFamily:
    """A kind of encoder a plugin provides.

    ``name`` is the id prefix: ``fashion-lite`` or ``open_clip`` (ids ``open_clip:ViT-B-32/tag``).
    ``examples`` are ids that ``fashion-search encoders`` lists; ``available`` says whether
    ``examples[0]`` can be loaded on this machine without a download, and ``requires`` what
    it takes when it cannot (an extra to install, a checkpoint to give).
    """

    name: str
    factory: EncoderFactory
    description: str
    modalities: frozenset[Modality]
    examples: tuple[str, ...] = ()
    dim: int | None = None
    available: bool = True
    requires: str = ""


@hookspec
def fashion_search_register_encoders() -> list[EncoderFamily]:  # type: ignore[empty-body]
    """Return the encoder families this plugin provides."""
