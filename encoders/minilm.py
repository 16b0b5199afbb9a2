"""all-MiniLM-L6-v2 sentence features without transformers: the BERT encoder's forward pass
written out on its safetensors weights, and its tokenizer.json through ``tokenizers``.

Why: a short shopper query (about 8 tokens) cost 11-12 ms of CPU at one thread through
transformers' eager BertModel, and a profile showed 80% of it in the 36 matrix products
(``aten::addmm``), not in Python: with so few rows each product streams a whole weight
matrix through MKL's generic path (re-packing the weights on every call). The same products
on weights pre-packed once for oneDNN (``mkldnn._linear_pointwise``, the kernels
torch.compile uses on CPU) take half the time, with the GELU and the residual additions fused
into them; the rest of the forward pass is a few dozen cheap tensor operations. Measured at
one thread on the shared 2-core machine (``python -m bench.text_backbone``, both in one
process): 11.4 -> 4.4 ms of CPU per query, 22.9 -> 14.7 ms per 8 texts; the features within
3e-7 of transformers' (tests/encoders/test_text_backbone.py compares them). Loading takes
0.14 s instead of importing transformers and building its BertModel (1.2 + 2.7 s).

When the oneDNN kernels are missing (a torch built without them) or disagree with plain
``torch.nn.functional.linear`` on a probe at load time, the plain products are used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file
from torch import Tensor
from torch.nn import functional

from domain.errors import EncoderUnavailable
from encoders.tokens import SentenceTokenizer

F32 = npt.NDArray[np.float32]

PACKED_TOLERANCE = 1e-5
"""Largest feature difference allowed between the packed products and the plain ones on
the load-time probe (they differ by float32 rounding, about 2e-7)."""

PROBE_TEXTS = ("black leather ankle boots", "red dress")
"""Texts of different lengths (so padding and the attention mask are exercised)."""


class _Linear:
    """``x @ weight.T + bias``, optionally followed by GELU or plus a residual: on weights
    pre-packed for oneDNN once ``pack`` succeeded, else with plain torch."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        self.weight: Tensor | None = weight.contiguous()
        self.bias = bias.contiguous()
        self.packed: Tensor | None = None

    def pack(self) -> None:
        assert self.weight is not None
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight)

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            return _linear_pointwise(x, self.packed, self.bias, "none", [], "")
        assert self.weight is not None
        return functional.linear(x, self.weight, self.bias)

    def gelu(self, x: Tensor) -> Tensor:
        """GELU (exact, erf) of the product, as BERT's intermediate layer."""
        if self.packed is not None:
            return _linear_pointwise(x, self.packed, self.bias, "gelu", [], "none")
        return functional.gelu(self(x))

    def add(self, x: Tensor, residual: Tensor) -> Tensor:
        if self.packed is not None:
            return _linear_add(x, residual, self.packed, self.bias, "add")
        return self(x) + residual


def _linear_pointwise(*args: object) -> Tensor:
    out: Tensor = torch.ops.mkldnn._linear_pointwise(*args)
    return out


def _linear_add(*args: object) -> Tensor:
    out: Tensor = torch.ops.mkldnn._linear_pointwise.binary(*args)
    return out


class MiniLM:
    """BERT (as all-MiniLM-L6-v2 is configured): mean-pooled, L2-normalised sentence
    features. Thread-safe: the weights are read-only, the tokenizer is behind a lock."""

    def __init__(self, path: Path, max_length: int = 128, packed: bool = True) -> None:
        """``packed``: try the oneDNN kernels (else plain ``torch.nn.functional.linear``)."""
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if (
            config.get("model_type") != "bert"
            or config.get("hidden_act") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise EncoderUnavailable(f"{path} is not a BERT model this forward pass supports")
        self.dim: int = int(config["hidden_size"])
        self.heads: int = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.max_length = max_length

        self._tokenizer = SentenceTokenizer(path / "tokenizer.json", max_length)

        weights: dict[str, Tensor] = load_file(str(path / "model.safetensors"))

        def get(name: str) -> Tensor:
            return weights[name].to(torch.float32)

        self._word = get("embeddings.word_embeddings.weight")
        self._position = get("embeddings.position_embeddings.weight")
        self._token_type = get("embeddings.token_type_embeddings.weight")[0].clone()
        self._norm = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self._layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            prefix = f"encoder.layer.{i}."

            def layer(name: str, prefix: str = prefix) -> Tensor:
                return get(prefix + name)

            attention = [f"attention.self.{part}" for part in ("query", "key", "value")]
            self._layers.append(
                _Layer(
                    # query, key and value in one product: same sums, one pass over x
                    qkv=_Linear(
                        torch.cat([layer(f"{a}.weight") for a in attention]),
                        torch.cat([layer(f"{a}.bias") for a in attention]),
                    ),
                    out=_Linear(
                        layer("attention.output.dense.weight"), layer("attention.output.dense.bias")
                    ),
                    norm1=(
                        layer("attention.output.LayerNorm.weight"),
                        layer("attention.output.LayerNorm.bias"),
                    ),
                    up=_Linear(
                        layer("intermediate.dense.weight"), layer("intermediate.dense.bias")
                    ),
                    down=_Linear(layer("output.dense.weight"), layer("output.dense.bias")),
                    norm2=(layer("output.LayerNorm.weight"), layer("output.LayerNorm.bias")),
                )
            )

        self.packed = packed and self._pack()

    def _linears(self) -> list[_Linear]:
        return [
            lin for layer in self._layers for lin in (layer.qkv, layer.out, layer.up, layer.down)
        ]

    def _pack(self) -> bool:
        """Pack every weight for oneDNN, if this torch has it and the packed forward pass
        gives the plain one's features on the probe texts; then drop the plain weights."""
        linears = self._linears()
        ids, mask = self.token_ids(PROBE_TEXTS)
        try:
            if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
                return False
            with torch.inference_mode():
                plain = self._forward(ids, mask)
                for lin in linears:
                    lin.pack()
                packed = self._forward(ids, mask)
            agree = float((packed - plain).abs().max()) <= PACKED_TOLERANCE
        except (AttributeError, RuntimeError, TypeError, NotImplementedError):
            agree = False  # no such kernels in this torch build
        for lin in linears:
            if agree:
                lin.weight = None
            else:
                lin.packed = None
        return agree

    def token_ids(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """[n, longest] token ids and attention mask (int64), padded with 0 on the right."""
        ids, mask = self._tokenizer.token_ids(texts)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def features(self, texts: Sequence[str]) -> F32:
        """[n, dim] mean-pooled (over real tokens), L2-normalised last hidden states."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = self.token_ids(texts)
        with torch.inference_mode():
            pooled = self._forward(ids, mask)
        result: F32 = pooled.numpy().astype(np.float32)
        return result

    def _forward(self, ids: Tensor, mask: Tensor, always_mask: bool = False) -> Tensor:
        """``always_mask``: apply the attention mask even when nothing is padded (a graph
        traced for export must not depend on the example's padding)."""
        batch, length = ids.shape
        dim, heads, eps = self.dim, self.heads, self.eps
        norm = functional.layer_norm
        x = functional.embedding(ids, self._word) + self._token_type
        x = norm(x + self._position[:length], (dim,), *self._norm, eps=eps)
        # Padding keys are masked out; a lone text (or equal lengths) needs no mask at all.
        masked = always_mask or not bool(mask.all())
        keys = mask.bool()[:, None, None, :] if masked else None
        for layer in self._layers:
            qkv = layer.qkv(x).view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            context = functional.scaled_dot_product_attention(
                qkv[0], qkv[1], qkv[2], attn_mask=keys
            )
            context = context.transpose(1, 2).reshape(batch, length, dim)
            x = norm(layer.out.add(context, x), (dim,), *layer.norm1, eps=eps)
            x = norm(layer.down.add(layer.up.gelu(x), x), (dim,), *layer.norm2, eps=eps)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


class _Layer:
    def __init__(
        self,
        qkv: _Linear,
        out: _Linear,
        norm1: tuple[Tensor, Tensor],
        up: _Linear,
        down: _Linear,
        norm2: tuple[Tensor, Tensor],
    ) -> None:
        self.qkv, self.out, self.norm1 = qkv, out, norm1
        self.up, self.down, self.norm2 = up, down, norm2
