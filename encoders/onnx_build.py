"""Builds the built-in encoders' ONNX models from their packaged weights, without torch.

The graphs are written node by node with ``onnx.helper`` from numpy arrays (the weight
packages' files, read by ``encoders.weight_files``, and the heads files), so the default
install can make them on first use in a second or two; torch computes the same networks
and is the reference they are checked against (``encoders.onnx_models.parity``).

- EfficientNet-Lite: convolutions with their batch norms folded in, ReLU6 (``Clip`` 0..6,
  never Swish: the tuned blocks and the heads were trained on ReLU6 features), depthwise
  convolutions, no squeeze-excitation, TensorFlow's "same" padding computed as the torch
  package does (for the variant's nominal image size), then the pooled parts.
- all-MiniLM-L6-v2: BERT's encoder (6 layers), the attention mask always applied, mean
  pooling over real tokens and L2 normalisation, as ``encoders.minilm``.
- The heads: standardisation (folded into the first layer), linear layers with GELU (tanh)
  between them, and the L2 normalisations of ``Heads.embed_images`` / ``embed_texts``.

Input sizes are fixed (``pixels`` is [batch, 3, size, size]) so that ONNX Runtime plans the
convolutions once.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from domain.errors import EncoderUnavailable
from encoders.backbones import (
    COLOUR_DIM,
    MID_BLOCK,
    POOLED_PARTS,
    ImageBackboneSpec,
    minilm_path,
    weights_path,
)
from encoders.fashion_lite.heads import INT8_MIN_INPUTS, Heads, Tower
from encoders.weight_files import read_safetensors, read_torch_checkpoint

F32 = npt.NDArray[np.float32]

OPSET = 17
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's own operators (MatMulNBits, from 1.22 in 8 bits)
MS_OPSET = 1
INT8_BLOCK = 32  # inputs per scale (of weights and of the quantised input)
INT8_LEVELS = 127  # symmetric weights: -127..127 times their block's scale
INT8_MIN_SCALE = 1e-8  # an all-zero block
INT8_ZERO_POINT = 128  # MatMulNBits' default for 8 bits: levels are stored as uint8
INT8_ACCURACY_LEVEL = 4  # the input quantised to int8 per block: the int8 product
WEIGHTS_SUFFIX = ".weights"  # model.onnx's tensors are in model.onnx.weights
EXTERNAL_MIN_BYTES = 1024  # smaller tensors (shapes, scalars) stay in the graph
IR_VERSION = 8  # what ONNX Runtime 1.18 reads (the project needs 1.22: MatMulNBits in 8 bits)
BATCH = "batch"
NORM_EPS = 1e-12  # torch.nn.functional.normalize's
MASKED_SCORE = -1e9  # attention scores of padding keys (exp() is exactly 0 in float32)

# EfficientNet-Lite's stages, as the torch package (and TensorFlow's builder) define them:
# (repeats, kernel, stride, expand ratio). Stem (32) and head (1280) are never scaled, nor
# the repeats of the first and last stage; the others' repeats are multiplied by the
# variant's depth coefficient (rounded up).
LITE_STAGES = ((1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6))
LITE_LAST_STAGE = (1, 3, 1, 6)
LITE_VARIANTS = {  # depth coefficient, nominal image size (the padding is computed for it)
    "efficientnet-lite0": (1.0, 224),
    "efficientnet-lite1": (1.1, 240),
    "efficientnet-lite2": (1.2, 260),
    "efficientnet-lite3": (1.4, 280),
    "efficientnet-lite4": (1.8, 300),
}
LITE_BN_EPS = 1e-3
STEM_STRIDE = 2


@dataclass
class _Graph:
    """Nodes and initializers of one graph, with generated unique names."""

    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    _count: int = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array: npt.ArrayLike, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def scalar(self, value: float) -> str:
        return self.const(np.array(value, dtype=np.float32), "s")

    def op(self, op_type: str, inputs: Sequence[str], **attributes: Any) -> str:
        from onnx import helper

        output = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def save(self, path: Path, inputs: list[Any], output: str, dim: int | None) -> None:
        from onnx import TensorProto, helper, save_model

        self.nodes.append(helper.make_node("Identity", [output], ["vectors"]))
        outputs = [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, [BATCH, dim])]
        graph = helper.make_graph(self.nodes, path.stem, inputs, outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if any(node.domain == MS_DOMAIN for node in self.nodes):
            opsets.append(helper.make_opsetid(MS_DOMAIN, MS_OPSET))
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="fashion-search",
            ir_version=IR_VERSION,
        )
        # the weights in a file of their own beside the graph: ONNX Runtime maps it into
        # memory instead of parsing it out of the protobuf (MiniLM's session: 0.06 instead of
        # 0.21 s of CPU), which is most of a cold start's wait for the text tower
        weights = path.with_name(path.name + WEIGHTS_SUFFIX)
        weights.unlink(missing_ok=True)  # onnx appends to an existing file
        save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=weights.name,
            size_threshold=EXTERNAL_MIN_BYTES,
        )
        # onnx creates it private (0600); a service user must read what a build user wrote
        weights.chmod(path.stat().st_mode & 0o777)

    # ------------------------------------------------------------ small blocks

    def linear(self, x: str, weight: F32, bias: F32) -> str:
        """``x @ weight + bias`` for a weight stored [in, out]."""
        product = self.op("MatMul", [x, self.const(weight.astype(np.float32), "w")])
        return self.op("Add", [product, self.const(bias.astype(np.float32), "b")])

    def unit(self, x: str) -> str:
        """L2-normalised rows (last axis), as ``torch.nn.functional.normalize``."""
        norm = self.op("ReduceL2", [x], axes=[-1], keepdims=1)
        return self.op("Div", [x, self.op("Max", [norm, self.scalar(NORM_EPS)])])

    def scale(self, x: str, factor: float) -> str:
        return self.op("Mul", [x, self.scalar(factor)])

    def gelu_tanh(self, x: str) -> str:
        """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        cube = self.op("Mul", [self.op("Mul", [x, x]), x])
        inner = self.op("Add", [x, self.scale(cube, 0.044715)])
        tanh = self.op("Tanh", [self.scale(inner, math.sqrt(2.0 / math.pi))])
        return self.op("Mul", [self.scale(x, 0.5), self.op("Add", [tanh, self.scalar(1.0)])])

    def gelu_erf(self, x: str) -> str:
        """0.5 x (1 + erf(x / sqrt 2)): BERT's exact GELU."""
        erf = self.op("Erf", [self.scale(x, 1.0 / math.sqrt(2.0))])
        return self.op("Mul", [self.scale(x, 0.5), self.op("Add", [erf, self.scalar(1.0)])])

    def int8_linear(self, x: str, weight: F32, bias: F32) -> str:
        """``x @ weight + bias`` on int8 weights (ONNX Runtime's MatMulNBits, 8 bits): one
        symmetric scale per block of INT8_BLOCK inputs of each output, the input quantised
        on each call per block too (``accuracy_level`` 4, its int8 product). Finer than
        torch's int8 heads (one scale per output and per input row): cosine >= 0.9999 to
        float32 on the demo photos, where torch's fell to 0.9926 and ONNX Runtime's
        DynamicQuantizeMatMul (the same, with an 8-bit input) to 0.96. At one row the float32
        product streams every weight from memory: int8 reads a quarter."""
        from onnx import helper

        inputs, outputs = weight.shape
        blocks = -(-inputs // INT8_BLOCK)
        rows = np.zeros((outputs, blocks * INT8_BLOCK), dtype=np.float64)  # [out, in], padded
        rows[:, :inputs] = np.asarray(weight, dtype=np.float64).T
        grouped = rows.reshape(outputs, blocks, INT8_BLOCK)
        scales = np.maximum(np.abs(grouped).max(axis=2) / INT8_LEVELS, INT8_MIN_SCALE)
        levels = np.clip(np.rint(grouped / scales[:, :, None]), -INT8_LEVELS - 1, INT8_LEVELS)
        product = self._name("matmulnbits")
        node = helper.make_node(
            "MatMulNBits",
            [
                x,
                self.const((levels + INT8_ZERO_POINT).astype(np.uint8), "w8"),
                self.const(scales.astype(np.float32).reshape(-1), "scale"),
            ],
            [product],
            domain=MS_DOMAIN,
            K=inputs,
            N=outputs,
            bits=8,
            block_size=INT8_BLOCK,
            accuracy_level=INT8_ACCURACY_LEVEL,
        )
        self.nodes.append(node)
        return self.op("Add", [product, self.const(bias.astype(np.float32), "b")])

    def columns(self, x: str, start: int, end: int) -> str:
        """Columns ``start:end`` of the rows of ``x``."""
        bounds = [self.const(np.array([value], dtype=np.int64)) for value in (start, end, 1)]
        return self.op("Slice", [x, bounds[0], bounds[1], bounds[2]])

    def int8_first_layers(self, x: str, towers: Sequence[Tower]) -> list[str]:
        """The first layers of ``towers`` on int8 weights, as one product when they
        standardise their input alike (fashion-lite's image and extra towers do): the input
        is standardised and quantised once, and a block's weights are quantised as they
        would be alone (per output and block of inputs), so each tower gets the same values."""
        mean, std = towers[0].mean, towers[0].std
        centred = self.op("Sub", [x, self.const(mean.astype(np.float32), "mean")])
        scaled = self.op("Div", [centred, self.const(std.astype(np.float32), "std")])
        weight = np.concatenate([tower.weights[0] for tower in towers], axis=1)
        bias = np.concatenate([tower.biases[0] for tower in towers])
        joined = self.int8_linear(scaled, weight, bias)
        edges = np.cumsum([0] + [int(tower.weights[0].shape[1]) for tower in towers])
        if len(towers) == 1:
            return [joined]
        return [self.columns(joined, int(a), int(b)) for a, b in itertools.pairwise(edges)]

    def mlp(self, x: str, tower: Tower, int8_first: bool = False, first: str | None = None) -> str:
        """A heads tower: standardisation folded into the first layer, GELU (tanh) between
        layers (``Tower.__call__`` in float32). With ``int8_first``, a first layer of at
        least INT8_MIN_INPUTS inputs runs on int8 weights after the standardisation, as in
        torch's default heads (``Tower.__call__``). ``first``: the first layer's output,
        computed already (``int8_first_layers``)."""
        for index, (weight, bias) in enumerate(zip(tower.weights, tower.biases, strict=True)):
            if index == 0 and first is not None:
                x = first
            elif index == 0 and int8_first and weight.shape[0] >= INT8_MIN_INPUTS:
                centred = self.op("Sub", [x, self.const(tower.mean.astype(np.float32), "mean")])
                scaled = self.op("Div", [centred, self.const(tower.std.astype(np.float32), "std")])
                x = self.int8_linear(scaled, weight, bias)
            elif index == 0:
                inverse = 1.0 / tower.std.astype(np.float64)
                folded = weight.astype(np.float64) * inverse[:, None]
                shift = bias.astype(np.float64) - (tower.mean * inverse) @ weight.astype(np.float64)
                x = self.linear(x, folded.astype(np.float32), shift.astype(np.float32))
            else:
                x = self.linear(x, weight, bias)
            if index < len(tower.weights) - 1:
                x = self.gelu_tanh(x)
        return x


def _input(name: str, elem: int, shape: list[Any]) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def _float_input(name: str, shape: list[Any]) -> Any:
    from onnx import TensorProto

    return _input(name, TensorProto.FLOAT, shape)


# ---------------------------------------------------------------- EfficientNet-Lite


@dataclass(frozen=True)
class _Block:
    index: int
    kernel: int
    stride: int
    expand: bool


def _lite_blocks(name: str, state: dict[str, Any]) -> list[_Block]:
    """The MBConv blocks of ``name``, checked against the checkpoint's block count."""
    if name not in LITE_VARIANTS:
        raise EncoderUnavailable(f"no ONNX builder for the image backbone {name!r}")
    depth = LITE_VARIANTS[name][0]
    stages = [(LITE_STAGES[0][0], *LITE_STAGES[0][1:])]
    stages += [(math.ceil(depth * r), k, s, e) for r, k, s, e in LITE_STAGES[1:]]
    stages.append(LITE_LAST_STAGE)
    blocks: list[_Block] = []
    for repeats, kernel, stride, expand in stages:
        for repeat in range(repeats):
            blocks.append(_Block(len(blocks), kernel, stride if repeat == 0 else 1, expand != 1))
    present = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.")}
    if present != set(range(len(blocks))):
        raise EncoderUnavailable(f"the weights of {name} do not have its {len(blocks)} blocks")
    return blocks


def _same_pads(size: int, kernel: int, stride: int) -> list[int]:
    """TensorFlow's "same" padding for a square input of ``size`` (ONNX order: begins, ends)."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return [pad // 2, pad // 2, pad - pad // 2, pad - pad // 2]


def _conv_out(size: int, kernel: int, stride: int, pads: list[int]) -> int:
    return (size + pads[0] + pads[2] - kernel) // stride + 1


@dataclass
class _Lite:
    """EfficientNet-Lite written into a graph, tracking the feature map's side."""

    graph: _Graph
    state: dict[str, Any]
    nominal: int  # the padding's image size (the package's static padding)
    side: int  # the actual input's side, then the feature map's

    def conv_bn(
        self, x: str, conv: str, bn: str, stride: int = 1, groups: int = 1, relu6: bool = True
    ) -> str:
        weight = np.asarray(self.state[f"{conv}.weight"], dtype=np.float64)
        gamma, beta, mean, var = (
            np.asarray(self.state[f"{bn}.{part}"], dtype=np.float64)
            for part in ("weight", "bias", "running_mean", "running_var")
        )
        scale = gamma / np.sqrt(var + LITE_BN_EPS)
        kernel = int(weight.shape[-1])
        pads = _same_pads(self.nominal, kernel, stride) if kernel > 1 else [0, 0, 0, 0]
        y = self.graph.op(
            "Conv",
            [
                x,
                self.graph.const((weight * scale[:, None, None, None]).astype(np.float32), "w"),
                self.graph.const((beta - mean * scale).astype(np.float32), "b"),
            ],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=pads,
            group=groups,
        )
        self.side = _conv_out(self.side, kernel, stride, pads)
        if relu6:
            y = self.graph.op("Clip", [y, self.graph.scalar(0.0), self.graph.scalar(6.0)])
        return y

    def block(self, x: str, block: _Block) -> str:
        prefix = f"_blocks.{block.index}"
        h = x
        if block.expand:
            h = self.conv_bn(h, f"{prefix}._expand_conv", f"{prefix}._bn0")
        channels = int(self.state[f"{prefix}._depthwise_conv.weight"].shape[0])
        h = self.conv_bn(
            h, f"{prefix}._depthwise_conv", f"{prefix}._bn1", block.stride, groups=channels
        )
        self.nominal = math.ceil(self.nominal / block.stride)
        h = self.conv_bn(h, f"{prefix}._project_conv", f"{prefix}._bn2", relu6=False)
        in_channels = (
            int(self.state[f"{prefix}._expand_conv.weight"].shape[1]) if block.expand else channels
        )
        out_channels = int(self.state[f"{prefix}._project_conv.weight"].shape[0])
        if block.stride == 1 and in_channels == out_channels:
            h = self.graph.op("Add", [h, x])
        return h


def _pool(graph: _Graph, h: str, mid: str, parts: Sequence[str], rows: int, mid_side: int) -> str:
    """The pooled parts of ``encoders.backbones.pooled_network``, concatenated."""
    out: list[str] = []
    for part in parts:
        if part == "avg":
            out.append(graph.op("ReduceMean", [h], axes=[2, 3], keepdims=0))
        elif part == "max":
            out.append(graph.op("ReduceMax", [h], axes=[2, 3], keepdims=0))
        elif part == "bands3":
            edges = [0, rows // 3, rows - rows // 3, rows]
            for start, end in itertools.pairwise(edges):
                band = graph.op(
                    "Slice",
                    [
                        h,
                        graph.const(np.array([start], dtype=np.int64)),
                        graph.const(np.array([end], dtype=np.int64)),
                        graph.const(np.array([2], dtype=np.int64)),
                    ],
                )
                out.append(graph.op("ReduceMean", [band], axes=[2, 3], keepdims=0))
        elif part == "mid":
            mean = graph.op("ReduceMean", [mid], axes=[2, 3], keepdims=1)
            centred = graph.op("Sub", [mid, mean])
            squares = graph.op("ReduceSumSquare", [centred], axes=[2, 3], keepdims=0)
            # torch's std: unbiased (n - 1)
            variance = graph.scale(squares, 1.0 / (mid_side * mid_side - 1))
            out.append(graph.op("Flatten", [mean], axis=1))
            out.append(graph.op("Sqrt", [variance]))
    return out[0] if len(out) == 1 else graph.op("Concat", out, axis=1)


def _lite_state(spec: ImageBackboneSpec, tuned: dict[str, F32]) -> dict[str, Any]:
    state = read_torch_checkpoint(Path(weights_path(spec.name)))
    for key, array in tuned.items():
        if key not in state:
            raise EncoderUnavailable(f"{spec.tuned}: {key!r} is not a layer of the backbone")
        if tuple(state[key].shape) != array.shape:
            raise EncoderUnavailable(
                f"{spec.tuned}: {key!r} has shape {array.shape}, the backbone "
                f"{tuple(state[key].shape)}"
            )
        state[key] = array
    return state


def _pooled_features(graph: _Graph, spec: ImageBackboneSpec, tuned: dict[str, F32]) -> str:
    """EfficientNet-Lite of ``spec`` from the ``pixels`` input to its pooled parts."""
    unknown = [part for part in spec.parts if part not in POOLED_PARTS]
    if unknown or not spec.parts:
        raise EncoderUnavailable(f"unknown pooled image features {unknown or spec.parts}")
    state = _lite_state(spec, tuned)
    blocks = _lite_blocks(spec.name, state)
    lite = _Lite(graph, state, LITE_VARIANTS[spec.name][1], spec.size)
    h = lite.conv_bn("pixels", "_conv_stem", "_bn0", STEM_STRIDE)
    lite.nominal = math.ceil(lite.nominal / STEM_STRIDE)
    mid, mid_side = h, lite.side
    for block in blocks:
        h = lite.block(h, block)
        if block.index == MID_BLOCK:
            mid, mid_side = h, lite.side
    h = lite.conv_bn(h, "_conv_head", "_bn1")
    return _pool(graph, h, mid, spec.parts, lite.side, mid_side)


def _pixels_input(spec: ImageBackboneSpec) -> Any:
    return _float_input("pixels", [BATCH, 3, spec.size, spec.size])


# ---------------------------------------------------------------- the models


def build_effnet(spec: ImageBackboneSpec, out: Path) -> None:
    """``image.onnx``: pixels -> L2-normalised pooled features (the image-only baselines)."""
    graph = _Graph()
    features = graph.unit(_pooled_features(graph, spec, {}))
    graph.save(out / "image.onnx", [_pixels_input(spec)], features, None)


def _standardise_alike(towers: Sequence[Tower]) -> bool:
    """Whether the towers' first layers can be one int8 product: all wide enough, and the
    same standardisation of their (shared) input."""
    first = towers[0]
    return all(
        tower.weights[0].shape[0] >= INT8_MIN_INPUTS
        and np.array_equal(tower.mean, first.mean)
        and np.array_equal(tower.std, first.std)
        for tower in towers
    )


def build_fashion_lite(
    heads_path: Path, spec: ImageBackboneSpec, out: Path, int8_heads: bool = True
) -> None:
    """``image.onnx`` (pixels, colour -> vectors) and ``text-head.onnx`` (features ->
    vectors) of the heads file at ``heads_path``, whose backbone is ``spec``; with
    ``int8_heads``, the image towers' wide first layers on int8 weights (as torch's default
    heads; 1.2 ms less per image at batch 1), else float32."""
    heads = Heads.load(heads_path)
    graph = _Graph()
    cnn = _pooled_features(graph, spec, heads.backbone)
    inputs = [_pixels_input(spec)]
    x = cnn
    if heads.uses_colour:
        inputs.append(_float_input("colour", [BATCH, COLOUR_DIM]))
        x = graph.op("Concat", [cnn, "colour"], axis=1)
    towers = [heads.image] + ([heads.extra] if heads.extra is not None else [])
    firsts: list[str | None] = [None] * len(towers)
    if int8_heads and _standardise_alike(towers):
        firsts = list(graph.int8_first_layers(x, towers))
    head = graph.unit(graph.mlp(x, heads.image, int8_heads, firsts[0]))
    if heads.extra_dim or heads.raw_dim:
        parts = [graph.scale(head, math.sqrt(1.0 - heads.extra_weight - heads.raw_weight))]
        if heads.extra_dim:
            assert heads.extra is not None
            extra = graph.unit(graph.mlp(x, heads.extra, int8_heads, firsts[-1]))
            parts.append(graph.scale(extra, math.sqrt(heads.extra_weight)))
        if heads.raw_dim:
            parts.append(graph.scale(graph.unit(cnn), math.sqrt(heads.raw_weight)))
        head = graph.unit(graph.op("Concat", parts, axis=1))
    graph.save(out / "image.onnx", inputs, head, heads.dim)

    text = _Graph()
    vectors = text.unit(text.mlp("features", heads.text))
    if heads.extra_dim or heads.raw_dim:
        # zeros in the image-only parts: Pad the rows on the right
        pads = np.array([0, 0, 0, heads.extra_dim + heads.raw_dim], dtype=np.int64)
        vectors = text.op("Pad", [vectors, text.const(pads)])
    features = _float_input("features", [BATCH, int(heads.text.mean.shape[0])])
    text.save(out / "text-head.onnx", [features], vectors, heads.dim)


@dataclass
class _Bert:
    """BERT's encoder (as all-MiniLM-L6-v2 is configured) written into a graph."""

    graph: _Graph
    weights: dict[str, F32]
    dim: int
    heads: int
    eps: float

    def dense(self, x: str, name: str) -> str:
        weight = self.weights[f"{name}.weight"].T.copy()  # stored [out, in]
        return self.graph.linear(x, weight, self.weights[f"{name}.bias"])

    def norm(self, x: str, name: str) -> str:
        scale, shift = self.weights[f"{name}.weight"], self.weights[f"{name}.bias"]
        return self.graph.op(
            "LayerNormalization",
            [x, self.graph.const(scale), self.graph.const(shift)],
            axis=-1,
            epsilon=self.eps,
        )

    def embeddings(self) -> str:
        """Word, position and (type 0) token-type embeddings of ``input_ids``, normalised."""
        graph, table = self.graph, self.weights

        def ints(*values: int) -> str:
            return graph.const(np.array(values, dtype=np.int64))

        words = graph.op(
            "Gather", [graph.const(table["embeddings.word_embeddings.weight"]), "input_ids"]
        )
        length = graph.op("Slice", [graph.op("Shape", ["input_ids"]), ints(1), ints(2)])
        positions = graph.op(
            "Slice",
            [graph.const(table["embeddings.position_embeddings.weight"]), ints(0), length, ints(0)],
        )
        token_type = graph.const(table["embeddings.token_type_embeddings.weight"][0])
        x = graph.op("Add", [graph.op("Add", [words, token_type]), positions])
        return self.norm(x, "embeddings.LayerNorm")

    def head_shapes(self) -> tuple[str, str]:
        """The shapes that split the hidden states into the attention heads and merge them."""
        split = np.array([0, 0, self.heads, self.dim // self.heads], dtype=np.int64)
        merge = np.array([0, 0, self.dim], dtype=np.int64)
        return self.graph.const(split), self.graph.const(merge)

    def layer(self, x: str, bias: str, index: int, shapes: tuple[str, str]) -> str:
        """One encoder layer: self-attention (``bias``: 0 for real keys, MASKED_SCORE for
        padding), then the feed-forward block, each with its residual and LayerNorm."""
        graph, name, width = self.graph, f"encoder.layer.{index}", self.dim // self.heads
        split, merge = shapes
        q, k, v = (
            graph.op("Reshape", [self.dense(x, f"{name}.attention.self.{part}"), split])
            for part in ("query", "key", "value")
        )
        q = graph.op("Transpose", [q], perm=[0, 2, 1, 3])
        k = graph.op("Transpose", [k], perm=[0, 2, 3, 1])
        v = graph.op("Transpose", [v], perm=[0, 2, 1, 3])
        scores = graph.scale(graph.op("MatMul", [q, k]), 1.0 / math.sqrt(width))
        attention = graph.op("Softmax", [graph.op("Add", [scores, bias])], axis=-1)
        context = graph.op("Transpose", [graph.op("MatMul", [attention, v])], perm=[0, 2, 1, 3])
        context = graph.op("Reshape", [context, merge])
        attended = graph.op("Add", [self.dense(context, f"{name}.attention.output.dense"), x])
        x = self.norm(attended, f"{name}.attention.output.LayerNorm")
        up = graph.gelu_erf(self.dense(x, f"{name}.intermediate.dense"))
        out = graph.op("Add", [self.dense(up, f"{name}.output.dense"), x])
        return self.norm(out, f"{name}.output.LayerNorm")


def _mean_pooled(graph: _Graph, x: str, mask: str) -> str:
    """The mean of the real tokens' states, L2-normalised (sentence-transformers' pooling)."""
    tokens = graph.op("Unsqueeze", [mask, graph.const(np.array([2], dtype=np.int64))])
    axis = graph.const(np.array([1], dtype=np.int64))
    summed = graph.op("ReduceSum", [graph.op("Mul", [x, tokens]), axis], keepdims=0)
    count = graph.op("Max", [graph.op("ReduceSum", [tokens, axis], keepdims=0), graph.scalar(1e-9)])
    return graph.unit(graph.op("Div", [summed, count]))


def build_minilm(out: Path) -> None:
    """``model.onnx`` (input_ids, attention_mask -> mean-pooled, L2-normalised features)
    and ``tokenizer.json``, from the packaged all-MiniLM-L6-v2."""
    from onnx import TensorProto

    path = minilm_path()
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise EncoderUnavailable(f"{path} is not a BERT model this builder supports")
    graph = _Graph()
    bert = _Bert(
        graph,
        read_safetensors(path / "model.safetensors"),
        dim=int(config["hidden_size"]),
        heads=int(config["num_attention_heads"]),
        eps=float(config["layer_norm_eps"]),
    )
    x = bert.embeddings()
    mask = graph.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    keys = graph.op("Unsqueeze", [mask, graph.const(np.array([1, 2], dtype=np.int64))])
    bias = graph.scale(graph.op("Sub", [graph.scalar(1.0), keys]), MASKED_SCORE)  # [n, 1, 1, L]
    shapes = bert.head_shapes()
    for index in range(int(config["num_hidden_layers"])):
        x = bert.layer(x, bias, index, shapes)
    inputs = [
        _input(name, TensorProto.INT64, [BATCH, "tokens"])
        for name in ("input_ids", "attention_mask")
    ]
    graph.save(out / "model.onnx", inputs, _mean_pooled(graph, x, mask), bert.dim)
    shutil.copyfile(path / "tokenizer.json", out / "tokenizer.json")
