"""The frozen backbones see what they should: before trusting any embedding, the
EfficientNet-Lite classifier must give plausible ImageNet labels on real catalog photos
(a wrong activation, e.g. Swish instead of the ReLU6 the model was trained with, or wrong
preprocessing would break this)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.models._meta import _IMAGENET_CATEGORIES

from encoders.backbones import (
    COLOUR_DIM,
    ImageBackboneSpec,
    colour_histogram,
    content_box,
    image_array,
    image_backbone,
    pad_to_square,
)
from encoders.images import decode_image

CLOTHING = {
    "abaya", "academic gown", "apron", "bikini", "bow tie", "brassiere", "bulletproof vest",
    "cardigan", "cloak", "diaper", "fur coat", "gown", "hoopskirt", "jean", "jersey", "kimono",
    "lab coat", "maillot", "maillot tank suit", "miniskirt", "overskirt", "pajama", "poncho",
    "sarong", "stole", "suit", "sweatshirt", "swimming trunks", "trench coat", "velvet",
    "vestment", "wool", "military uniform", "Windsor tie", "bib",
}  # fmt: skip
FOOTWEAR = {"sandal", "clog", "cowboy boot", "Loafer", "running shoe", "sock", "shoe shop"}
GARMENT_TYPES = {"Dress", "Trousers", "T-shirt", "Sweater", "Jacket", "Coat", "Skirt", "Shirt"}
SHOE_TYPES = {"Sneakers", "Boots", "Sandals", "Ballerinas", "Other shoe", "Pumps", "Heeled sandals"}


def top5(labels: np.ndarray) -> list[str]:
    return [_IMAGENET_CATEGORIES[i] for i in np.argsort(-labels)[:5]]


def test_imagenet_labels_make_sense_on_catalog_photos(
    hm_demo: Path, demo_rows: list[dict[str, str]]
) -> None:
    backbone = image_backbone(ImageBackboneSpec("efficientnet-lite0", 224))
    garments = [r for r in demo_rows if r["product_type"] in GARMENT_TYPES][:16]
    shoes = [r for r in demo_rows if r["product_type"] in SHOE_TYPES][:8]
    assert len(garments) == 16
    assert len(shoes) == 8
    rows = garments + shoes
    arrays = [image_array(decode_image((hm_demo / r["image"]).read_bytes()), 224) for r in rows]
    logits = backbone.logits(arrays)
    garment_ok = sum(bool(CLOTHING & set(top5(x))) for x in logits[: len(garments)])
    shoe_ok = sum(bool(FOOTWEAR & set(top5(x))) for x in logits[len(garments) :])
    assert garment_ok >= 13, [top5(x) for x in logits[: len(garments)]]
    assert shoe_ok >= 5, [top5(x) for x in logits[len(garments) :]]
    # pooled features are the classifier's input: nonnegative (ReLU6), not degenerate
    features = backbone.features(arrays)
    assert features.shape == (len(rows), 1280)
    assert features.min() >= 0.0
    assert np.linalg.matrix_rank(features) == len(rows)


def test_pad_to_square_centres_on_white() -> None:
    image = Image.new("RGB", (40, 60), (10, 20, 30))
    square = pad_to_square(image)
    assert square.size == (60, 60)
    assert square.getpixel((0, 30)) == (255, 255, 255)
    assert square.getpixel((30, 30)) == (10, 20, 30)


def test_colour_histogram_sees_the_garment_not_the_background() -> None:
    red = Image.new("RGB", (60, 90), (245, 245, 245))
    red.paste(Image.new("RGB", (30, 50), (200, 20, 30)), (15, 20))
    blue = Image.new("RGB", (60, 90), (245, 245, 245))
    blue.paste(Image.new("RGB", (30, 50), (20, 40, 200)), (15, 20))
    h_red, h_blue = colour_histogram(red), colour_histogram(blue)
    assert h_red.shape == (COLOUR_DIM,)
    assert np.sum(h_red**2) == pytest.approx(1.0, abs=1e-5)
    assert float(h_red @ h_blue) < 0.2  # the light background is not counted
    assert float(h_red @ colour_histogram(red.transpose(Image.Transpose.FLIP_LEFT_RIGHT))) > 0.99


def test_content_box_finds_the_product_on_a_light_background() -> None:
    image = Image.new("RGB", (200, 300), (240, 240, 238))
    image.paste(Image.new("RGB", (80, 150), (30, 30, 30)), (60, 100))
    left, top, right, bottom = content_box(image, margin=0.0)
    assert abs(left - 60) <= 4
    assert abs(top - 100) <= 4
    assert abs(right - 140) <= 4
    assert abs(bottom - 250) <= 4
    blank = Image.new("RGB", (50, 70), (250, 250, 250))
    assert content_box(blank) == (0, 0, 50, 70)
    # cropping first makes the features of a product insensitive to the margins around it
    backbone = image_backbone(ImageBackboneSpec("efficientnet-lite0", 224))
    wide = Image.new("RGB", (400, 400), (240, 240, 238))
    wide.paste(image.crop((40, 80, 160, 270)), (140, 100))
    plain = backbone.features([image_array(image, 224), image_array(wide, 224)])
    cropped = backbone.features(
        [image_array(image, 224, crop=True), image_array(wide, 224, crop=True)]
    )

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cosine(*cropped) > cosine(*plain)
