"""The tags column of `fashion-search search`: what a shopper reads to tell results apart."""

from __future__ import annotations

from fashion_search.commands.catalog_commands import key_tags

KAGGLE = {
    "gender": "Men",
    "masterCategory": "Apparel",
    "subCategory": "Bottomwear",
    "articleType": "Trousers",
    "baseColour": "Black",
    "season": "Fall",
    "year": "2011",
    "usage": "Formal",
    "audience": "Men",
    "category": "Bottomwear",
    "type": "Trousers",
    "colour": "Black",
    "colour_group": "Black",
}
HM = {
    "product_type": "Trousers",
    "product_group": "Garment Lower body",
    "colour": "Dark Blue",
    "colour_master": "Blue",
    "section": "Menswear",
    "type": "Trousers",
    "category": "Garment Lower body",
    "colour_group": "Blue",
    "audience": "Menswear",
}


def test_key_tags_name_type_colour_and_audience_once_each() -> None:
    """A catalog with canonical keys (every ingest since they exist) shows type, colour and
    audience; a value is never repeated (Kaggle's baseColour is its colour)."""
    assert key_tags(KAGGLE) == "Trousers, Black, Men"
    assert key_tags(HM) == "Trousers, Dark Blue, Menswear"


def test_key_tags_of_a_catalog_without_canonical_keys() -> None:
    assert key_tags({"folder": "summer", "fabric": "linen"}) == "summer, linen"
    assert key_tags({"articleType": "Shirts", "baseColour": "Blue"}) == "Shirts, Blue"
