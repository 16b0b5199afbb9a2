from __future__ import annotations

import pytest

from domain.errors import BadInput
from domain.images import content_hash, image_key, sniff_image_type
from domain.model import Cursor, ImageQuery, Product, ProductFilter, SearchQuery, TextQuery


def test_product_tags_are_frozen_copies() -> None:
    tags = {"colour": "Black"}
    product = Product(id="1", name="Trousers", tags=tags)
    tags["colour"] = "Red"
    assert product.tags["colour"] == "Black"
    with pytest.raises(TypeError):
        product.tags["colour"] = "Blue"  # type: ignore[index]


def test_product_requires_an_id() -> None:
    with pytest.raises(BadInput):
        Product(id="  ", name="x")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"colour": "Black", "type": "Trousers"}, True),
        ({"colour": "Black", "type": "Dress"}, True),
        ({"colour": "Red", "type": "Trousers"}, False),
        ({"colour": "Black", "type": "Shoes"}, False),
        ({"type": "Trousers"}, False),
    ],
)
def test_filter_matches_equals_and_any_of(tags: dict[str, str], expected: bool) -> None:
    f = ProductFilter(equals={"colour": "Black"}, any_of={"type": ("Trousers", "Dress")})
    assert f.matches(tags) is expected
    assert f.keys == {"colour", "type"}


def test_empty_filter_matches_everything_and_empty_value_list_is_rejected() -> None:
    assert ProductFilter().is_empty
    assert ProductFilter().matches({})
    with pytest.raises(BadInput):
        ProductFilter(any_of={"type": ()})


@pytest.mark.parametrize("top_k", [0, -1, 101, 10**9])
def test_top_k_is_bounded(top_k: int) -> None:
    with pytest.raises(BadInput, match="topK"):
        SearchQuery(text=TextQuery("dress"), top_k=top_k)


def test_queries_need_content() -> None:
    with pytest.raises(BadInput):
        TextQuery("   ")
    with pytest.raises(BadInput, match="limit"):
        TextQuery("dress " * 1000)
    assert TextQuery("x" * 1000).text
    with pytest.raises(BadInput):
        SearchQuery()
    with pytest.raises(BadInput):
        ImageQuery()
    with pytest.raises(BadInput):
        ImageQuery(data=b"x", url="http://example.com/a.jpg")
    with pytest.raises(BadInput):
        ImageQuery(data=b"")


def test_cursor_round_trip_and_garbage() -> None:
    cursor = Cursor(offset=20, after_id="0123")
    assert Cursor.decode(cursor.encode()) == cursor
    assert Cursor.decode(None) == Cursor()
    for bad in ["not-base64!", "e30=", Cursor(offset=-5).encode()]:
        with pytest.raises(BadInput, match="cursor"):
            Cursor.decode(bad)


def test_sniffing_trusts_bytes_not_names() -> None:
    assert sniff_image_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_image_type(b"\x89PNG\r\n\x1a\nrest") == "image/png"
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_image_type(b"<svg xmlns=...>") is None
    assert sniff_image_type(b"GIF89a") is None


def test_image_key_is_safe_and_content_addressed() -> None:
    a = image_key("../../etc/passwd", b"one", "image/jpeg")
    assert "/" not in a
    assert not a.startswith(".")
    assert a.endswith(".jpg")
    assert image_key("p1", b"one", "image/png") != image_key("p1", b"two", "image/png")
    assert content_hash(b"one")[:20] in image_key("p1", b"one", "image/png")
