"""Fine-tuning the image backbone's last blocks: the tuned layers are the only ones that
change, they reach the run-time backbone through a weights file, and a broken file is a
clear error rather than silently different vectors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from domain.errors import EncoderUnavailable
from encoders.backbones import (
    TUNED_PREFIX,
    ImageBackbone,
    ImageBackboneSpec,
    efficientnet,
    image_array,
    read_tuned_state,
)
from encoders.fashion_lite.data import Item, read_hm_manifest
from encoders.fashion_lite.encoder import FashionLiteEncoder
from encoders.fashion_lite.heads import DEFAULT_HEADS, Heads
from encoders.fashion_lite.tuning import TuneConfig, block_inputs, tune_backbone, tuned_modules
from encoders.images import decode_image

SPEC = ImageBackboneSpec("efficientnet-lite0", 96, ("avg", "mid"))


@pytest.fixture(scope="module")
def demo_items(hm_demo: Path) -> list[Item]:
    return read_hm_manifest(hm_demo)[:24]


def _load(item: Item) -> bytes:
    return Path(item.image_path).read_bytes()


def test_block_inputs_match_the_backbone_and_are_cached(
    demo_items: list[Item], tmp_path: Path
) -> None:
    import torch

    cache = tmp_path / "maps.npz"
    maps = block_inputs(demo_items[:4], _load, SPEC, 5, cache, crop=True)
    assert maps.dtype == np.float16
    assert maps.shape == (4, 112, 6, 6)  # input of block 11: 112 channels at 1/16 of 96 px

    # the cached maps are the output of the ImageNet backbone's first 11 blocks
    model = efficientnet(SPEC)
    x = torch.from_numpy(image_array(decode_image(_load(demo_items[0])), 96, crop=True)[None])
    with torch.inference_mode():
        h = model._swish(model._bn0(model._conv_stem(x)))
        for block in model._blocks[:11]:
            h = block(h)
    np.testing.assert_allclose(maps[0].astype(np.float32), h[0].numpy(), atol=0.02, rtol=0.01)

    def refuse(item: Item) -> bytes:
        raise AssertionError(f"{item.id} was read again instead of coming from the cache")

    again = block_inputs(demo_items[:4], refuse, SPEC, 5, cache, crop=True)
    np.testing.assert_array_equal(again, maps)


def test_items_without_a_label_add_nothing_to_its_loss(
    demo_items: list[Item], tmp_path: Path
) -> None:
    """Catalogs with other label sets tune together: each item counts for the labels it
    has; a batch without any of the labels is no step; a label nobody has is refused."""
    views = [block_inputs(demo_items, _load, SPEC, 1, tmp_path / "maps.npz", crop=True)]
    other = [
        replace(item, attributes={"other_type": item.attributes["product_type"]})
        for item in demo_items[12:18]
    ]
    unlabelled = [replace(item, attributes={}) for item in demo_items[18:]]
    items = demo_items[:12] + other + unlabelled
    config = TuneConfig(
        blocks=1,
        epochs=4,
        lr=1e-3,
        lr_classifier=1e-2,
        batch_size=1,  # so some batches hold only an unlabelled item
        dropout=0.0,
        labels={"product_type": 1.0, "other_type": 1.0},
        seed=1,
    )
    result = tune_backbone(SPEC, items, views, config, heldout=(demo_items[:8], views[0][:8]))
    assert all(np.isfinite(result.losses))
    assert result.losses[-1] < result.losses[0]
    assert len(result.heldout_accuracy) == 4
    with pytest.raises(ValueError, match="no item has the labels"):
        tune_backbone(SPEC, unlabelled, [views[0][18:]], config)


def test_tuning_trains_only_the_last_blocks(demo_items: list[Item], tmp_path: Path) -> None:
    views = [block_inputs(demo_items, _load, SPEC, 2, tmp_path / "maps.npz", crop=True)]
    config = TuneConfig(
        blocks=2, epochs=6, lr=1e-3, lr_classifier=1e-2, batch_size=8, dropout=0.0, seed=1
    )
    result = tune_backbone(SPEC, demo_items, views, config, heldout=(demo_items[:8], views[0][:8]))
    assert len(result.losses) == 6
    assert result.losses[-1] < 0.8 * result.losses[0]
    assert len(result.heldout_accuracy) == 6
    assert all(0.0 <= a <= 1.0 for a in result.heldout_accuracy)

    imagenet = efficientnet(SPEC).state_dict()
    prefixes = tuple(f"{p}." for p in tuned_modules(efficientnet(SPEC), 2))
    assert prefixes == ("_blocks.14.", "_blocks.15.", "_conv_head.", "_bn1.")
    expected = {k for k, v in imagenet.items() if k.startswith(prefixes) and v.is_floating_point()}
    assert set(result.state) == expected
    changed = [
        k for k, v in result.state.items() if not np.allclose(v, imagenet[k].numpy(), atol=1e-7)
    ]
    assert any(k.startswith("_blocks.14.") for k in changed)
    assert any(k.startswith("_conv_head.") for k in changed)
    with pytest.raises(ValueError, match="blocks to tune"):
        tuned_modules(efficientnet(SPEC), 0)


def _tuned_file(path: Path, arrays: dict[str, Any]) -> Path:
    np.savez(path, **{TUNED_PREFIX + k: v for k, v in arrays.items()}, other=np.zeros(3))
    return path


def test_a_tuned_weights_file_changes_the_backbone(demo_items: list[Item], tmp_path: Path) -> None:
    image = image_array(decode_image(_load(demo_items[0])), 96, crop=True)
    imagenet = efficientnet(SPEC).state_dict()
    head = imagenet["_conv_head.weight"].numpy()

    same = _tuned_file(tmp_path / "same.npz", {"_conv_head.weight": head})
    scaled = _tuned_file(tmp_path / "scaled.npz", {"_conv_head.weight": head * 0.5})
    assert set(read_tuned_state(scaled)) == {"_conv_head.weight"}

    base = ImageBackbone(SPEC).features([image])
    np.testing.assert_allclose(
        ImageBackbone(replace(SPEC, tuned=str(same))).features([image]),
        base,
        atol=1e-5,
    )
    other = ImageBackbone(replace(SPEC, tuned=str(scaled)))
    assert not np.allclose(other.features([image]), base, atol=1e-3)

    unknown = _tuned_file(tmp_path / "unknown.npz", {"_blocks.99.weight": head})
    wrong = _tuned_file(tmp_path / "wrong.npz", {"_conv_head.weight": head[:10]})
    for bad, message in ((unknown, "not a layer"), (wrong, "has shape")):
        with pytest.raises(EncoderUnavailable, match=message):
            efficientnet(replace(SPEC, tuned=str(bad)))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(EncoderUnavailable, match="cannot read"):
        read_tuned_state(garbage)


def test_heads_carry_the_tuned_layers_to_the_encoder(
    demo_images: list[bytes], tmp_path: Path
) -> None:
    heads = Heads.load(DEFAULT_HEADS)
    state = efficientnet(ImageBackboneSpec("efficientnet-lite0", 192)).state_dict()
    heads.backbone = {"_conv_head.weight": state["_conv_head.weight"].numpy() * 0.5}
    frozen, tuned = tmp_path / "frozen.npz", tmp_path / "tuned.npz"
    Heads(heads.image, heads.text, heads.meta, heads.extra).save(frozen)
    heads.save(tuned)
    loaded = Heads.load(tuned)
    assert set(loaded.backbone) == {"_conv_head.weight"}
    assert loaded.backbone["_conv_head.weight"].dtype == np.float32
    np.testing.assert_allclose(
        loaded.backbone["_conv_head.weight"],
        heads.backbone["_conv_head.weight"],
        rtol=1e-3,
        atol=1e-4,
    )
    assert Heads.load(frozen).backbone == {}

    image = demo_images[:1]
    from_frozen = FashionLiteEncoder(frozen, "fashion-lite:frozen", runtime="torch").encode_images(
        image
    )
    from_tuned = FashionLiteEncoder(tuned, "fashion-lite:tuned", runtime="torch").encode_images(
        image
    )
    text = ["black trousers"]
    np.testing.assert_allclose(
        FashionLiteEncoder(frozen, "fashion-lite:frozen", runtime="torch").encode_texts(text),
        FashionLiteEncoder(tuned, "fashion-lite:tuned", runtime="torch").encode_texts(text),
        atol=1e-6,
    )
    assert float(from_frozen[0] @ from_tuned[0]) < 0.999


def test_block_inputs_keep_finished_work_when_interrupted(hm_demo: Path, tmp_path: Path) -> None:
    items = read_hm_manifest(hm_demo)[:70]
    cache = tmp_path / "maps.npz"

    def fail_late(item: Item) -> bytes:
        if item.id == items[66].id:
            raise OSError("disk went away")
        return _load(item)

    with pytest.raises(OSError, match="disk went away"):
        block_inputs(items, fail_late, SPEC, 5, cache, crop=True, batch_size=1)
    with np.load(cache) as saved:
        assert sorted(saved["ids"]) == sorted(item.id for item in items[:64])
