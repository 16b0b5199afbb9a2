"""A fast training smoke test on a few dozen real catalog items: the contrastive loss goes
down, the heads file round-trips, the validation metrics are computed, the features are
cached for the next run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from encoders.fashion_lite.data import (
    Item,
    item_texts,
    make_heldout_split,
    query_text,
    read_hm_manifest,
    read_ids,
)
from encoders.fashion_lite.encoder import FashionLiteEncoder
from encoders.fashion_lite.heads import Heads
from encoders.fashion_lite.training import (
    TrainConfig,
    TrainingSetupError,
    split_items,
    train,
    validation_split,
)


@pytest.mark.slow
def test_training_smoke(hm_demo: Path, tmp_path: Path) -> None:
    with (hm_demo / "products.csv").open(newline="", encoding="utf-8") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("# test split\n" + "\n".join(ids[-16:]) + "\n")
    config = TrainConfig(
        hm_dev=hm_demo,
        cache_dir=tmp_path / "cache",
        heldout_ids=heldout,
        limit=48,
        epochs=30,
        batch_size=16,
        lr=3e-3,
        dim=32,
        hidden=64,
        extra_dim=16,
        extra_hidden=32,
        crop=True,
        train_augmented=True,
        aug_input_prob=0.3,
        aug_instance_weight=0.5,
        seed=3,
        threads=2,
        tune_blocks=2,
        tune_epochs=3,
    )
    result = train(config)
    assert result.n_train == 48
    assert result.n_heldout == 16
    assert len(result.losses) == 30
    assert result.losses[-1] < 0.7 * result.losses[0]
    for metrics in (result.metrics, result.random_metrics, result.chance):
        assert 0.0 <= metrics["desc R@10"] <= 1.0
        assert 0.0 <= metrics["image-image type P@10"] <= 1.0
    assert result.metrics["augmented R@1"] > 0.5

    path = tmp_path / "heads.npz"
    result.heads.save(path)
    loaded = Heads.load(path)
    assert loaded.dim == 32 + 16  # shared space + image-only tower
    assert loaded.extra is not None
    assert Heads.read_meta(path)["crop"] is True
    assert Heads.read_meta(path)["config"]["seed"] == 3
    # the backbone's last 2 blocks and its final 1x1 layer were fine-tuned and travel with
    # the heads (float16, like the towers)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in loaded.backbone} >= {
        "_blocks.14",
        "_blocks.15",
    }
    assert "_conv_head.weight" in loaded.backbone
    tuning = Heads.read_meta(path)["backbone_tuning"]
    assert tuning["blocks"] == 2
    assert tuning["views"] == 4  # the originals and 3 augmented views
    assert len(tuning["losses"]) == 3
    assert tuning["losses"][-1] < tuning["losses"][0]
    encoder = FashionLiteEncoder(path, "fashion-lite:test", runtime="torch")
    image = (hm_demo / "images" / f"{ids[0]}.jpg").read_bytes()
    vector = encoder.encode_images([image])
    assert vector.shape == (1, 48)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    text = encoder.encode_texts(["black trousers"])
    assert not text[0, 32:].any()  # texts live in the shared part only

    # features are cached: a rerun with the same seed gives the same heads from the caches
    # alone (a cache file is rewritten only when something had to be computed)
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*.npz"))
    assert any(name.startswith("images-hm-") for name in cached)
    assert len([name for name in cached if name.startswith("backbone-")]) == 1
    before = cache_files(tmp_path / "cache")
    again = train(config)
    assert again.heads.meta["backbone_tuning"] == tuning  # the tuned layers were reused
    np.testing.assert_allclose(again.heads.image.weights[0], result.heads.image.weights[0])
    assert cache_files(tmp_path / "cache") == before, "the rerun recomputed features"


def cache_files(cache_dir: Path) -> dict[str, tuple[int, int]]:
    """Each cache file's (modification time in ns, size)."""
    return {
        str(p.relative_to(cache_dir)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in cache_dir.rglob("*")
        if p.is_file()
    }


def test_texts_of_an_item_are_shopper_phrases_and_captions() -> None:
    item = Item(
        id="1",
        source="hm",
        group="p1",
        name="Slim  Jeans",
        description="5-pocket jeans in washed denim.",
        attributes={
            "product_type": "Trousers",
            "colour": "Dark Blue",
            "colour_master": "Blue",
            "pattern": "Denim",
            "section": "Menswear",
        },
    )
    texts = item_texts(item)
    assert "dark blue trousers" in texts
    assert "denim trousers" in texts
    assert "menswear trousers" in texts
    assert "slim jeans" in texts
    assert "5-pocket jeans in washed denim." in texts
    assert all(t == query_text(t) for t in texts)
    # without descriptions (--no-extra-descriptions): the short texts alone, in the same order
    short = item_texts(item, descriptions=False)
    assert short == [t for t in texts if t in short]
    assert "slim jeans" in short
    assert not any("5-pocket" in t for t in short)
    unknown = Item("2", "hm", "p2", "x", "", {"product_type": "Hat", "colour": "Unknown"})
    assert "unknown hat" not in item_texts(unknown)


def test_committed_split_holds_out_whole_products(hm_dev: Path) -> None:
    items = read_hm_manifest(hm_dev)
    heldout = read_ids()
    assert 0.2 < len(heldout) / len(items) < 0.3
    groups_in = {i.group for i in items if i.id in heldout}
    groups_out = {i.group for i in items if i.id not in heldout}
    assert not groups_in & groups_out  # colour variants never cross
    assert sorted(heldout) == make_heldout_split(items)  # reproducible from the seed


def test_validation_split_carves_whole_products_out_of_the_training_part(hm_dev: Path) -> None:
    train_items, heldout = split_items(TrainConfig(hm_dev=hm_dev))
    kept, validation = validation_split(train_items, 0.2)
    assert sorted(i.id for i in kept + validation) == sorted(i.id for i in train_items)
    assert 0.15 < len(validation) / len(train_items) < 0.25
    assert not {i.group for i in kept} & {i.group for i in validation}
    assert not {i.id for i in validation} & {i.id for i in heldout}
    # stratified: every product group with at least 5 training codes has validation items
    groups = {i.attributes["product_group"] for i in validation}
    big = {
        g
        for g in {i.attributes["product_group"] for i in train_items}
        if len({i.group for i in train_items if i.attributes["product_group"] == g}) >= 5
    }
    assert big <= groups
    assert [i.id for i in validation_split(train_items, 0.2)[1]] == [i.id for i in validation]
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(TrainingSetupError, match="validation share"):
            validation_split(train_items, bad)


@pytest.mark.slow
def test_training_with_a_validation_split_never_reads_the_heldout_split(
    hm_demo: Path, tmp_path: Path
) -> None:
    """The held-out images are removed from a copy of the catalog: a run that validated on
    them (or tuned with them) would fail to read them."""
    with (hm_demo / "products.csv").open(newline="", encoding="utf-8") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    heldout_ids = set(ids[-40:])
    catalog = tmp_path / "hm"
    (catalog / "images").mkdir(parents=True)
    (catalog / "products.csv").write_bytes((hm_demo / "products.csv").read_bytes())
    for image in (hm_demo / "images").iterdir():
        if image.stem not in heldout_ids:
            (catalog / "images" / image.name).symlink_to(image)
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n".join(sorted(heldout_ids)) + "\n")
    config = TrainConfig(
        hm_dev=catalog,
        cache_dir=tmp_path / "cache",
        heldout_ids=heldout,
        validation=0.25,
        limit=32,
        epochs=3,
        batch_size=16,
        dim=16,
        hidden=32,
        extra_dim=8,
        extra_hidden=16,
        train_augmented=False,
        seed=3,
        threads=2,
        tune_blocks=1,
        tune_epochs=1,
    )
    train_items, _ = split_items(config)
    _, validation = validation_split(train_items, 0.25)
    result = train(config)
    assert result.n_train == 32
    assert result.n_heldout == len(validation) > 0
    assert "validation" in result.heads.meta["validated_on"]
    assert 0.0 <= result.metrics["image-image type P@10"] <= 1.0
    assert len(result.heads.meta["backbone_tuning"]["heldout_type_accuracy"]) == 1
