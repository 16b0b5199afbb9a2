"""The text tower's features are the ones the trained heads were fitted on: encoders.minilm
(our forward pass of all-MiniLM-L6-v2, on oneDNN-packed weights) must give transformers'
eager BertModel features, which is how the heads' training texts were encoded."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoders import minilm
from encoders.backbones import TextBackbone, minilm_path, text_backbone
from encoders.fashion_lite.data import query_text

TOLERANCE = 1e-4

QUERIES = [
    "black dress",
    "red",
    "a",
    "navy blue leather jacket",
    "light pink summer skirt with flowers",
    "Crème brûlée coloured ÉTÉ dress — 100% cotton, size XL!!",
    "日本 kimono 着物 with obi",
    "  spaces   inside   and tabs\tand\nnewlines  ",
    "t-shirt (oversized) / 2-pack; 50% off?",
    "sneakers 👟 with emoji",
    "unbelievablyhyperextendedcompoundwordthatisnotinthevocabulary",
    "denim " * 200,  # past max_length: truncated to 128 tokens
]


class EagerReference:
    """What TextBackbone computed before: transformers' tokenizer and BertModel, eager."""

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model: Any = AutoModel.from_pretrained(str(path), local_files_only=True).eval()

    def batch(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt"
        )

    def features(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        batch = self.batch(texts)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.numpy()


@pytest.fixture(scope="module")
def reference() -> EagerReference:
    return EagerReference(minilm_path())


@pytest.fixture(scope="module")
def catalog_texts(demo_rows: list[dict[str, str]]) -> list[str]:
    """Product names and descriptions as training encodes them, long ones included."""
    texts = [query_text(r["name"]) for r in demo_rows[:24]]
    texts += [query_text(r["description"]) for r in demo_rows[:24] if r["description"]]
    return texts


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def test_token_ids_match_transformers(reference: EagerReference) -> None:
    model = text_backbone()._model
    ids, mask = model.token_ids(QUERIES)
    want = reference.batch(QUERIES)
    assert ids.tolist() == want["input_ids"].tolist()
    assert mask.tolist() == want["attention_mask"].tolist()
    assert ids.shape[1] == 128  # the long text was truncated, the others padded to it


def test_one_text_at_a_time_matches_transformers(reference: EagerReference) -> None:
    backbone = text_backbone()
    for text in QUERIES:
        got = backbone.features([text])
        assert got.shape == (1, TextBackbone.dim)
        assert got.dtype == np.float32
        assert max_diff(got, reference.features([text])) <= TOLERANCE, text
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)


def test_padded_batches_match_transformers(
    reference: EagerReference, catalog_texts: list[str]
) -> None:
    backbone = text_backbone()
    texts = QUERIES + catalog_texts
    got = backbone.features(texts)
    assert max_diff(got, reference.features(texts)) <= TOLERANCE
    # a text's features do not depend on what it is batched with (padding is masked)
    alone = np.concatenate([backbone.features([t]) for t in texts[:6]])
    assert max_diff(got[:6], alone) <= TOLERANCE
    # and different texts give different features
    assert float(got[0] @ got[3]) < 0.99


def test_plain_products_match_when_packing_is_refused(
    monkeypatch: pytest.MonkeyPatch, reference: EagerReference
) -> None:
    """Where the packed kernels are missing or disagree with the plain product on the
    load-time probe, the plain products are used, with the same features."""
    monkeypatch.setattr(minilm, "PACKED_TOLERANCE", -1.0)  # every probe "disagrees"
    plain = minilm.MiniLM(minilm_path())
    assert not plain.packed
    texts = QUERIES[:6]
    assert max_diff(plain.features(texts), reference.features(texts)) <= TOLERANCE


def test_concurrent_calls_give_the_same_features() -> None:
    backbone = text_backbone()
    texts = QUERIES[:8]
    want = backbone.features(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: backbone.features([texts[i % 8]]), range(32)))
    for i, got in enumerate(results):
        assert max_diff(got[0], want[i % 8]) <= TOLERANCE


def test_no_texts_give_an_empty_matrix() -> None:
    assert text_backbone().features([]).shape == (0, TextBackbone.dim)
