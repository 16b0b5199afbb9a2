"""The open_clip plugin on a tiny architecture with random weights, saved as a checkpoint:
no trained CLIP weights can be had offline, but the loading code is the real one."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch

from domain.errors import BadInput, EncoderUnavailable, InvalidImage, UnknownEncoder
from domain.model import Modality
from encoders.open_clip_plugin import OpenClipEncoder, parse_spec
from encoders.plugins import EncoderRegistry, make_plugin_manager

TINY_ARCH = "fashion-search-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("open_clip")
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder / f"{TINY_ARCH}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    path = folder / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(f"network disabled in tests: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def registry() -> EncoderRegistry:
    return EncoderRegistry(make_plugin_manager(load_entry_points=False), "fashion-lite")


def test_loads_a_local_checkpoint_through_the_registry(
    checkpoint: Path, no_network: list[Any], demo_images: list[bytes]
) -> None:
    encoder = registry().get(f"open_clip:{TINY_ARCH}@{checkpoint}")
    assert isinstance(encoder, OpenClipEncoder)
    assert encoder.id == f"open_clip:{TINY_ARCH}@{checkpoint}"
    assert encoder.dim == 32
    assert encoder.modalities == frozenset({Modality.TEXT, Modality.IMAGE})

    texts = encoder.encode_texts(["black trousers", "red dress", "striped shirt"])
    images = encoder.encode_images(demo_images[:3])
    for vectors in (texts, images):
        assert vectors.shape == (3, 32)
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(texts[0], texts[1])
    assert not no_network


def test_checkpoint_weights_are_the_saved_ones(checkpoint: Path) -> None:
    encoder = OpenClipEncoder(parse_spec(f"{TINY_ARCH}@{checkpoint}"))
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    model, _, _ = encoder._load()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[name])


def test_batching_equals_one_by_one(checkpoint: Path, demo_images: list[bytes]) -> None:
    encoder = OpenClipEncoder(parse_spec(f"{TINY_ARCH}@{checkpoint}"))
    texts = ["black trousers", "a long navy striped shirt with buttons", "shoe"]
    together = encoder.encode_texts(texts)
    alone = np.concatenate([encoder.encode_texts([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    images = demo_images[:4]
    np.testing.assert_allclose(
        encoder.encode_images(images),
        np.concatenate([encoder.encode_images([i]) for i in images]),
        atol=1e-5,
    )


def test_hub_tag_fails_fast_offline_naming_what_to_change(
    no_network: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    encoder = registry().get("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert encoder.dim == 512  # known without loading any weights
    with pytest.raises(EncoderUnavailable) as error:
        encoder.encode_texts(["black trousers"])
    message = str(error.value)
    assert "open_clip:ARCH@/path/to/checkpoint.pt" in message
    assert "FASHION_SEARCH_ENCODER" in message
    assert not no_network


def test_unknown_architectures_tags_and_malformed_ids() -> None:
    reg = registry()
    with pytest.raises(UnknownEncoder):
        reg.get("open_clip:NoSuchArch/sometag")
    with pytest.raises(UnknownEncoder):
        reg.get("open_clip:ViT-B-32")
    with pytest.raises(UnknownEncoder):
        reg.get("open_clip:")
    with pytest.raises(UnknownEncoder, match="no tag"):
        reg.get("open_clip:ViT-B-32/no_such_tag").encode_texts(["x"])


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailable, match="not found"):
        registry().get(f"open_clip:ViT-B-32@{tmp_path / 'missing.pt'}")


def test_bad_inputs(checkpoint: Path) -> None:
    encoder = OpenClipEncoder(parse_spec(f"{TINY_ARCH}@{checkpoint}"))
    with pytest.raises(BadInput):
        encoder.encode_texts(["  "])
    with pytest.raises(InvalidImage):
        encoder.encode_images([b"not an image"])
    assert encoder.encode_images([]).shape == (0, 32)
