"""Result cards as plain HTML: real links (open in a new tab, share, keyboard), images with
alt text, a CSS grid that keeps two columns on a phone. Plain Python, tested on its own; the
page (ui/shop.py) hands the markup to Streamlit's st.html."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ui.client import Hit, Product
from ui.state import View

CARD_TAG_KEYS = (
    "type",
    "product_type",
    "articleType",
    "colour",
    "baseColour",
    "colour_master",
    "audience",
    "section",
    "gender",
)
CARD_TAGS = 2
HIDDEN_VALUES = frozenset({"unknown", "undefined", "none", "n/a", "na", ""})

STYLE = """
<style>
.fs-grid { list-style: none; margin: 0 !important; padding: 0 !important; display: grid;
  gap: 1.25rem 1rem;
  grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); }
@media (max-width: 640px) {
  .fs-grid { grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 0.9rem 0.6rem; } }
.fs-card { display: flex; flex-direction: column; gap: 0.3rem; min-width: 0;
  margin: 0 !important; padding: 0 !important; }
.fs-card a.fs-product { color: inherit; text-decoration: none; display: flex;
  flex-direction: column; gap: 0.35rem; border-radius: 10px; }
.fs-card a.fs-product:hover .fs-name { text-decoration: underline; }
.fs-card a:focus-visible { outline: 3px solid #8a2f44; outline-offset: 2px; }
.fs-card img { width: 100%; height: auto; aspect-ratio: 2 / 3; object-fit: cover; border-radius: 10px;
  background: #f0ebe7; display: block; }
.fs-name { font-weight: 600; line-height: 1.25; overflow-wrap: anywhere; }
.fs-tags { color: #5c524d; font-size: 0.85rem; margin: 0; }
.fs-score { color: #5c524d; font-size: 0.8rem; margin: 0; font-variant-numeric: tabular-nums; }
a.fs-more { margin-top: auto; align-self: flex-start; color: #8a2f44; font-weight: 600;
  font-size: 0.9rem; text-decoration: none; border: 1px solid #8a2f44; border-radius: 999px;
  padding: 0.3rem 0.8rem; }
a.fs-more:hover { background: #8a2f44; color: #fff; }
</style>
"""


def visible_tags(product: Product, limit: int = CARD_TAGS) -> list[str]:
    """The card's few descriptive values (type, colour, ...), without placeholders."""
    values: list[str] = []
    for key in CARD_TAG_KEYS:
        value = (product.tag(key) or "").strip()
        if value.lower() not in HIDDEN_VALUES and value not in values:
            values.append(value)
        if len(values) == limit:
            break
    return values


def more_like_link(product: Product, view: View, css_class: str = "fs-more") -> str:
    """'More like this', with the product's name for screen readers (12 cards, 12 names)."""
    href = escape(view.closed().similar_to(product.id).href("results"))
    name = escape(f"More like this: {product.name}")
    return f'<a class="{css_class}" href="{href}" aria-label="{name}">More like this</a>'


def card(hit: Hit, view: View, image_url: str, details: bool) -> str:
    product = hit.product
    name = escape(product.name)
    tags = visible_tags(product)
    parts = [
        f'<li class="fs-card" data-product-id="{escape(product.id)}">',
        f'<a class="fs-product" href="{escape(view.opened(product.id).href())}" '
        f'aria-label="{name}">',
        f'<img src="{escape(image_url)}" alt="{name}" loading="lazy" width="360" height="540">',
        f'<span class="fs-name">{name}</span></a>',
    ]
    if tags:
        parts.append(f'<p class="fs-tags">{escape(" · ".join(tags))}</p>')
    if details:
        parts.append(f'<p class="fs-score">score {hit.score:.3f} · rank {hit.rank}</p>')
    parts.append(more_like_link(product, view))
    parts.append("</li>")
    return "".join(parts)


def grid(
    hits: Sequence[Hit], view: View, image_url: dict[str, str], label: str, details: bool
) -> str:
    """The cards as one list (`label` names it for screen readers)."""
    cards = "".join(card(hit, view, image_url[hit.product.id], details) for hit in hits)
    return f'{STYLE}<ul class="fs-grid" aria-label="{escape(label)}">{cards}</ul>'
