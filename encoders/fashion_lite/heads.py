"""The alignment heads of fashion-lite, applied in numpy at run time.

A heads file (``weights/heads-v3.npz``) holds, for each tower, the input standardisation
(mean, std) and the layers of a small MLP (GELU, tanh approximation, between layers), the
image backbone's fine-tuned layers if training tuned any (``backbone.*``), plus a JSON
``meta`` entry: backbone, input size, output dim, training facts. Weights are stored as
float16 to keep the artifact small; they are computed in float32.

An image vector may also carry image-only parts after the shared-space part: the output of
an ``extra`` tower trained for image-to-image search (``extra_weight``) and a copy of the raw
backbone features (``raw_weight``); text vectors carry zeros there. Text-to-image scores are
then the shared head's cosine times a constant (ranking unchanged), while image-to-image
scores mix in the image-only parts.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from encoders.backbones import TUNED_PREFIX, tuned_arrays

F32 = npt.NDArray[np.float32]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_HEADS = WEIGHTS_DIR / "heads-v4.npz"


def gelu(x: F32) -> F32:
    out: F32 = (0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))).astype(np.float32)
    return out


def l2_normalise(x: F32) -> F32:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: F32 = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


INT8_MIN_INPUTS = 1024  # a first layer at least this wide runs on int8 weights


def _pack_int8(weight: F32, bias: F32) -> Any:
    """[in, out] float weights as torch's packed int8 linear parameters (per output)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rows = torch.from_numpy(np.ascontiguousarray(weight.T))
        scales = (rows.abs().amax(dim=1) / 127).clamp(min=1e-8).double()
        zeros = torch.zeros(len(scales), dtype=torch.long)
        quantised = torch.quantize_per_channel(rows, scales, zeros, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(quantised, torch.from_numpy(bias))


@dataclass
class Tower:
    mean: F32
    std: F32
    weights: list[F32]
    biases: list[F32]
    _int8_first: Any = field(default=None, init=False, repr=False, compare=False)

    def _int8_first_layer(self) -> Any:
        """A wide first layer as int8 weights (symmetric, one scale per output) packed for
        torch's dynamically quantised product, or None (narrow layer, or no quantised
        kernels in this torch). At one row the float32 product streams every weight from
        memory: for the 6,678 x 1,280 image layers about 2 ms against 0.15 ms in int8, with
        the held-out metrics within 0.004 of float32 (model card, cost section)."""
        if self._int8_first is None:
            self._int8_first = False
            if self.weights[0].shape[0] >= INT8_MIN_INPUTS:
                # quantised tensors are deprecated in torch (torchao takes them over); where
                # they are gone, the float32 product is used
                try:
                    self._int8_first = _pack_int8(self.weights[0], self.biases[0])
                except (RuntimeError, AttributeError):  # pragma: no cover - torch builds
                    self._int8_first = False
        return None if self._int8_first is False else self._int8_first

    def __call__(self, x: F32) -> F32:
        """The MLP in torch (float32, on torch's intra-op threads): for one row, numpy's
        OpenBLAS threads cost several times the arithmetic; torch keeps it under 1 ms.
        Rows go through an int8 first layer one at a time: its inputs are quantised per
        call, so a row's vector never depends on the rows batched with it."""
        import torch

        h = torch.from_numpy(np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32))
        packed = self._int8_first_layer()
        with torch.inference_mode():
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                if i == 0 and packed is not None and len(h):
                    h = torch.cat(
                        [torch.ops.quantized.linear_dynamic(row[None], packed, True) for row in h]
                    )
                else:
                    h = torch.addmm(torch.from_numpy(b), h, torch.from_numpy(w))
                if i < len(self.weights) - 1:
                    h = torch.nn.functional.gelu(h, approximate="tanh")
            out: F32 = h.numpy().astype(np.float32)
        return out

    @property
    def out_dim(self) -> int:
        return int(self.weights[-1].shape[1])

    def float32(self) -> Tower:
        """The same tower with no int8 first layer: float32 throughout (what the ONNX
        export computes, and the reference it is checked against)."""
        tower = Tower(self.mean, self.std, self.weights, self.biases)
        tower._int8_first = False
        return tower

    def arrays(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {
            f"{prefix}.mean": self.mean.astype(np.float32),
            f"{prefix}.std": self.std.astype(np.float32),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            out[f"{prefix}.w{i}"] = w.astype(np.float16)
            out[f"{prefix}.b{i}"] = b.astype(np.float16)
        return out

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> Tower:
        weights: list[F32] = []
        biases: list[F32] = []
        i = 0
        while f"{prefix}.w{i}" in arrays:
            weights.append(np.ascontiguousarray(arrays[f"{prefix}.w{i}"], dtype=np.float32))
            biases.append(np.ascontiguousarray(arrays[f"{prefix}.b{i}"], dtype=np.float32))
            i += 1
        if not weights:
            raise ValueError(f"no layers for {prefix!r} in the heads file")
        return cls(
            mean=np.asarray(arrays[f"{prefix}.mean"], dtype=np.float32),
            std=np.asarray(arrays[f"{prefix}.std"], dtype=np.float32),
            weights=weights,
            biases=biases,
        )


def raw_dim(meta: dict[str, Any]) -> int:
    """Width of the raw backbone part of an image vector (0 when it has none)."""
    return int(meta.get("raw_dim", 1280)) if float(meta.get("raw_weight", 0.0)) > 0 else 0


def _npy_shape(archive: zipfile.ZipFile, member: str) -> tuple[int, ...]:
    """The shape in an .npz member's header: only its first bytes are decompressed."""
    with archive.open(member) as handle:
        major, _ = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read_header(handle)
    return tuple(int(n) for n in shape)


@dataclass(frozen=True)
class HeadsSummary:
    """What a heads file says about its vectors without reading its weights: the ONNX
    Runtime path needs no more (the weights are in the built models), and decompressing a
    heads file (22 MB for heads-v3) was half of a server's wait for its text tower."""

    meta: dict[str, Any]
    dim: int
    tunes_backbone: bool

    @classmethod
    def read(cls, path: Path) -> HeadsSummary:
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n.removesuffix(".npy") for n in archive.namelist()]
                shapes = {n: _npy_shape(archive, n + ".npy") for n in names if n != "meta"}
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"cannot read the heads file {path}: {exc}") from exc
        meta = Heads.read_meta(path)

        def out_dim(prefix: str) -> int:
            layers = sum(1 for name in shapes if name.startswith(f"{prefix}.w"))
            if not layers:
                raise ValueError(f"no layers for {prefix!r} in the heads file {path}")
            return shapes[f"{prefix}.w{layers - 1}"][1]

        extra = "extra.w0" in shapes and float(meta.get("extra_weight", 0.0)) > 0
        dim = out_dim("image") + (out_dim("extra") if extra else 0) + raw_dim(meta)
        tunes = any(name.startswith(TUNED_PREFIX) for name in shapes)
        return cls(meta=meta, dim=dim, tunes_backbone=tunes)


@dataclass
class Heads:
    """``image`` and ``text`` map into the shared space; ``extra`` (optional) is an
    image-only tower trained for image-to-image search (product type, augmentations);
    ``backbone`` (optional) holds the image backbone's fine-tuned layers, by state-dict name
    (stored as ``backbone.<name>`` arrays, which ``encoders.backbones`` reads)."""

    image: Tower
    text: Tower
    meta: dict[str, Any]
    extra: Tower | None = None
    backbone: dict[str, F32] = field(default_factory=dict)

    def float32(self) -> Heads:
        """These heads computed in float32 throughout (see ``Tower.float32``)."""
        return replace(
            self,
            image=self.image.float32(),
            text=self.text.float32(),
            extra=self.extra.float32() if self.extra is not None else None,
        )

    @property
    def head_dim(self) -> int:
        return self.image.out_dim

    @property
    def raw_weight(self) -> float:
        return float(self.meta.get("raw_weight", 0.0))

    @property
    def extra_weight(self) -> float:
        return float(self.meta.get("extra_weight", 0.0)) if self.extra is not None else 0.0

    @property
    def raw_dim(self) -> int:
        return raw_dim(self.meta)

    @property
    def extra_dim(self) -> int:
        return self.extra.out_dim if self.extra is not None and self.extra_weight > 0 else 0

    @property
    def dim(self) -> int:
        return self.head_dim + self.extra_dim + self.raw_dim

    @property
    def uses_colour(self) -> bool:
        return bool(self.meta.get("colour", True))

    def image_input(self, cnn: F32, colour: F32) -> F32:
        if self.uses_colour:
            return np.concatenate([cnn, colour], axis=1).astype(np.float32)
        return cnn

    def embed_images(self, cnn: F32, colour: F32) -> F32:
        """Unit vectors [n, dim] from backbone features [n, 1280] and colour stats [n, c]:
        the shared-space part, then the image-only parts, each scaled by the square root of
        its weight (so image-to-image cosine is the weighted sum of the parts' cosines)."""
        x = self.image_input(cnn, colour)
        head = l2_normalise(self.image(x))
        if not self.extra_dim and not self.raw_dim:
            return head
        parts = [head * np.sqrt(1.0 - self.extra_weight - self.raw_weight)]
        if self.extra_dim:
            assert self.extra is not None
            parts.append(l2_normalise(self.extra(x)) * np.sqrt(self.extra_weight))
        if self.raw_dim:
            parts.append(l2_normalise(cnn) * np.sqrt(self.raw_weight))
        return l2_normalise(np.concatenate(parts, axis=1).astype(np.float32))

    def embed_texts(self, features: F32) -> F32:
        """Unit vectors [n, dim]: the shared-space part, zeros in the image-only parts (so
        text-to-image ranking depends on the shared space alone)."""
        head = l2_normalise(self.text(features))
        if not self.extra_dim and not self.raw_dim:
            return head
        pad = np.zeros((len(head), self.extra_dim + self.raw_dim), dtype=np.float32)
        return np.concatenate([head, pad], axis=1).astype(np.float32)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {**self.image.arrays("image"), **self.text.arrays("text")}
        if self.extra is not None:
            arrays.update(self.extra.arrays("extra"))
        for key, array in self.backbone.items():
            arrays[TUNED_PREFIX + key] = array.astype(np.float16)
        meta = np.frombuffer(json.dumps(self.meta, sort_keys=True).encode(), dtype=np.uint8)
        arrays["meta"] = meta
        np.savez_compressed(path, **arrays)

    @staticmethod
    def read_meta(path: Path) -> dict[str, Any]:
        """Only the JSON facts of a heads file (cheap: the arrays are not read)."""
        with np.load(path, allow_pickle=False) as arrays:
            meta: dict[str, Any] = json.loads(bytes(arrays["meta"].tobytes()).decode())
            return meta

    @classmethod
    def load(cls, path: Path) -> Heads:
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(bytes(arrays["meta"].tobytes()).decode())
            return cls(
                image=Tower.from_arrays(arrays, "image"),
                text=Tower.from_arrays(arrays, "text"),
                meta=meta,
                extra=Tower.from_arrays(arrays, "extra") if "extra.w0" in arrays else None,
                backbone=tuned_arrays(arrays),
            )
