"""Fixtures of the encoder tests: the plugin registry, the default encoder loaded once per
session, and a few real catalog photos."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from encoders.fashion_lite.encoder import FashionLiteEncoder
from encoders.hookspecs import EncoderOptions
from encoders.plugins import EncoderRegistry, make_plugin_manager
from tests.conftest import MODELS_DIR


@pytest.fixture(scope="session")
def registry() -> EncoderRegistry:
    return EncoderRegistry(
        make_plugin_manager(load_entry_points=False),
        "fashion-lite",
        EncoderOptions(torch_threads=2, models_dir=str(MODELS_DIR)),
    )


@pytest.fixture(scope="session")
def fashion_lite(registry: EncoderRegistry) -> FashionLiteEncoder:
    encoder = registry.get("fashion-lite")
    assert isinstance(encoder, FashionLiteEncoder)
    return encoder


@pytest.fixture(scope="session")
def demo_rows(hm_demo: Path) -> list[dict[str, str]]:
    with (hm_demo / "products.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def demo_images(hm_demo: Path, demo_rows: list[dict[str, str]]) -> list[bytes]:
    return [(hm_demo / row["image"]).read_bytes() for row in demo_rows[:6]]
