"""A new fashion-lite heads file (a retraining that becomes the default) is picked up by the
ingest ledger: the next ingest encodes every product again with the new heads, through the
real plugin, the default ONNX Runtime path (the new heads get their own export beside the old
one) and the embedded stores; the ingest after that skips them all."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest

from domain.images import content_hash
from encoders.fashion_lite import plugin
from encoders.fashion_lite.encoder import FashionLiteEncoder
from encoders.fashion_lite.heads import DEFAULT_HEADS
from encoders.onnx_models import torch_installed
from fashion_search.settings import Settings
from fashion_search.wiring import build
from ingest.pipeline import IngestOptions
from ingest.readers import SourceItem, open_source
from ingest.report import IngestSummary
from tests.conftest import MODELS_DIR

PRODUCTS = 4
RETRAINED_BIAS_SHIFT = 0.05
"""Added to the image head's last bias: other weights, so other image vectors."""


def retrained_heads(target: Path) -> Path:
    """A copy of the committed heads with changed image-head weights (what a retraining
    writes), metadata unchanged."""
    with np.load(DEFAULT_HEADS, allow_pickle=False) as arrays:
        weights = {name: arrays[name] for name in arrays.files}
    bias = weights["image.b1"]
    weights["image.b1"] = (bias + RETRAINED_BIAS_SHIFT).astype(bias.dtype)
    np.savez_compressed(target, **weights)
    return target


def catalog_items(hm_demo: Path) -> list[SourceItem]:
    with open_source(hm_demo / "products.csv") as source:
        return list(itertools.islice(source, PRODUCTS))


def copy_committed_exports(models: Path) -> None:
    """The committed heads' ONNX models, copied from the shared directory (exported once per
    session), so that only the new heads are exported here."""
    for model in FashionLiteEncoder(DEFAULT_HEADS, models_dir=str(MODELS_DIR)).onnx_models():
        shutil.copytree(model.path, models / model.path.name)


async def ingest(
    settings: Settings, items: list[SourceItem]
) -> tuple[IngestSummary, dict[str, str], dict[str, np.ndarray]]:
    """One ingest by a freshly built service (as after a restart): its summary, the ledger
    and the stored vectors of the default encoder."""
    container = build(settings)
    try:
        encoder = container.encoders.get(settings.encoder)
        summary = await container.ingest_pipeline([encoder], IngestOptions()).run(items)
        ledger = await container.catalog.indexed_hashes(encoder.id)
        vectors = await container.index.fetch(encoder.id, [i.id for i in items])
    finally:
        await container.aclose()
    return summary, ledger, vectors


@pytest.mark.slow
@pytest.mark.skipif(not torch_installed(), reason="exporting the new heads to ONNX needs torch")
async def test_a_new_heads_file_encodes_every_product_again_on_the_next_ingest(
    tmp_path: Path, hm_demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    copy_committed_exports(models)
    settings = Settings(
        home=tmp_path / "home",
        exported_models_dir=models,
        encoder="fashion-lite",
        encoder_runtime="onnx",
    )
    items = catalog_items(hm_demo)
    hashes = {i.id: content_hash((hm_demo / "images" / f"{i.id}.jpg").read_bytes()) for i in items}

    first, old_ledger, old_vectors = await ingest(settings, items)
    assert first.indexed == PRODUCTS
    old_version = FashionLiteEncoder(DEFAULT_HEADS, models_dir=str(models)).version
    assert old_ledger == {pid: f"{h}@{old_version}" for pid, h in hashes.items()}

    new_heads = retrained_heads(tmp_path / "heads-retrained.npz")
    monkeypatch.setattr(plugin, "DEFAULT_HEADS", new_heads)  # the retrained heads are the default
    second, new_ledger, new_vectors = await ingest(settings, items)

    assert (second.indexed, second.skipped_unchanged) == (PRODUCTS, 0)
    new_encoder = FashionLiteEncoder(new_heads, models_dir=str(models))
    new_version = new_encoder.version
    assert new_version.split("+")[0] != old_version.split("+")[0]  # the heads part changed
    assert new_ledger == {pid: f"{h}@{new_version}" for pid, h in hashes.items()}
    # the new heads were exported beside the old ones, each named by its heads file's content
    exported = {model.path.name for model in new_encoder.onnx_models()}
    committed = {m.path.name for m in FashionLiteEncoder(DEFAULT_HEADS).onnx_models()}
    assert exported - committed  # the towers of the new heads
    assert all((models / name).is_dir() for name in exported | committed)
    # the index holds the new heads' vectors, not the old ones
    for item in items:
        photo = (hm_demo / "images" / f"{item.id}.jpg").read_bytes()
        expected = new_encoder.encode_images([photo])[0]
        np.testing.assert_allclose(new_vectors[item.id], expected, atol=1e-4)
        assert float(new_vectors[item.id] @ old_vectors[item.id]) < 1 - 1e-4

    third, third_ledger, _ = await ingest(settings, items)
    assert (third.indexed, third.skipped_unchanged) == (0, PRODUCTS)
    assert third_ledger == new_ledger
