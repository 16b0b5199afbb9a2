"""The shop's search page: words, a photo or an image link, "more like this", filters with
counts, product pages. Rendered by Streamlit (entry point ui/app.py); talks to the API over
GraphQL only (ui.client), at FASHION_SEARCH_API_URL.

The URL is the page's state (ui.state.View): widgets write it (st.query_params, one history
entry per change), every run reads it, so Back, Forward, reload and shared links all land on
the same view. Products and "more like this" are real links (ui.cards)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from html import escape
from typing import Literal, TypeVar
from urllib.parse import urljoin

import streamlit as st

from ui import cards
from ui.client import (
    ApiError,
    ApiUnavailable,
    EncoderInfo,
    Facet,
    FashionSearchClient,
    Hit,
    Product,
    SearchPage,
)
from ui.state import Filters, View

DEFAULT_API_URL = "http://127.0.0.1:8000"
PAGE_SIZE = 12
ALSO_COUNT = 4
MAX_TOP_K = 100  # the API's bound on topK
MAX_UPLOAD_MB = 20
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]  # what the API accepts
STATUS_TTL_S = 5  # the status line follows the API's health within seconds
FACETS_TTL_S = 60
RESULTS_TTL_S = 300
PHOTOS_KEPT = 64
"""Uploaded photos the UI server keeps (by hash) so a photo search survives reload and Back."""

# Filter keys, best first: the canonical facets every reader maps its columns to, then the
# raw columns of catalogs ingested before canonical keys existed.
CANONICAL_FACETS = ("type", "colour", "audience", "category", "pattern", "season", "usage")
CANONICAL_MARKERS = frozenset({"type", "audience", "category"})
LEGACY_FACETS = (
    "product_type",
    "articleType",
    "colour_master",
    "baseColour",
    "colour",
    "section",
    "gender",
    "product_group",
    "masterCategory",
    "subCategory",
    "index_group",
    "season",
    "usage",
)
MAX_FILTERS = 4
MAX_CHOICES = 16
"""Values offered per filter (the most frequent, plus whatever is selected)."""
LABELS = {
    "type": "Product type",
    "audience": "For",
    "category": "Category",
    "pattern": "Pattern",
    "season": "Season",
    "usage": "Occasion",
    "product_type": "Product type",
    "articleType": "Product type",
    "product_group": "Product group",
    "masterCategory": "Category",
    "subCategory": "Sub-category",
    "colour_master": "Colour",
    "baseColour": "Colour",
    "colour": "Colour",
    "section": "Section",
    "gender": "Gender",
    "index_group": "Department",
    "garment_group": "Garment group",
    "product_code": "Product code",
}
DETAIL_LABELS = {"colour_master": "Colour group", "colour": "Colour"}

ErrorContext = Literal["text", "photo", "link", "similar", "detail", "startup"]
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Plumbing


def api_url() -> str:
    return os.environ.get("FASHION_SEARCH_API_URL", "").strip() or DEFAULT_API_URL


def client() -> FashionSearchClient:
    return FashionSearchClient(api_url())


def label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    spaced = "".join(f" {c.lower()}" if c.isupper() else c for c in key).replace("_", " ")
    return spaced.strip().capitalize()


def absolute(url: str) -> str:
    """Image URLs are absolute by contract; be forgiving with a relative one."""
    return url if url.startswith(("http://", "https://", "data:")) else urljoin(api_url(), url)


def sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def explain(error: ApiError, context: ErrorContext) -> str:
    """A message for the shopper, in the context of what they were doing."""
    if isinstance(error, ApiUnavailable) or error.code == "PAYLOAD_TOO_LARGE":
        return error.friendly
    detail = sentence(error.message)
    if context == "photo" and error.code == "BAD_USER_INPUT":
        return f"We couldn't read that picture. {detail} Please upload a JPEG, PNG or WebP photo."
    if context == "link":
        return (
            f"We couldn't use that image link. {detail} "
            "Try another link, or save the picture and upload it instead."
        )
    if context in ("similar", "detail") and error.code == "NOT_FOUND":
        return "That product is no longer in the catalog. Try another one."
    if context == "text" and error.code == "BAD_USER_INPUT":
        return f"Please check your search. {detail}"
    return error.friendly


def call(action: Callable[[], T]) -> T | ApiError:
    try:
        return action()
    except ApiError as error:
        return error


def current_view() -> View:
    params = {key: st.query_params.get_all(key) for key in st.query_params}
    return View.from_params(params)


def go(view: View) -> None:
    """Show `view`: one new URL (a browser history entry), read by the next run."""
    st.query_params.from_dict(view.to_params())


def flash(level: Literal["warning", "info"], text: str) -> None:
    """A message for the next run (callbacks run before the page is drawn)."""
    st.session_state["flash"] = (level, text)


# --------------------------------------------------------------------------------------------
# Data (cached across sessions of this UI server: reload, Back and shared links are instant)


class PhotoStore:
    """The last PHOTOS_KEPT uploaded photos by content hash, so `?img=<hash>` finds its photo
    again after a reload or Back (the URL cannot carry megabytes)."""

    def __init__(self, capacity: int = PHOTOS_KEPT) -> None:
        self._photos: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()[:32]
        with self._lock:
            self._photos[key] = data
            self._photos.move_to_end(key)
            while len(self._photos) > self._capacity:
                self._photos.popitem(last=False)
        return key

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._photos.get(key)


@st.cache_resource
def photos() -> PhotoStore:
    return PhotoStore()


class PhotoGone(Exception):
    """The photo a URL names is no longer kept (the UI server restarted or moved on)."""


@st.cache_data(ttl=STATUS_TTL_S, show_spinner=False)
def load_encoders(url: str) -> list[EncoderInfo]:
    return FashionSearchClient(url).encoders()


@st.cache_data(ttl=FACETS_TTL_S, show_spinner=False)
def load_facets(url: str, keys: tuple[str, ...] | None, filters: Filters) -> list[Facet]:
    return FashionSearchClient(url).facets(keys, dict(filters) or None)


@st.cache_data(ttl=RESULTS_TTL_S, show_spinner=False)
def load_product(url: str, product_id: str) -> Product | None:
    return FashionSearchClient(url).product(product_id)


@st.cache_data(ttl=RESULTS_TTL_S, show_spinner=False, max_entries=512)
def load_page(
    url: str, view: View, top_k: int, after: str | None, facet_keys: tuple[str, ...] = ()
) -> SearchPage:
    """One page of the search `view` describes (its filters, engine; never its product),
    with the facets of `facet_keys` counted over the search's top results."""
    api = FashionSearchClient(url)
    filters = view.filter_map()
    engine = view.engine or None
    steer = view.q or None
    if view.mode == "text":
        return api.search_by_text(
            view.q, top_k=top_k, filters=filters, encoder=engine, after=after,
            facet_keys=facet_keys,
        )  # fmt: skip
    if view.mode == "similar":
        return api.similar_products(
            view.like, top_k=top_k, filters=filters, encoder=engine, facet_keys=facet_keys
        )
    if view.mode == "link":
        return api.search_by_image(
            url=view.url, top_k=top_k, filters=filters, encoder=engine, after=after,
            text=steer, facet_keys=facet_keys,
        )  # fmt: skip
    photo = photos().get(view.img)
    if photo is None:
        raise PhotoGone(view.img)
    return api.search_by_image(
        image=photo, top_k=top_k, filters=filters, encoder=engine, after=after, text=steer,
        facet_keys=facet_keys,
    )  # fmt: skip


@dataclass(frozen=True)
class Results:
    hits: tuple[Hit, ...]
    first: SearchPage
    """Carries the facets (counted over the search's top results) and the match quality."""
    last: SearchPage
    more: bool
    """Whether "Show more" can load another page."""


def search_only(view: View) -> View:
    """What identifies a search: the view without its pages, product and display settings."""
    return View(
        mode=view.mode, q=view.q, url=view.url, img=view.img, like=view.like,
        filters=view.filters, engine=view.engine,
    )  # fmt: skip


def search(view: View, facet_keys: tuple[str, ...]) -> Results:
    """The view's pages (1..view.pages), as one list without repeats. "More like this"
    asks its page n as the top n*PAGE_SIZE (one request, so the grid never mixes pages)."""
    url = api_url()
    if view.mode == "similar":
        top_k = min(MAX_TOP_K, PAGE_SIZE * view.pages)
        page = load_page(url, search_only(view), top_k, None, facet_keys)
        more = len(page.hits) == top_k and top_k < MAX_TOP_K
        return Results(page.hits, page, page, more)
    pages = [load_page(url, search_only(view), PAGE_SIZE, None, facet_keys)]
    while len(pages) < view.pages and pages[-1].next_cursor is not None:
        pages.append(load_page(url, search_only(view), PAGE_SIZE, pages[-1].next_cursor))
    unique: dict[str, Hit] = {}
    for hit in (h for p in pages for h in p.hits):
        unique.setdefault(hit.product.id, hit)
    more = pages[-1].next_cursor is not None
    return Results(tuple(unique.values()), pages[0], pages[-1], more)


# --------------------------------------------------------------------------------------------
# Facets


def facet_keys(facets: Sequence[Facet]) -> list[str]:
    """Up to MAX_FILTERS keys worth filtering on: canonical ones when the catalog has them,
    else the familiar raw columns (one per label), else any key with a browsable number of
    values."""
    by_key = {f.key: f for f in facets if len(f.values) > 1}
    canonical = [k for k in CANONICAL_FACETS if k in by_key]
    if CANONICAL_MARKERS & set(canonical):  # ("colour" alone is also a raw H&M column)
        return canonical[:MAX_FILTERS]
    chosen = [k for k in LEGACY_FACETS if k in by_key]
    if not chosen:
        chosen = [k for k, f in by_key.items() if len(f.values) <= 60]
    unique: dict[str, str] = {}
    for key in chosen:
        unique.setdefault(label(key), key)
    return list(unique.values())[:MAX_FILTERS]


def facet_counts(key: str, view: View, results: Results) -> dict[str, int]:
    """Counts for `key` among the search's top results with the other filters, so they
    follow the query and show what choosing a value would give. Without a selection on `key`
    that is the search itself; with one, the same search without it (one more request)."""
    if key in dict(view.filters):
        others = replace(search_only(view), filters=tuple(f for f in view.filters if f[0] != key))
        facets = load_page(api_url(), others, 1, None, (key,)).facets
    else:
        facets = results.first.facets
    return {v.value: v.count for f in facets if f.key == key for v in f.values}


def with_count(counts: dict[str, int]) -> Callable[[str], str]:
    return lambda value: f"{value} ({counts.get(value, 0):,})"


def choices(counts: dict[str, int], selected: Sequence[str]) -> list[str]:
    offered = [v for v in sorted(counts, key=lambda v: (-counts[v], v)) if counts[v] > 0]
    return [*selected, *(v for v in offered if v not in selected)][
        : max(MAX_CHOICES, len(selected))
    ]


# --------------------------------------------------------------------------------------------
# Callbacks (run before the next script run, which draws the new view)


def submit_text(view: View, words_ok: bool) -> None:
    text = str(st.session_state.get("text-query") or "").strip()
    if not words_ok:
        flash("warning", "This search engine matches photos only. Upload a photo instead.")
    elif not text:
        flash("warning", "Type a few words first, like “red knitted jumper”.")
    else:
        go(view.search("text", q=text))


def submit_photo(view: View) -> None:
    upload = st.session_state.get("photo")
    if upload is None:
        flash("warning", "Choose a photo first.")
        return
    key = photos().put(upload.getvalue())
    steer = str(st.session_state.get("photo-refine") or "").strip()
    go(view.search("photo", img=key, q=steer))


def submit_link(view: View) -> None:
    address = str(st.session_state.get("link-url") or "").strip()
    if not address.lower().startswith(("http://", "https://")):
        flash("warning", "Paste a full web address starting with http:// or https://.")
        return
    steer = str(st.session_state.get("link-refine") or "").strip()
    go(view.search("link", url=address, q=steer))


def apply_filters(view: View, keys: Sequence[str]) -> None:
    chosen = {key: list(st.session_state.get(f"filter-{key}") or []) for key in keys}
    kept = {k: list(v) for k, v in view.filters if k not in keys}
    go(view.with_filters({**kept, **chosen}))


def toggle_details(view: View) -> None:
    go(view.with_details(bool(st.session_state.get("details"))))


def choose_engine(view: View, default: str) -> None:
    engine = str(st.session_state.get("engine") or "")
    go(view.with_engine("" if engine == default else engine))


def sync_widgets(view: View) -> None:
    """Widgets show the URL's view (after Back, Forward, reload or a shared link)."""
    state = st.session_state
    state["text-query"] = view.q if view.mode == "text" else ""
    state["link-url"] = view.url if view.mode == "link" else state.get("link-url", "")
    state["link-refine"] = view.q if view.mode == "link" else ""
    state["photo-refine"] = view.q if view.mode == "photo" else ""
    state["details"] = view.details
    for key in [k for k in state if str(k).startswith("filter-")]:
        state[key] = []
    for key, values in view.filters:
        state[f"filter-{key}"] = list(values)


# --------------------------------------------------------------------------------------------
# Page parts


def style() -> None:
    st.markdown(
        """
        <style>
        [data-testid="stMainBlockContainer"] { padding-top: 2rem; max-width: 1200px; }
        [data-testid="InputInstructions"] { display: none; }
        .fs-status { font-size: 0.9rem; color: #4a423e; margin: 0; }
        .fs-note { font-size: 0.9rem; color: #5c524d; margin: 0; }
        .fs-dot { display: inline-block; width: 0.6rem; height: 0.6rem; border-radius: 50%;
                  margin-right: 0.4rem; vertical-align: baseline; }
        .fs-online { background: #2e7d32; } .fs-offline { background: #b3261e; }
        .fs-seed { display: flex; gap: 0.9rem; align-items: center; }
        .fs-seed img { width: 64px; aspect-ratio: 2 / 3; object-fit: cover; border-radius: 8px; }
        .fs-detail-img { width: 100%; max-width: 480px; aspect-ratio: 2 / 3; object-fit: cover;
                         border-radius: 12px; background: #f0ebe7; }
        a.fs-back { color: #8a2f44; font-weight: 600; text-decoration: none; }
        a.fs-back:focus-visible { outline: 3px solid #8a2f44; outline-offset: 2px; }
        @media (max-width: 640px) {
          [data-testid="stMainBlockContainer"] { padding: 1rem 0.75rem 3rem; }
          h1 { font-size: 1.6rem !important; }
        }
        </style>
        """,
        unsafe_allow_html=True,
    )


def status_line(encoders: list[EncoderInfo] | ApiError, details: bool) -> None:
    """Whether search works right now (the API is asked every few seconds)."""
    if isinstance(encoders, ApiError):
        text, css = "Search is offline", "fs-offline"
        extra = f" · {escape(api_url())}: {escape(encoders.message)}" if details else ""
    else:
        total = max((e.indexed_count for e in encoders), default=0)
        text, css = f"Search is online · {total:,} products", "fs-online"
        extra = f" · {escape(api_url())}" if details else ""
    st.html(
        f'<p class="fs-status" role="status"><span class="fs-dot {css}" aria-hidden="true">'
        f"</span>{escape(text)}{extra}</p>"
    )


def note(text: str) -> None:
    """A quiet line of text (Streamlit's captions are too pale for WCAG contrast)."""
    st.html(f'<p class="fs-note">{escape(text)}</p>')


def show_flash() -> None:
    message = st.session_state.pop("flash", None)
    if message:
        level, text = message
        (st.warning if level == "warning" else st.info)(text)


def search_forms(view: View, engine: EncoderInfo | None) -> None:
    words_ok = engine is None or engine.supports_text
    text_tab, photo_tab, link_tab = st.tabs(
        [
            ":material/search: Describe it",
            ":material/photo_camera: Upload a photo",
            ":material/link: Image link",
        ]
    )
    with text_tab, st.form("text-search", border=False):
        st.text_input(
            "What are you looking for?",
            placeholder="e.g. black ankle boots, striped summer dress",
            key="text-query",
            max_chars=300,
        )
        st.form_submit_button(
            "Search",
            type="primary",
            icon=":material/search:",
            on_click=submit_text,
            args=(view, words_ok),
        )
    with photo_tab, st.form("photo-search", border=False):
        st.file_uploader(
            "A photo of something you like",
            type=IMAGE_TYPES,
            key="photo",
            max_upload_size=MAX_UPLOAD_MB,
        )
        st.text_input(
            "Steer it with words (optional)",
            placeholder="e.g. in green, with long sleeves",
            key="photo-refine",
            disabled=not words_ok,
        )
        st.form_submit_button(
            "Find similar",
            type="primary",
            icon=":material/image_search:",
            on_click=submit_photo,
            args=(view,),
        )
    with link_tab, st.form("link-search", border=False):
        st.text_input(
            "Link to an image on the web",
            placeholder="https://example.com/photo.jpg",
            key="link-url",
        )
        st.text_input(
            "Steer it with words (optional)",
            placeholder="e.g. but in black",
            key="link-refine",
            disabled=not words_ok,
        )
        st.form_submit_button(
            "Search by link",
            type="primary",
            icon=":material/link:",
            on_click=submit_link,
            args=(view,),
        )
    show_flash()


def filter_keys() -> tuple[str, ...]:
    """The catalog's keys worth filtering on (the same for every search: a stable panel)."""
    everything = call(lambda: load_facets(api_url(), None, ()))
    return () if isinstance(everything, ApiError) else tuple(facet_keys(everything))


def filters_panel(view: View, keys: Sequence[str], results: Results) -> None:
    """A labelled "Filters" control with counts that follow the query and the other
    filters."""
    if not keys:
        return
    selected = view.filter_map()
    count = sum(len(v) for k, v in selected.items() if k in keys)
    title = f"Filters · {count} selected" if count else "Filters"
    with st.expander(title, icon=":material/tune:", expanded=bool(count)):
        for key in keys:
            try:
                counts = facet_counts(key, view, results)
            except (ApiError, PhotoGone):
                continue
            options = choices(counts, selected.get(key, []))
            if not options:
                continue
            st.pills(
                label(key),
                options,
                selection_mode="multi",
                format_func=with_count(counts),
                key=f"filter-{key}",
                on_change=apply_filters,
                args=(view, keys),
            )
        if count:
            st.button(
                "Clear filters",
                on_click=go,
                args=(view.with_filters({k: v for k, v in selected.items() if k not in keys}),),
                icon=":material/filter_alt_off:",
            )


def heading(view: View) -> tuple[str, str | None, str | None]:
    """(title, picture URL, picture's alt text) of the results."""
    steer = f", steered by “{view.q}”" if view.q and view.mode != "text" else ""
    if view.mode == "text":
        return f"Results for “{view.q}”", None, None
    if view.mode == "photo":
        return f"Like your photo{steer}", None, None
    if view.mode == "link":
        return f"Like the linked image{steer}", view.url, "The linked image"
    seed = call(lambda: load_product(api_url(), view.like))
    if isinstance(seed, ApiError) or seed is None:
        return "More like this product", None, None
    return f"More like “{seed.name}”", absolute(seed.image_url), seed.name


def results_heading(view: View, results: Results) -> None:
    title, picture, alt = heading(view)
    if picture:
        st.html(
            f'<div class="fs-seed"><img src="{escape(picture)}" alt="{escape(alt or "")}">'
            f'<h2 id="results" style="margin:0">{escape(title)}</h2></div>'
        )
    else:
        st.subheader(title, anchor="results")
    shown = len(results.hits)
    if results.first.match_quality == "NONE" and view.mode != "similar":
        # the notice below says nothing matches well: these are not "matches"
        caption = f"Showing the {shown} nearest product{'s' if shown != 1 else ''}"
    else:
        caption = f"Showing the {shown} closest match{'es' if shown != 1 else ''}"
    if view.details:
        caption += f" · {results.last.took_ms:.0f} ms · engine {results.last.encoder}"
    note(caption)


def no_results(view: View) -> None:
    if view.filters:
        st.info(
            "Nothing matches with these filters. Remove one, or clear them all.",
            icon=":material/search_off:",
        )
        st.button("Clear filters", key="clear-empty", on_click=go, args=(view.with_filters({}),))
    else:
        st.info(
            "Nothing matches yet. Try other words, or a photo of what you have in mind.",
            icon=":material/search_off:",
        )


def results_section(view: View) -> None:
    assert view.mode is not None
    keys = filter_keys()
    with st.spinner("Searching the catalog…"):
        try:
            results: Results | ApiError = search(view, keys)
        except ApiError as error:
            results = error
        except PhotoGone:
            st.info(
                "We no longer have that photo. Please upload it again.",
                icon=":material/photo_camera:",
            )
            return
    if isinstance(results, ApiError):
        if isinstance(results, ApiUnavailable):
            st.error(explain(results, view.mode), icon=":material/cloud_off:")
            st.button("Try again", icon=":material/refresh:")
        else:
            st.warning(explain(results, view.mode), icon=":material/error:")
        return
    filters_panel(view, keys, results)
    results_heading(view, results)
    if not results.hits:
        no_results(view)
        return
    if results.first.match_quality == "NONE" and view.mode != "similar":
        st.info(
            "No close matches. These are the nearest we have: try other words, "
            "a photo, or fewer filters.",
            icon=":material/search_off:",
        )
    image_urls = {h.product.id: absolute(h.product.image_url) for h in results.hits}
    st.html(cards.grid(results.hits, view, image_urls, "Search results", view.details))
    if results.more:
        st.button(
            "Show more results",
            on_click=go,
            args=(view.more(),),
            icon=":material/expand_more:",
        )


def detail_rows(product: Product) -> list[tuple[str, str]]:
    """(label, value) for every tag, the card's key tags first."""
    order = {key: i for i, key in enumerate(cards.CARD_TAG_KEYS)}
    tags = sorted(
        (t for t in product.tags if t.value.strip().lower() not in cards.HIDDEN_VALUES),
        key=lambda t: (order.get(t.key, len(order)), t.key),
    )
    return [(DETAIL_LABELS.get(t.key) or label(t.key), t.value) for t in tags]


def detail_view(view: View) -> None:
    back = "Back to results" if view.mode else "Back to search"
    st.html(f'<a class="fs-back" href="{escape(view.closed().href())}">← {back}</a>')
    product = call(lambda: load_product(api_url(), view.product))
    if isinstance(product, ApiError):
        level = st.error if isinstance(product, ApiUnavailable) else st.warning
        level(explain(product, "detail"))
        return
    if product is None:
        st.warning("That product is no longer in the catalog. Try another one.")
        return
    picture, about = st.columns([2, 3], gap="large")
    with picture:
        st.html(
            f'<img class="fs-detail-img" src="{escape(absolute(product.image_url))}" '
            f'alt="{escape(product.name)}">'
        )
    with about:
        st.title(product.name, anchor=False)
        if product.description:
            st.write(product.description)
        rows = detail_rows(product)
        if rows:
            items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
            st.html(f'<dl class="fs-facts">{items}</dl>')
        st.html(cards.more_like_link(product, view))
        if view.details:
            note(f"Product id {product.id}")
    st.subheader("You may also like", anchor=False)
    engine = view.engine or None
    similar = call(
        lambda: client().similar_products(
            product.id, top_k=ALSO_COUNT, filters=view.filter_map(), encoder=engine
        )
    )
    if isinstance(similar, ApiError):
        note(explain(similar, "similar"))
    elif similar.hits:
        urls = {h.product.id: absolute(h.product.image_url) for h in similar.hits}
        st.html(cards.grid(similar.hits, view.closed(), urls, "You may also like", view.details))
    else:
        note("Nothing similar matches the current filters.")


def engine_picker(view: View, encoders: list[EncoderInfo]) -> None:
    indexed = [e for e in encoders if e.indexed_count > 0] or list(encoders)
    if len(indexed) < 2:
        return
    default = next((e.id for e in indexed if e.is_default), indexed[0].id)
    sizes = {e.id: e.indexed_count for e in indexed}
    st.session_state["engine"] = view.engine if view.engine in sizes else default
    st.selectbox(
        "Search engine",
        list(sizes),
        format_func=lambda e: f"{e} ({sizes[e]:,} products)",
        key="engine",
        on_change=choose_engine,
        args=(view, default),
        help="Each engine (encoder) has its own index; compare them side by side.",
    )


def footer(view: View, encoders: list[EncoderInfo] | ApiError) -> None:
    st.divider()
    st.toggle(
        "Show search details",
        key="details",
        on_change=toggle_details,
        args=(view,),
        help="Scores, ranks, timings and the search engine, for the curious.",
    )
    if view.details and not isinstance(encoders, ApiError):
        engine_picker(view, encoders)


def active_engine(encoders: list[EncoderInfo] | ApiError, chosen: str) -> EncoderInfo | None:
    if isinstance(encoders, ApiError):
        return None
    if chosen:
        return next((e for e in encoders if e.id == chosen), None)
    return next((e for e in encoders if e.is_default), encoders[0] if encoders else None)


def main() -> None:
    st.set_page_config(page_title="Fashion search", page_icon="👗", layout="wide")
    style()
    view = current_view()
    sync_widgets(view)
    encoders = call(lambda: load_encoders(api_url()))

    st.title(":material/checkroom: Fashion search", anchor=False)
    status_line(encoders, view.details)
    if isinstance(encoders, ApiError):
        st.error(explain(encoders, "startup"), icon=":material/cloud_off:")
    elif not any(e.indexed_count for e in encoders):
        st.info(
            "The shop has no products yet. Please come back soon.", icon=":material/inventory_2:"
        )

    if view.product:
        detail_view(view)
    else:
        search_forms(view, active_engine(encoders, view.engine))
        if view.mode is None:
            st.info(
                "Describe what you want, show a photo, or paste a link to an image. "
                "Then pick **More like this** on anything you like.",
                icon=":material/styler:",
            )
        elif not isinstance(encoders, ApiError):
            results_section(view)
    footer(view, encoders)
