"""The built-in encoder plugins register like third-party ones."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pluggy
import pytest
import typer
from typer.testing import CliRunner

from domain.errors import BadInput, EncoderUnavailable, UnknownEncoder
from domain.model import Modality
from domain.ports import Encoder
from encoders.hookspecs import EncoderOptions, hookimpl
from encoders.image_only import EffNetImageEncoder
from encoders.onnx_models import EXPORT_FORMAT
from encoders.plugins import DEFAULT_PLUGINS, EncoderRegistry, make_plugin_manager
from fashion_search.commands import encoder_commands


def test_every_builtin_registers_its_families(registry: EncoderRegistry) -> None:
    assert set(registry.families) >= {"fashion-lite", "open_clip", "effnet-lite0", "effnet-lite2"}
    pm = make_plugin_manager(load_entry_points=False)
    assert {name for name, _ in pm.list_name_plugin()} == set(DEFAULT_PLUGINS)
    for family in registry.families.values():
        assert family.examples
        assert family.description
        assert family.modalities


def test_check_pending_catches_a_misspelled_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("misspelled_plugin")

    @hookimpl
    def fashion_search_register_encoder() -> list[object]:  # missing "s"
        return []

    module.fashion_search_register_encoder = fashion_search_register_encoder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "misspelled_plugin", module)
    with pytest.raises(pluggy.PluginValidationError):
        make_plugin_manager(load_entry_points=False, default_plugins=("misspelled_plugin",))


def test_unknown_ids(registry: EncoderRegistry) -> None:
    for bad in ("nope", "fashion-lite:no-such-heads", "effnet-lite0:extra", "open_clip"):
        with pytest.raises(UnknownEncoder):
            registry.get(bad)


def test_available_lists_the_default_first_with_its_dim(registry: EncoderRegistry) -> None:
    infos = registry.available()
    assert infos[0].id == "fashion-lite"
    assert infos[0].dim > 0
    assert infos[0].modalities == frozenset({Modality.TEXT, Modality.IMAGE})
    by_id = {i.id: i for i in infos}
    assert by_id["effnet-lite0"].modalities == frozenset({Modality.IMAGE})
    assert "open_clip:ViT-B-32/laion2b_s34b_b79k" not in by_id  # not loadable offline


def test_image_only_encoder(registry: EncoderRegistry, demo_images: list[bytes]) -> None:
    encoder = registry.get("effnet-lite0")
    assert isinstance(encoder, EffNetImageEncoder)
    assert isinstance(encoder, Encoder)
    with pytest.raises(BadInput, match="images only"):
        encoder.encode_texts(["black trousers"])
    vectors = encoder.encode_images(demo_images[:3])
    assert vectors.shape == (3, 1280)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[1:2], encoder.encode_images(demo_images[1:2]), atol=1e-5)


def test_encoders_command_prints_a_table() -> None:
    app = typer.Typer()
    encoder_commands.register(app)
    result = CliRunner().invoke(app, ["encoders"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "fashion-lite (default)" in result.output
    assert "effnet-lite0" in result.output
    assert "image, text" in result.output
    # every registered plugin, the unusable ones with what they need
    assert "open_clip:ViT-B-32/laion2b_s34b_b79k" in result.output
    assert "needs " in result.output
    assert "open_clip:ARCH@/path/to/checkpoint.pt" in result.output
    assert "ready (ONNX Runtime)" in result.output  # the default's export exists (conftest)


def test_open_clip_without_its_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from encoders import open_clip_plugin

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    assert open_clip_plugin.requirements().startswith("the [clip] extra")
    with pytest.raises(EncoderUnavailable, match=r"\[clip\]"):
        open_clip_plugin.build("ViT-B-32@/nowhere/checkpoint.pt", EncoderOptions())


def test_export_encoder_command_exports_and_checks_against_torch(
    tmp_path: Path, hm_demo: Path
) -> None:
    app = typer.Typer()
    encoder_commands.register(app)
    env = {"COLUMNS": "250", "FASHION_SEARCH_MODELS_DIR": str(tmp_path)}
    args = ["export-encoder", "effnet-lite0", "--images", str(hm_demo / "images"), "--count", "3"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    directory = f"efficientnet-lite0-224-f{EXPORT_FORMAT}"
    assert directory in result.output
    assert "1.0000" in result.output  # the parity column: min cosine with torch
    assert (tmp_path / directory / "image.onnx").is_file()
    unknown = CliRunner().invoke(app, ["export-encoder", "no-such-encoder"], env=env)
    assert unknown.exit_code == 1
    assert "no encoder plugin provides" in unknown.output
