"""Exports the built-in encoders' networks from torch to ONNX (needs the ``[train]`` extra).

What is exported is what the torch path computes, in float32: EfficientNet-Lite with its
ReLU6 activations (never ``set_swish``: the tuned blocks and the heads were trained on ReLU6
features, and Swish silently ruins them), the pooled parts, the trained heads with their
standardisation, GELU (tanh) and L2 normalisations, and MiniLM's forward pass with the
attention mask always applied. Colour statistics and tokenization stay outside (numpy and
``tokenizers``), like image decoding and preprocessing (``encoders.images``,
``encoders.backbones``).
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from encoders.backbones import COLOUR_DIM, ImageBackboneSpec, minilm_path, pooled_network
from encoders.fashion_lite.heads import Heads, Tower
from encoders.minilm import MiniLM

OPSET = 17
_PIXELS = ("pixels", {0: "batch"})
_EXAMPLE_TEXT = ("a red summer dress", "black trousers with pockets")


class _Mlp(torch.nn.Module):
    """A heads tower in torch float32: standardise, then linear layers with GELU (tanh)
    between them (``Tower.__call__`` without its int8 first layer)."""

    mean: Tensor
    std: Tensor

    def __init__(self, tower: Tower) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(tower.mean.copy()))
        self.register_buffer("std", torch.from_numpy(tower.std.copy()))
        self.layers = torch.nn.ModuleList()
        for weight, bias in zip(tower.weights, tower.biases, strict=True):
            linear = torch.nn.Linear(weight.shape[0], weight.shape[1])
            linear.weight.data = torch.from_numpy(weight.T.copy())
            linear.bias.data = torch.from_numpy(bias.copy())
            self.layers.append(linear)

    def forward(self, x: Tensor) -> Tensor:
        h = (x - self.mean) / self.std
        for index, layer in enumerate(self.layers):
            h = layer(h)
            if index < len(self.layers) - 1:
                h = functional.gelu(h, approximate="tanh")
        return h


def _unit(x: Tensor) -> Tensor:
    return functional.normalize(x, dim=-1, eps=1e-12)


class FashionLiteImageTower(torch.nn.Module):
    """Pixels [n, 3, s, s] and colour stats [n, c] -> image vectors [n, dim] (what
    ``Heads.embed_images`` makes of the backbone's pooled features)."""

    def __init__(self, pooled: Any, heads: Heads) -> None:
        super().__init__()
        self.pooled = pooled
        self.uses_colour = heads.uses_colour
        self.image = _Mlp(heads.image)
        self.extra = _Mlp(heads.extra) if heads.extra is not None and heads.extra_dim else None
        self.raw = heads.raw_dim > 0
        self.head_scale = math.sqrt(1.0 - heads.extra_weight - heads.raw_weight)
        self.extra_scale = math.sqrt(heads.extra_weight)
        self.raw_scale = math.sqrt(heads.raw_weight)

    def forward(self, pixels: Tensor, colour: Tensor) -> Tensor:
        cnn = self.pooled(pixels)
        x = torch.cat([cnn, colour], dim=1) if self.uses_colour else cnn
        head = _unit(self.image(x))
        if self.extra is None and not self.raw:
            return head
        parts = [head * self.head_scale]
        if self.extra is not None:
            parts.append(_unit(self.extra(x)) * self.extra_scale)
        if self.raw:
            parts.append(_unit(cnn) * self.raw_scale)
        return _unit(torch.cat(parts, dim=1))


class FashionLiteTextHead(torch.nn.Module):
    """MiniLM features [n, 384] -> text vectors [n, dim], zeros in the image-only parts."""

    def __init__(self, heads: Heads) -> None:
        super().__init__()
        self.text = _Mlp(heads.text)
        self.pad = heads.extra_dim + heads.raw_dim

    def forward(self, features: Tensor) -> Tensor:
        head = _unit(self.text(features))
        if not self.pad:
            return head
        return torch.cat([head, head.new_zeros(head.shape[0], self.pad)], dim=1)


class _MiniLMModule(torch.nn.Module):
    def __init__(self, model: MiniLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model._forward(input_ids, attention_mask, always_mask=True)


class _AveragePooled(torch.nn.Module):
    """EfficientNet-Lite's global average feature, L2-normalised (the image-only baselines)."""

    def __init__(self, pooled: Any) -> None:
        super().__init__()
        self.pooled = pooled

    def forward(self, pixels: Tensor) -> Tensor:
        return _unit(self.pooled(pixels))


def _export(
    module: torch.nn.Module,
    example: tuple[Tensor, ...],
    path: Path,
    inputs: dict[str, dict[int, str]],
) -> None:
    """The TorchScript-based exporter: it records the float32 graph torch runs, and needs no
    onnxscript."""
    module.eval()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=["vectors"],
            dynamic_axes={**inputs, "vectors": {0: "batch"}},
        )


def image_example(size: int, batch: int = 2) -> Tensor:
    return torch.zeros(batch, 3, size, size)


def export_fashion_lite(heads_path: Path, spec: ImageBackboneSpec, out: Path) -> None:
    """``image.onnx`` (pixels, colour -> vectors) and ``text-head.onnx`` (features ->
    vectors) of the heads file at ``heads_path``, whose backbone is ``spec``."""
    heads = Heads.load(heads_path)
    tower = FashionLiteImageTower(pooled_network(spec), heads)
    _export(
        tower,
        (image_example(spec.size), torch.zeros(2, COLOUR_DIM)),
        out / "image.onnx",
        {_PIXELS[0]: _PIXELS[1], "colour": {0: "batch"}},
    )
    _export(
        FashionLiteTextHead(heads),
        (torch.zeros(2, heads.text.mean.shape[0]),),
        out / "text-head.onnx",
        {"features": {0: "batch"}},
    )


def export_minilm(out: Path) -> None:
    """``model.onnx`` (input_ids, attention_mask -> features) and ``tokenizer.json``."""
    path = minilm_path()
    model = MiniLM(path, packed=False)
    ids, mask = model.token_ids(_EXAMPLE_TEXT)
    _export(
        _MiniLMModule(model),
        (ids, mask),
        out / "model.onnx",
        {
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
        },
    )
    shutil.copyfile(path / "tokenizer.json", out / "tokenizer.json")


def export_effnet(spec: ImageBackboneSpec, out: Path) -> None:
    """``image.onnx``: pixels -> L2-normalised global-average features [n, 1280]."""
    _export(
        _AveragePooled(pooled_network(spec)),
        (image_example(spec.size),),
        out / "image.onnx",
        {_PIXELS[0]: _PIXELS[1]},
    )
