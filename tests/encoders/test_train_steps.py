"""The named steps of fashion-lite training: hm-extra joins the training data only if no
product of it is in hm-dev (the held-out and validation splits stay unseen), the scaling
share keeps whole products, and the CLI's defaults are TrainConfig's."""

from __future__ import annotations

import csv
import inspect
from dataclasses import fields
from pathlib import Path

import pytest

from encoders.fashion_lite.data import read_hm_manifest, read_ids
from encoders.fashion_lite.train_config import EXTRA_DATASETS, TUNED_BACKBONE_FROM, TrainConfig
from encoders.fashion_lite.training import TrainingSetupError, keep_share, split_step
from fashion_search.commands import encoder_commands
from fashion_search.commands.encoder_commands import train_encoder


def _copy_catalog(source: Path, target: Path, rows: int, product_code: str | None = None) -> Path:
    """A small catalog of the first ``rows`` of ``source`` (images linked), optionally with
    the first row's product code replaced."""
    (target / "images").mkdir(parents=True)
    with (source / "products.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        kept = [row for _, row in zip(range(rows), reader, strict=False)]
        names = list(reader.fieldnames or [])
    if product_code is not None:
        kept[0]["product_code"] = product_code
    with (target / "products.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(kept)
    for row in kept:
        (target / row["image"]).symlink_to(source / row["image"])
    return target


def test_hm_extra_sharing_a_product_with_hm_dev_is_refused(hm_dev: Path, tmp_path: Path) -> None:
    heldout_id = sorted(read_ids())[0]
    code = next(i.group for i in read_hm_manifest(hm_dev) if i.id == heldout_id)
    extra = _copy_catalog(hm_dev.parent / "hm-extra", tmp_path / "extra", 5, product_code=code)
    with pytest.raises(TrainingSetupError, match="product codes of hm-dev"):
        split_step(TrainConfig(hm_dev=hm_dev, hm_extra=(extra,)))


def test_hm_extra_trains_beside_hm_dev_and_never_touches_the_heldout_split(hm_dev: Path) -> None:
    hm_extra = hm_dev.parent / "hm-extra"
    split = split_step(TrainConfig(hm_dev=hm_dev, hm_extra=(hm_extra,)))
    _, extra = split.sources
    assert len(extra.items) == len(read_hm_manifest(hm_extra))
    heldout = read_ids()
    assert {i.id for i in split.evaluation} == heldout
    heldout_codes = {i.group for i in split.evaluation}
    assert not {i.id for i in split.train_items} & heldout
    assert not {i.group for i in split.train_items} & heldout_codes
    # hm-extra's items pair with their descriptions too, unless told not to (their cost)
    assert split.sources[0].descriptions
    assert extra.descriptions
    short = split_step(TrainConfig(hm_dev=hm_dev, hm_extra=(hm_extra,), extra_descriptions=False))
    assert short.sources[0].descriptions
    assert not short.sources[1].descriptions

    validation = split_step(TrainConfig(hm_dev=hm_dev, hm_extra=(hm_extra,), validation=0.2))
    assert not {i.group for i in validation.train_items} & {i.group for i in validation.evaluation}
    assert not {i.id for i in validation.train_items + validation.evaluation} & heldout


def test_a_training_share_keeps_whole_products(hm_dev: Path) -> None:
    items = read_hm_manifest(hm_dev)
    half = keep_share(items, 0.5)
    assert 0.4 < len(half) / len(items) < 0.6
    kept_codes, kept_ids = {i.group for i in half}, {i.id for i in half}
    assert all(i.group not in kept_codes for i in items if i.id not in kept_ids)
    assert keep_share(items, 0.5) == half  # seeded
    assert keep_share(items, 1.0) == items


def test_the_cli_defaults_are_train_configs() -> None:
    defaults = TrainConfig(hm_dev=Path("hm-dev"))
    options = inspect.signature(train_encoder).parameters
    compared = 0
    for field in fields(TrainConfig):
        if field.name not in options:
            continue
        cli_default = options[field.name].default
        if field.name == "image_parts":
            cli_default = encoder_commands._image_parts(cli_default)
        elif field.name == "tune_labels":
            cli_default = encoder_commands._label_weights(cli_default)
        elif field.name in {"hm_dev", "kaggle_zip"}:
            assert cli_default is None  # DATASETS_DIR's
            continue
        elif field.name == "hm_extra":
            assert cli_default == ",".join(EXTRA_DATASETS)
            continue
        elif field.name == "tuned_backbone":
            assert cli_default == TUNED_BACKBONE_FROM
            continue
        assert cli_default == getattr(defaults, field.name), field.name
        compared += 1
    assert compared >= 30
    # options that are no TrainConfig field choose files or output, not the training
    assert set(options) - {f.name for f in fields(TrainConfig)} == {
        "kaggle",
        "out",
        "report",
    }


def _shared_head_gradient(shared_instance_weight: float, aug_shift: float) -> list[float]:
    """The gradient of the shared image head's last bias for one batch of synthetic data
    (no dropout, no augmented inputs in the shared head's InfoNCE)."""
    import numpy as np
    import torch

    from encoders.fashion_lite.training import (
        BatchSampler,
        TrainingData,
        batch_loss,
        build_model,
    )

    rng = np.random.default_rng(0)
    n, d = 12, 24
    image_x = rng.normal(size=(n, d)).astype(np.float32)
    data = TrainingData(
        image_x=image_x,
        aug_x=(image_x + aug_shift * rng.normal(size=(n, d)))[None].astype(np.float32),
        has_aug=np.ones(n, dtype=bool),
        text_x=rng.normal(size=(n, 16)).astype(np.float32),
        texts=[f"text {i}" for i in range(n)],
        variants=np.arange(n)[:, None],
        type_codes=np.arange(n) % 3,
    )
    config = TrainConfig(
        hm_dev=Path("hm-dev"),
        colour=False,
        dim=8,
        hidden=16,
        extra_dim=4,
        extra_hidden=8,
        input_dropout=0.0,
        aug_input_prob=0.0,
        shared_instance_weight=shared_instance_weight,
    )
    model = build_model(config, data)
    batch = BatchSampler(config, data, model).batch(torch.arange(n), np.random.default_rng(1))
    batch_loss(config, model, batch).backward()
    return [float(g) for g in model.image_tower[-1].bias.grad]


def test_the_shared_instance_term_trains_the_shared_head_on_the_augmented_views() -> None:
    # off: the shared head never sees the views (aug_input_prob 0), so they do not move it
    assert _shared_head_gradient(0.0, 0.1) == _shared_head_gradient(0.0, 1.0)
    # on: the head is pulled to find each view's original, so other views, other gradients
    assert _shared_head_gradient(1.0, 0.1) != _shared_head_gradient(1.0, 1.0)
    assert _shared_head_gradient(1.0, 0.1) != _shared_head_gradient(0.0, 0.1)
