"""Registers the fashion-lite encoder family (the default encoder)."""

from __future__ import annotations

from pathlib import Path

from domain.errors import EncoderUnavailable, UnknownEncoder
from domain.model import Modality
from domain.ports import Encoder
from encoders.fashion_lite.encoder import ENCODER_ID, FashionLiteEncoder
from encoders.fashion_lite.heads import DEFAULT_HEADS, WEIGHTS_DIR, Heads
from encoders.fashion_lite.towers import RUNTIMES, Runtime
from encoders.hookspecs import EncoderFamily, EncoderOptions, hookimpl


def build(spec: str, options: EncoderOptions) -> Encoder:
    """``fashion-lite`` uses the committed heads; ``fashion-lite:NAME`` the heads file
    ``weights/NAME.npz`` or, when NAME is a path to a .npz file, that file."""
    runtime = runtime_of(options)
    if not spec:
        path, encoder_id = DEFAULT_HEADS, ENCODER_ID
    else:
        path = Path(spec) if spec.endswith(".npz") else WEIGHTS_DIR / f"{spec}.npz"
        encoder_id = f"{ENCODER_ID}:{spec}"
    if spec and not path.is_file():
        raise UnknownEncoder(f"no fashion-lite heads {spec!r} (looked for {path})")
    return FashionLiteEncoder(
        path,
        encoder_id,
        options.torch_threads,
        runtime=runtime,
        models_dir=options.models_dir,
    )


def runtime_of(options: EncoderOptions) -> Runtime:
    for runtime in RUNTIMES:
        if options.runtime == runtime:
            return runtime
    raise EncoderUnavailable(
        f"unknown encoder runtime {options.runtime!r} (known: {', '.join(RUNTIMES)})"
    )


def _committed_dim() -> int | None:
    try:
        return int(Heads.read_meta(DEFAULT_HEADS)["dim"])
    except (OSError, KeyError, ValueError):
        return None


@hookimpl
def fashion_search_register_encoders() -> list[EncoderFamily]:
    return [
        EncoderFamily(
            name=ENCODER_ID,
            factory=build,
            description=(
                "EfficientNet-Lite0 + colour stats and all-MiniLM-L6-v2, aligned by small "
                "heads trained on fashion image-text pairs (offline, CPU)"
            ),
            modalities=frozenset({Modality.TEXT, Modality.IMAGE}),
            examples=(ENCODER_ID,),
            dim=_committed_dim(),
            available=DEFAULT_HEADS.is_file(),
        )
    ]
