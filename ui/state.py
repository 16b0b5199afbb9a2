"""What the shopper is looking at, as URL query parameters: the page's one source of truth.

Every view (a search, its filters and pages, a product) has an address, so a search can be
shared, bookmarked and reloaded, and the browser's Back and Forward walk through it. Plain
Python (no Streamlit), so it is tested on its own.

    ?q=black+dress&colour=Black&colour=Red&page=2        words, two colours, two pages
    ?mode=similar&like=0108775015                        "more like this" product
    ?mode=link&url=https://...&q=in+red                  an image link, steered by words
    ?mode=photo&img=3f2a9c...                            an uploaded photo (kept by the UI
                                                         server under that hash)
    ...&product=0108775015                               that product's page over the view
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, get_args
from urllib.parse import urlencode

Mode = Literal["text", "photo", "link", "similar"]
MODES: tuple[str, ...] = get_args(Mode)
MAX_PAGES = 8
"""Deepest "Show more" a URL may ask for (each page is one more API call on reload)."""
MAX_TEXT_CHARS = 300
MAX_FILTER_VALUES = 30

# Parameter names; anything else in the URL is a filter (tag key = value).
Q, MODE, URL, IMG, LIKE, PAGE, PRODUCT, DETAILS, ENGINE = (
    "q",
    "mode",
    "url",
    "img",
    "like",
    "page",
    "product",
    "details",
    "engine",
)
RESERVED = frozenset({Q, MODE, URL, IMG, LIKE, PAGE, PRODUCT, DETAILS, ENGINE})

Filters = tuple[tuple[str, tuple[str, ...]], ...]
"""Sorted (tag key, sorted values) pairs: hashable, one spelling per selection."""


def normalise_filters(filters: Mapping[str, Iterable[str]]) -> Filters:
    pairs = []
    for key, values in filters.items():
        kept = sorted({v for v in values if v})[:MAX_FILTER_VALUES]
        if key and key not in RESERVED and kept:
            pairs.append((key, tuple(kept)))
    return tuple(sorted(pairs))


@dataclass(frozen=True)
class View:
    """One address of the shop. `mode` None is the start page."""

    mode: Mode | None = None
    q: str = ""
    url: str = ""
    img: str = ""
    like: str = ""
    filters: Filters = field(default=())
    pages: int = 1
    product: str = ""
    details: bool = False
    engine: str = ""

    # -- reading -----------------------------------------------------------------------

    @classmethod
    def from_params(cls, params: Mapping[str, Sequence[str]]) -> View:
        """The view a URL asks for; malformed parts are dropped, never an error."""

        def first(name: str) -> str:
            values = params.get(name) or ()
            return str(values[0]).strip() if values else ""

        q = first(Q)[:MAX_TEXT_CHARS]
        mode_text = first(MODE) or ("text" if q else "")
        mode: Mode | None = mode_text if mode_text in MODES else None  # type: ignore[assignment]
        view = cls(
            mode=mode,
            q=q,
            url=first(URL) if first(URL).lower().startswith(("http://", "https://")) else "",
            img=first(IMG)[:64],
            like=first(LIKE),
            filters=normalise_filters(
                {k: [str(v).strip() for v in vs] for k, vs in params.items() if k not in RESERVED}
            ),
            pages=min(MAX_PAGES, max(1, int(first(PAGE)))) if first(PAGE).isdigit() else 1,
            product=first(PRODUCT),
            details=first(DETAILS) in ("1", "true", "yes"),
            engine=first(ENGINE),
        )
        return view if view.is_complete() else replace(view, mode=None, pages=1)

    def is_complete(self) -> bool:
        """Whether the mode has what it needs (words, a link, a photo, a product)."""
        needed = {"text": self.q, "link": self.url, "photo": self.img, "similar": self.like}
        return self.mode is None or bool(needed[self.mode])

    # -- writing -----------------------------------------------------------------------

    def to_params(self) -> dict[str, str | list[str]]:
        """Query parameters for this view, defaults left out (short, readable URLs)."""
        params: dict[str, str | list[str]] = {}
        if self.mode is not None:
            if self.mode != "text":
                params[MODE] = self.mode
            if self.q:
                params[Q] = self.q
            if self.mode == "link":
                params[URL] = self.url
            if self.mode == "photo":
                params[IMG] = self.img
            if self.mode == "similar":
                params[LIKE] = self.like
        for key, values in self.filters:
            params[key] = list(values)
        if self.pages > 1:
            params[PAGE] = str(self.pages)
        if self.product:
            params[PRODUCT] = self.product
        if self.details:
            params[DETAILS] = "1"
        if self.engine:
            params[ENGINE] = self.engine
        return params

    def href(self, fragment: str = "") -> str:
        """A relative link to this view (same page, these parameters)."""
        query = urlencode(self.to_params(), doseq=True)
        return f"?{query}" + (f"#{fragment}" if fragment else "") if query else "./"

    # -- moves -------------------------------------------------------------------------

    def search(self, mode: Mode, *, q: str = "", url: str = "", img: str = "") -> View:
        """A new search keeps the filters and settings, starts at page 1, closes a product."""
        return replace(self, mode=mode, q=q, url=url, img=img, like="", pages=1, product="")

    def similar_to(self, product_id: str) -> View:
        return self.search("similar").with_like(product_id)

    def with_like(self, product_id: str) -> View:
        return replace(self, like=product_id)

    def with_filters(self, filters: Mapping[str, Iterable[str]]) -> View:
        return replace(self, filters=normalise_filters(filters), pages=1, product="")

    def filter_map(self) -> dict[str, list[str]]:
        return {key: list(values) for key, values in self.filters}

    def opened(self, product_id: str) -> View:
        return replace(self, product=product_id)

    def closed(self) -> View:
        return replace(self, product="")

    def more(self) -> View:
        return replace(self, pages=min(MAX_PAGES, self.pages + 1))

    def with_details(self, details: bool) -> View:
        return replace(self, details=details)

    def with_engine(self, engine: str) -> View:
        return replace(self, engine=engine, pages=1)
