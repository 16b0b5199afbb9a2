"""The shopper UI: search by words, by photo or by image link, "more like this", filters and
product details. Rendered by Streamlit (entry point ui/app.py); talks to the API over GraphQL
only (ui.client), at the URL in the environment variable FASHION_SEARCH_API_URL."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from urllib.parse import urljoin

import streamlit as st

from ui.client import (
    ApiError,
    ApiUnavailable,
    EncoderInfo,
    Facet,
    FashionSearchClient,
    Filters,
    Hit,
    Product,
    SearchPage,
)

DEFAULT_API_URL = "http://127.0.0.1:8000"
GRID_COLUMNS = 4
DEFAULT_TOP_K = 12
MAX_TOP_K = 48
MAX_UPLOAD_MB = 20
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]  # what the API accepts

# Tag keys worth filtering on, best first (H&M and Kaggle layouts); others are used only when
# none of these exist.
FILTER_KEYS = (
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
# Tags shown on a result card, in this order.
CARD_TAG_KEYS = (
    "product_type",
    "articleType",
    "colour",
    "baseColour",
    "colour_master",
    "section",
    "gender",
)
CARD_TAGS = 3
DETAIL_LABELS = {"colour_master": "Colour group", "colour": "Colour"}
LABELS = {
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

QueryKind = Literal["text", "image", "url", "similar"]
T = TypeVar("T")


@dataclass(frozen=True)
class SearchRequest:
    """What the shopper asked for; filters, top-k and encoder are applied on top."""

    kind: QueryKind
    text: str = ""
    image: bytes = b""
    image_name: str = ""
    url: str = ""
    product: Product | None = None
    text_weight: float = 0.5

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.image).hexdigest() if self.image else ""
        product_id = self.product.id if self.product else ""
        return "|".join(
            [self.kind, self.text, digest, self.url, product_id, f"{self.text_weight:.2f}"]
        )


@dataclass
class Results:
    key: str
    pages: list[SearchPage] = field(default_factory=list)
    error: str | None = None
    error_level: Literal["error", "warning"] = "error"

    @property
    def hits(self) -> list[Hit]:
        seen: set[str] = set()
        hits: list[Hit] = []
        for page in self.pages:
            for hit in page.hits:
                if hit.product.id not in seen:
                    seen.add(hit.product.id)
                    hits.append(hit)
        return hits


# --------------------------------------------------------------------------------------------
# Helpers


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


def badge_text(value: str) -> str:
    return value.replace("[", "(").replace("]", ")").replace(":", " ")


def card_tags(product: Product) -> list[str]:
    values: list[str] = []
    for key in CARD_TAG_KEYS:
        value = product.tag(key)
        if value and value not in values and value.lower() not in {"unknown", "undefined"}:
            values.append(value)
        if len(values) == CARD_TAGS:
            break
    return values


def image_data_url(data: bytes) -> str | None:
    """A data: URL for a preview of the shopper's own photo (rendered by the browser, so a
    broken file never reaches PIL on the server)."""
    kinds = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png"}
    for magic, mime in kinds.items():
        if data.startswith(magic):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return f"data:image/webp;base64,{base64.b64encode(data).decode('ascii')}"
    return None


def sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def explain(error: ApiError, kind: QueryKind | Literal["detail", "startup"]) -> str:
    """A message for the shopper, in the context of what they were doing."""
    if isinstance(error, ApiUnavailable) or error.code == "PAYLOAD_TOO_LARGE":
        return error.friendly
    detail = sentence(error.message)
    if kind == "image" and error.code == "BAD_USER_INPUT":
        return f"We couldn't read that picture. {detail} Please upload a JPEG, PNG or WebP photo."
    if kind == "url":
        return (
            f"We couldn't use that image link. {detail} "
            "Try another link, or save the picture and upload it instead."
        )
    if kind in ("similar", "detail") and error.code == "NOT_FOUND":
        return "That product is no longer in the catalog. Try another one."
    if kind == "text" and error.code == "BAD_USER_INPUT":
        return f"Please check your search. {detail}"
    return error.friendly


def call(action: Callable[[], T]) -> T | ApiError:
    try:
        return action()
    except ApiError as error:
        return error


@st.cache_data(ttl=30, show_spinner=False)
def load_encoders(url: str) -> list[EncoderInfo]:
    return FashionSearchClient(url).encoders()


@st.cache_data(ttl=60, show_spinner=False)
def load_facets(url: str) -> list[Facet]:
    return FashionSearchClient(url).facets()


def with_count(counts: dict[str, int]) -> Callable[[str], str]:
    return lambda value: f"{value} ({counts.get(value, 0)})"


def choose_facets(facets: Sequence[Facet]) -> list[Facet]:
    by_key = {f.key: f for f in facets if len(f.values) > 1}
    chosen = [by_key[k] for k in FILTER_KEYS if k in by_key]
    if not chosen:  # an unfamiliar catalog: any key with a browsable number of values
        chosen = [f for f in by_key.values() if len(f.values) <= 60]
    # Keep one colour facet, one product-type facet, ...: their labels must not repeat.
    unique: dict[str, Facet] = {}
    for facet in chosen:
        unique.setdefault(label(facet.key), facet)
    return list(unique.values())[:MAX_FILTERS]


# --------------------------------------------------------------------------------------------
# State changes (button callbacks run before the script, so the page renders the new state)


def start_search(request: SearchRequest) -> None:
    """A new search; submitting the same one again asks the API again (it may be back up)."""
    st.session_state["request"] = request
    st.session_state["results"] = None
    st.session_state["detail"] = None


def more_like_this(product: Product) -> None:
    start_search(SearchRequest(kind="similar", product=product))


def show_detail(product: Product) -> None:
    st.session_state["detail"] = product


def close_detail() -> None:
    st.session_state["detail"] = None


def clear_filters(keys: Sequence[str]) -> None:
    for key in keys:
        st.session_state[f"filter-{key}"] = []


def want_more() -> None:
    st.session_state["want_more"] = True


# --------------------------------------------------------------------------------------------
# Page


def style() -> None:
    st.markdown(
        """
        <style>
        [data-testid="stMainBlockContainer"] { padding-top: 2.5rem; max-width: 1200px; }
        [data-testid="stVerticalBlockBorderWrapper"] img,
        [data-testid="stImage"] img { border-radius: 10px; background: #f6f3f1; }
        [class*="st-key-card-"] [data-testid="stImage"] img {
            aspect-ratio: 2 / 3; object-fit: cover; width: 100%; }
        [class*="st-key-card-"] [data-testid="stBaseButton-tertiary"] { padding: 0; }
        [class*="st-key-card-"] [data-testid="stBaseButton-tertiary"] p {
            font-weight: 600; text-align: left; }
        [data-testid="stColumn"] > [data-testid="stVerticalBlock"] { height: 100%; }
        [data-testid="stLayoutWrapper"]:has(> [class*="st-key-card-"]),
        [class*="st-key-card-"] { height: 100%; }
        [class*="st-key-card-"] > :last-child { margin-top: auto; }
        .fs-score { color: #7a6f69; font-size: 0.85rem; }
        </style>
        """,
        unsafe_allow_html=True,
    )


def sidebar() -> tuple[int, Filters, str | None, list[EncoderInfo] | ApiError]:
    url = api_url()
    with st.sidebar:
        st.header("Refine")
        top_k = int(
            st.slider(
                "How many results",
                min_value=1,
                max_value=MAX_TOP_K,
                value=DEFAULT_TOP_K,
                key="top_k",
            )
        )

        encoders = call(lambda: load_encoders(url))
        encoder: str | None = None
        if not isinstance(encoders, ApiError):
            indexed = [e for e in encoders if e.indexed_count > 0] or list(encoders)
            if len(indexed) > 1:
                default = next((i for i, e in enumerate(indexed) if e.is_default), 0)
                sizes = {e.id: e.indexed_count for e in indexed}
                encoder = st.selectbox(
                    "Search engine",
                    list(sizes),
                    index=default,
                    format_func=lambda e: f"{e} ({sizes[e]:,} products)",
                    key="encoder",
                    help="Each engine (encoder) has its own index; compare them side by side.",
                )

        filters: dict[str, list[str]] = {}
        facets = call(lambda: load_facets(url))
        if not isinstance(facets, ApiError):
            shown = choose_facets(facets)
            for facet in shown:
                counts = {v.value: v.count for v in facet.values}
                options = sorted(counts, key=lambda v: (-counts[v], v))
                selected = st.multiselect(
                    label(facet.key),
                    options,
                    format_func=with_count(counts),
                    key=f"filter-{facet.key}",
                    placeholder="Any",
                )
                if selected:
                    filters[facet.key] = [str(v) for v in selected]
            if filters:
                st.button(
                    "Clear filters",
                    on_click=clear_filters,
                    args=([f.key for f in shown],),
                    icon=":material/filter_alt_off:",
                )

        st.divider()
        if isinstance(encoders, ApiError):
            st.caption(f":red[●] API offline · {url}")
        else:
            total = max((e.indexed_count for e in encoders), default=0)
            st.caption(f":green[●] Connected · {total:,} products · {url}")
    return top_k, filters, encoder, encoders


def active_encoder(
    encoders: list[EncoderInfo] | ApiError, encoder: str | None
) -> EncoderInfo | None:
    """The encoder searches will use: the chosen one, else the server's default."""
    if isinstance(encoders, ApiError):
        return None
    if encoder:
        return next((e for e in encoders if e.id == encoder), None)
    return next((e for e in encoders if e.is_default), encoders[0] if encoders else None)


def search_forms(engine: EncoderInfo | None) -> None:
    words_ok = engine is None or engine.supports_text
    text_tab, photo_tab, link_tab = st.tabs(
        [
            ":material/search: Describe it",
            ":material/photo_camera: Upload a photo",
            ":material/link: Image link",
        ]
    )
    with text_tab, st.form("text-search", border=False):
        text = st.text_input(
            "What are you looking for?",
            placeholder="e.g. black ankle boots, striped summer dress, denim jacket",
            key="text-query",
        )
        if st.form_submit_button("Search", type="primary", icon=":material/search:"):
            if engine is not None and not words_ok:
                st.warning(
                    f"The {engine.id} search engine matches photos only. "
                    "Upload a photo or paste an image link instead."
                )
            elif text and text.strip():
                start_search(SearchRequest(kind="text", text=text.strip()))
            else:
                st.warning("Type a few words first, like “red knitted jumper”.")

    with photo_tab, st.form("photo-search", border=False):
        upload = st.file_uploader(
            "A photo of something you like",
            type=IMAGE_TYPES,
            key="photo",
            max_upload_size=MAX_UPLOAD_MB,
        )
        refine = st.text_input(
            "Steer it with words (optional)",
            placeholder="e.g. in green, with long sleeves",
            key="photo-refine",
            disabled=not words_ok,
        )
        if st.form_submit_button("Find similar", type="primary", icon=":material/image_search:"):
            if upload is None:
                st.warning("Choose a photo first.")
            else:
                start_search(
                    SearchRequest(
                        kind="image",
                        image=upload.getvalue(),
                        image_name=upload.name,
                        text=(refine or "").strip() if words_ok else "",
                    )
                )

    with link_tab, st.form("link-search", border=False):
        link = st.text_input(
            "Link to an image on the web",
            placeholder="https://example.com/photo.jpg",
            key="link-url",
        )
        link_refine = st.text_input(
            "Steer it with words (optional)",
            placeholder="e.g. but in black",
            key="link-refine",
            disabled=not words_ok,
        )
        if st.form_submit_button("Search by link", type="primary", icon=":material/link:"):
            address = (link or "").strip()
            if not address.lower().startswith(("http://", "https://")):
                st.warning("Paste a full web address starting with http:// or https://.")
            else:
                start_search(
                    SearchRequest(
                        kind="url",
                        url=address,
                        text=(link_refine or "").strip() if words_ok else "",
                    )
                )


def run_search(
    request: SearchRequest,
    top_k: int,
    filters: Filters,
    encoder: str | None,
    after: str | None = None,
) -> SearchPage:
    api = client()
    if request.kind == "text":
        return api.search_by_text(
            request.text, top_k=top_k, filters=filters, encoder=encoder, after=after
        )
    if request.kind == "image":
        return api.search_by_image(
            image=request.image,
            top_k=top_k,
            filters=filters,
            encoder=encoder,
            after=after,
            text=request.text or None,
            text_weight=request.text_weight if request.text else None,
        )
    if request.kind == "url":
        return api.search_by_image(
            url=request.url,
            top_k=top_k,
            filters=filters,
            encoder=encoder,
            after=after,
            text=request.text or None,
            text_weight=request.text_weight if request.text else None,
        )
    assert request.product is not None
    return api.similar_products(request.product.id, top_k=top_k, filters=filters, encoder=encoder)


def results_for(
    request: SearchRequest, top_k: int, filters: Filters, encoder: str | None
) -> Results:
    key = "|".join(
        [
            request.fingerprint(),
            str(top_k),
            repr(sorted((k, sorted(v)) for k, v in filters.items())),
            encoder or "",
        ]
    )
    results: Results | None = st.session_state.get("results")
    if results is None or results.key != key:
        results = Results(key=key)
        with st.spinner("Searching the catalog…", show_time=False):
            page = call(lambda: run_search(request, top_k, filters, encoder))
        if isinstance(page, ApiError):
            results.error = explain(page, request.kind)
            results.error_level = "error" if isinstance(page, ApiUnavailable) else "warning"
        else:
            results.pages.append(page)
        st.session_state["results"] = results
    elif st.session_state.pop("want_more", False) and results.pages:
        cursor = results.pages[-1].next_cursor
        if cursor:
            with st.spinner("Loading more…"):
                page = call(lambda: run_search(request, top_k, filters, encoder, after=cursor))
            if isinstance(page, ApiError):
                st.warning(explain(page, request.kind))
            else:
                results.pages.append(page)
    return results


def query_summary(request: SearchRequest, results: Results) -> None:
    hits = results.hits
    count = f"{len(hits)} result{'s' if len(hits) != 1 else ''}"
    last = results.pages[-1] if results.pages else None
    meta = f" · {last.took_ms:.0f} ms · {last.encoder}" if last else ""
    steer = f" steered by “{request.text}”" if request.text and request.kind != "text" else ""
    thumb: str | None = None
    if request.kind == "text":
        title = f"{count} for “{request.text}”"
    elif request.kind == "image":
        title = f"{count} like your photo{steer}"
        thumb = image_data_url(request.image)
    elif request.kind == "url":
        title = f"{count} like the linked image{steer}"
        thumb = request.url
    else:
        assert request.product is not None
        title = f"{count} like “{request.product.name}”"
        thumb = absolute(request.product.image_url)

    if thumb and not results.error:
        picture, words = st.columns([1, 9], vertical_alignment="center")
        picture.image(thumb, width=72)
        words.subheader(title, anchor=False)
        words.caption(meta.removeprefix(" · "))
    else:
        st.subheader(title, anchor=False)
        if meta:
            st.caption(meta.removeprefix(" · "))


def result_card(hit: Hit, where: str) -> None:
    product = hit.product
    with st.container(border=True, key=f"card-{where}-{product.id}"):
        st.image(absolute(product.image_url), width="stretch")
        st.button(
            product.name,
            key=f"{where}-detail-{product.id}",
            on_click=show_detail,
            args=(product,),
            type="tertiary",
        )
        tags = card_tags(product)
        if tags:
            st.markdown(" ".join(f":gray-badge[{badge_text(t)}]" for t in tags))
        st.markdown(
            f'<span class="fs-score">Match {hit.score:.2f} · #{hit.rank}</span>',
            unsafe_allow_html=True,
        )
        st.button(
            "More like this",
            key=f"{where}-more-{product.id}",
            on_click=more_like_this,
            args=(product,),
            icon=":material/auto_awesome:",
            type="primary",
            width="stretch",
        )


def result_grid(hits: Sequence[Hit], where: str = "results") -> None:
    for start in range(0, len(hits), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS, gap="medium")
        for column, hit in zip(columns, hits[start : start + GRID_COLUMNS], strict=False):
            with column:
                result_card(hit, where)


def detail_rows(product: Product) -> list[tuple[str, str]]:
    """(label, value) for every tag, the card's key tags first."""
    order = {key: i for i, key in enumerate(CARD_TAG_KEYS)}
    tags = sorted(
        (t for t in product.tags if t.value),
        key=lambda t: (order.get(t.key, len(order)), t.key),
    )
    return [(DETAIL_LABELS.get(t.key) or label(t.key), t.value) for t in tags]


def md_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "\\`*_[]<>#|~$:" else c for c in text)


def detail_view(product: Product, filters: Filters, encoder: str | None) -> None:
    st.button("Back to results", on_click=close_detail, icon=":material/arrow_back:")
    fresh = call(lambda: client().product(product.id))
    if isinstance(fresh, ApiError):
        level = st.error if isinstance(fresh, ApiUnavailable) else st.warning
        level(explain(fresh, "detail"))
        return
    if fresh is None:
        st.warning("That product is no longer in the catalog. Try another one.")
        return
    picture, about = st.columns([2, 3], gap="large")
    with picture:
        st.image(absolute(fresh.image_url), width="stretch")
    with about:
        st.title(fresh.name, anchor=False)
        if fresh.description:
            st.write(fresh.description)
        rows = detail_rows(fresh)
        if rows:
            st.markdown("\n".join(f"- **{name}:** {md_escape(value)}" for name, value in rows))
        st.caption(f"Product id {fresh.id}")
        st.button(
            "More like this",
            key="detail-more",
            on_click=more_like_this,
            args=(fresh,),
            icon=":material/auto_awesome:",
            type="primary",
        )
    st.subheader("You may also like", anchor=False)
    similar = call(
        lambda: client().similar_products(
            fresh.id, top_k=GRID_COLUMNS, filters=filters, encoder=encoder
        )
    )
    if isinstance(similar, ApiError):
        st.caption(explain(similar, "similar"))
    elif similar.hits:
        result_grid(similar.hits, where="also")
    else:
        st.caption("Nothing similar matches the current filters.")


def main() -> None:
    st.set_page_config(page_title="Fashion search", page_icon="👗", layout="wide")
    style()
    st.session_state.setdefault("request", None)
    st.session_state.setdefault("detail", None)

    top_k, filters, encoder, encoders = sidebar()

    st.title(":material/checkroom: Fashion search", anchor=False)
    st.caption(
        "Find it by describing it, by showing a photo, or by pointing at something you love."
    )

    startup_error: str | None = None
    if isinstance(encoders, ApiError):
        startup_error = explain(encoders, "startup")
        st.error(startup_error, icon=":material/cloud_off:")
    elif not any(e.indexed_count for e in encoders):
        st.info(
            "The catalog is empty. Ingest one with `fashion-search ingest PATH` and come back.",
            icon=":material/inventory_2:",
        )

    detail: Product | None = st.session_state["detail"]
    if detail is not None:
        detail_view(detail, filters, encoder)
        return

    search_forms(active_encoder(encoders, encoder))

    request: SearchRequest | None = st.session_state["request"]
    if request is None:
        st.info(
            "Start with a few words, a photo, or a link to an image. "
            "Then click **More like this** on anything you like.",
            icon=":material/styler:",
        )
        return

    results = results_for(request, top_k, filters, encoder)
    if results.error:
        if results.error == startup_error:
            pass  # already said at the top of the page
        elif results.error_level == "error":
            st.error(results.error, icon=":material/cloud_off:")
        else:
            st.warning(results.error, icon=":material/error:")
        return
    query_summary(request, results)
    hits = results.hits
    if not hits:
        st.info(
            "Nothing matches. Try other words, or remove some filters in the sidebar.",
            icon=":material/search_off:",
        )
        return
    result_grid(hits)
    if results.pages[-1].next_cursor and request.kind != "similar":
        st.button("Show more", on_click=want_more, icon=":material/expand_more:")
