"""The default encoder: offline, unit vectors, batch-invariant, thread-safe, and it finds
what a shopper means on real catalog photos."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from domain.errors import BadInput, EncoderUnavailable, InvalidImage
from domain.model import Modality
from domain.ports import Encoder, PreparingEncoder, stack_prepared
from encoders.backbones import colour_histogram, image_array
from encoders.fashion_lite.encoder import FashionLiteEncoder
from encoders.fashion_lite.heads import DEFAULT_HEADS, Heads
from encoders.images import decode_image


def test_committed_heads_are_small_and_describe_themselves() -> None:
    # float16 MLPs on 6,678 image inputs (pooled backbone parts + colour stats), plus the
    # backbone's fine-tuned last blocks (2.7M parameters)
    assert DEFAULT_HEADS.stat().st_size < 24 * 1024 * 1024
    meta = Heads.read_meta(DEFAULT_HEADS)
    assert meta["backbone_tuning"]["blocks"] == len(
        {
            key.split(".")[1]
            for key in Heads.load(DEFAULT_HEADS).backbone
            if key.startswith("_blocks.")
        }
    )
    assert meta["image_backbone"].startswith("efficientnet-lite")
    assert meta["text_backbone"] == "all-MiniLM-L6-v2"
    assert not meta["random"]
    assert meta["validation"]["colour-type P@10"] > 0.3  # recorded by the train command


def test_version_names_the_heads_file_content(tmp_path: Path) -> None:
    same, changed = tmp_path / "same.npz", tmp_path / "changed.npz"
    same.write_bytes(DEFAULT_HEADS.read_bytes())
    changed.write_bytes(DEFAULT_HEADS.read_bytes() + b"retrained")
    committed = FashionLiteEncoder(DEFAULT_HEADS, runtime="torch").version
    assert committed.startswith("heads-")
    assert FashionLiteEncoder(same, runtime="torch").version == committed
    assert FashionLiteEncoder(changed, runtime="torch").version != committed
    with pytest.raises(EncoderUnavailable):
        _ = FashionLiteEncoder(tmp_path / "missing.npz").version


def test_loads_offline_and_returns_unit_vectors(
    fashion_lite: FashionLiteEncoder, demo_images: list[bytes]
) -> None:
    assert isinstance(fashion_lite, Encoder)
    assert fashion_lite.id == "fashion-lite"
    assert fashion_lite.modalities == frozenset({Modality.TEXT, Modality.IMAGE})
    texts = fashion_lite.encode_texts(["black trousers", "Red DRESS", "navy striped shirt"])
    images = fashion_lite.encode_images(demo_images[:4])
    assert texts.shape == (3, fashion_lite.dim)
    assert images.shape == (4, fashion_lite.dim)
    for vectors in (texts, images):
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the query template normalises case and spacing
    np.testing.assert_allclose(fashion_lite.encode_texts(["  red   dress "]), texts[1:2], atol=1e-6)


def test_batching_equals_one_by_one(
    fashion_lite: FashionLiteEncoder, demo_images: list[bytes]
) -> None:
    texts = ["black trousers", "a long-sleeved jumper in soft cotton with ribbed cuffs", "hat"]
    np.testing.assert_allclose(
        fashion_lite.encode_texts(texts),
        np.concatenate([fashion_lite.encode_texts([t]) for t in texts]),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        fashion_lite.encode_images(demo_images),
        np.concatenate([fashion_lite.encode_images([i]) for i in demo_images]),
        atol=1e-4,
    )


def test_prepared_images_encode_to_exactly_the_same_vectors(
    fashion_lite: FashionLiteEncoder, demo_images: list[bytes]
) -> None:
    """The split the Ray engine uses (prepare where the image is read, encode in the actor)
    gives encode_images' vectors bit for bit, and both equal the tower run on the
    preprocessing's own functions (decode, pixels, colour statistics)."""
    assert isinstance(fashion_lite, PreparingEncoder)
    prepared = stack_prepared([fashion_lite.prepare_image(i) for i in demo_images])
    split = fashion_lite.encode_prepared(prepared)
    decoded = [decode_image(i) for i in demo_images]
    size = fashion_lite._spec().size
    crop = bool(fashion_lite.summary.meta.get("crop", False))
    pixels = np.stack([image_array(image, size, crop) for image in decoded])
    colour = np.stack([colour_histogram(image) for image in decoded])
    by_hand = fashion_lite.towers.image_vectors(pixels, colour)
    np.testing.assert_array_equal(split, fashion_lite.encode_images(demo_images))
    np.testing.assert_array_equal(split, by_hand)
    with pytest.raises(InvalidImage):
        fashion_lite.prepare_image(b"GIF89a not supported")


def test_thread_safety_smoke(fashion_lite: FashionLiteEncoder, demo_images: list[bytes]) -> None:
    texts = ["black trousers", "white sneakers", "floral summer dress", "grey hoodie"]
    expected_texts = fashion_lite.encode_texts(texts)
    expected_images = fashion_lite.encode_images(demo_images)

    def work(i: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            fashion_lite.encode_texts([texts[i % 4]]),
            fashion_lite.encode_images([demo_images[i % len(demo_images)]]),
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(16)))
    for i, (text_vector, image_vector) in enumerate(results):
        np.testing.assert_allclose(text_vector[0], expected_texts[i % 4], atol=1e-4)
        np.testing.assert_allclose(
            image_vector[0], expected_images[i % len(demo_images)], atol=1e-4
        )


def test_bad_inputs(fashion_lite: FashionLiteEncoder) -> None:
    with pytest.raises(BadInput):
        fashion_lite.encode_texts(["black trousers", "   "])
    with pytest.raises(InvalidImage):
        fashion_lite.encode_images([b"GIF89a not supported"])
    assert fashion_lite.encode_texts([]).shape == (0, fashion_lite.dim)
    assert fashion_lite.encode_images([]).shape == (0, fashion_lite.dim)


@pytest.mark.slow
def test_black_trousers_finds_trousers_on_the_demo_catalog(
    fashion_lite: FashionLiteEncoder, hm_demo: Path, demo_rows: list[dict[str, str]]
) -> None:
    rows = demo_rows[:200]
    gallery = fashion_lite.encode_images([(hm_demo / r["image"]).read_bytes() for r in rows])
    types = [r["product_type"] for r in rows]
    counts = Counter(types)

    def top(query: str, k: int) -> list[dict[str, str]]:
        scores = gallery @ fashion_lite.encode_texts([query])[0]
        return [rows[i] for i in np.argsort(-scores)[:k]]

    hits = top("black trousers", 5)
    chance = counts["Trousers"] / len(rows)
    precision = sum(r["product_type"] == "Trousers" for r in hits) / 5
    assert precision >= 0.6 > 5 * chance, [(r["product_type"], r["colour"]) for r in hits]
    assert hits[0]["product_type"] == "Trousers"
    # other kinds of query work too: each finds its type above chance
    for query, kind in (("dress", "Dress"), ("sneakers", "Sneakers"), ("bag", "Bag")):
        if counts[kind] < 2:
            continue
        found = sum(r["product_type"] == kind for r in top(query, 5))
        assert found >= 2, (query, [r["product_type"] for r in top(query, 5)])


def test_colour_queries_rank_their_colour_first_within_a_type(
    fashion_lite: FashionLiteEncoder, hm_demo: Path, demo_rows: list[dict[str, str]]
) -> None:
    # every "<colour> <type>" of the demo's types with two colours or more, ranking that
    # type's items: the colour comes first far more often than by chance (one query such as
    # "black trousers" alone is a coin among near neighbours; many are a measure)
    rows = demo_rows[:200]
    gallery = fashion_lite.encode_images([(hm_demo / r["image"]).read_bytes() for r in rows])
    by_type: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_type.setdefault(row["product_type"], []).append(i)
    queries = [
        (colour, kind)
        for kind, items in by_type.items()
        for colour in sorted({rows[i]["colour_master"] for i in items})
        if len(items) >= 3 and len({rows[i]["colour_master"] for i in items}) >= 2
    ]
    texts = fashion_lite.encode_texts([f"{colour} {kind}" for colour, kind in queries])
    firsts, chance = [], []
    for (colour, kind), text in zip(queries, texts, strict=True):
        items = by_type[kind]
        best = items[int(np.argmax(gallery[items] @ text))]
        firsts.append(rows[best]["colour_master"] == colour)
        chance.append(sum(rows[i]["colour_master"] == colour for i in items) / len(items))
    assert len(queries) >= 50
    top1, by_chance = float(np.mean(firsts)), float(np.mean(chance))
    assert top1 >= max(0.6, 2 * by_chance), (top1, by_chance)
