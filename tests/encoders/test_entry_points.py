"""Third-party encoders arrive through the `fashion_search.encoders` entry-point group."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pluggy
import pytest

from domain.errors import UnknownEncoder
from encoders.plugins import EncoderRegistry, make_plugin_manager

PLUGIN_SOURCE = """
from __future__ import annotations

import numpy as np

from domain.model import Modality
from encoders.hookspecs import EncoderFamily, hookimpl


class ConstantEncoder:
    id = "constant"
    dim = 4
    modalities = frozenset({Modality.TEXT})

    def encode_texts(self, texts):
        return np.tile(np.array([1, 0, 0, 0], dtype=np.float32), (len(texts), 1))

    def encode_images(self, images):
        raise NotImplementedError


@hookimpl
def fashion_search_register_encoders():
    return [
        EncoderFamily(
            name="constant",
            factory=lambda spec, options: ConstantEncoder(),
            description="third-party test encoder",
            modalities=frozenset({Modality.TEXT}),
            examples=("constant",),
            dim=4,
        )
    ]
"""


@pytest.fixture
def third_party_plugin(tmp_path: Path) -> Iterator[str]:
    """Install a tiny distribution with an entry point into a folder on sys.path."""
    module = "fs_test_constant_encoder"
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE)
    dist_info = tmp_path / "fs_test_constant_encoder-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fs-test-constant-encoder\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
            [fashion_search.encoders]
            constant = {module}
            """)
    )
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


def test_entry_point_plugin_is_loaded_and_builds_encoders(third_party_plugin: str) -> None:
    pm = make_plugin_manager(load_entry_points=True, default_plugins=())
    registry = EncoderRegistry(pm, default_id="constant")
    assert "constant" in registry.families
    encoder = registry.get()
    assert encoder is registry.get("constant")  # built once per process
    vectors = encoder.encode_texts(["a", "b"])
    assert vectors.shape == (2, 4)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert [info.id for info in registry.available()] == ["constant"]


def test_without_entry_points_the_plugin_is_absent(third_party_plugin: str) -> None:
    registry = EncoderRegistry(
        make_plugin_manager(load_entry_points=False, default_plugins=()), "constant"
    )
    with pytest.raises(UnknownEncoder, match="constant"):
        registry.get()


def test_misspelled_hook_is_caught(tmp_path: Path) -> None:
    module = "fs_test_misspelled_plugin"
    (tmp_path / f"{module}.py").write_text(
        "from encoders.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef fashion_search_register_encoder():\n    return []\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(pluggy.PluginValidationError):
            make_plugin_manager(load_entry_points=False, default_plugins=(module,))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
