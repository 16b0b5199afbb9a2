"""Result cards (ui.cards): real links, alt text and accessible names from the product, and
markup that a product's own text cannot break."""

from __future__ import annotations

from ui.cards import card, grid, visible_tags
from ui.client import Hit, Product, Tag
from ui.state import View

HOSTILE = Product(
    id="p&1",
    name='Tee <script>alert(1)</script> "quoted"',
    image_url="http://img/1.jpg",
    tags=(Tag("type", "T-shirt"), Tag("colour", "Unknown"), Tag("audience", "Women")),
)
VIEW = View(mode="text", q="tee")


def test_names_are_escaped_everywhere() -> None:
    html = card(Hit(1, 0.5, HOSTILE), VIEW, "http://img/1.jpg", details=False)
    assert "<script>" not in html
    assert 'alt="Tee &lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot;"' in html
    assert "product=p%261" in html  # the id is URL-encoded in the link


def test_a_card_links_the_product_and_names_it_on_more_like_this() -> None:
    product = Product(id="42", name="Linen shirt", image_url="http://img/42.jpg")
    html = card(Hit(3, 0.71234, product), VIEW, "http://img/42.jpg", details=False)
    assert '<a class="fs-product" href="?q=tee&amp;product=42" aria-label="Linen shirt">' in html
    assert '<img src="http://img/42.jpg" alt="Linen shirt"' in html
    assert (
        'href="?mode=similar&amp;like=42#results" aria-label="More like this: Linen shirt">'
        "More like this</a>"
    ) in html
    assert "0.71" not in html
    assert "score 0.712 · rank 3" in card(Hit(3, 0.71234, product), VIEW, "x", details=True)


def test_placeholder_tags_are_not_shown() -> None:
    assert visible_tags(HOSTILE) == ["T-shirt", "Women"]


def test_the_grid_is_a_labelled_list() -> None:
    html = grid([Hit(1, 0.5, HOSTILE)], VIEW, {"p&1": "http://img/1.jpg"}, "Search results", False)
    assert '<ul class="fs-grid" aria-label="Search results">' in html
    assert html.count('<li class="fs-card"') == 1
