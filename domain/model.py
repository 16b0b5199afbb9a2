"""Value objects of the product."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from types import MappingProxyType
from typing import NamedTuple

from domain.errors import BadInput

MIN_TOP_K = 1
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
MAX_QUERY_TEXT_CHARS = 1000
MAX_RESULT_DEPTH = 1000
"""How deep pagination may go into one ranked result (offset + page)."""
MAX_PRODUCT_ID_CHARS = 256
MAX_FILTER_KEYS = 32
MAX_FILTER_VALUES = 256
"""Values listed for one key of a filter."""
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 1000
MAX_CURSOR_CHARS = 1024
MAX_PRODUCT_TAGS = 64
"""Tags a product added through the API may carry."""
MAX_PRODUCT_TEXT_CHARS = 10_000
"""Longest name or description a product added through the API may have."""

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: str, what: str) -> str:
    """``value`` unless it holds a NUL or a lone surrogate: both are valid JSON (``"\\ud800"``)
    but no store, tokenizer or UTF-8 response can carry them, so they are the caller's error."""
    if "\x00" in value:
        raise BadInput(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{what} contains a lone surrogate (not valid Unicode)") from None
    return value


def check_product_id(product_id: str) -> str:
    """A product id a client may send: at most MAX_PRODUCT_ID_CHARS, valid text, not blank."""
    if len(product_id) > MAX_PRODUCT_ID_CHARS:
        raise BadInput(
            f"the product id is {len(product_id):,} characters long;"
            f" the limit is {MAX_PRODUCT_ID_CHARS}"
        )
    check_text(product_id, "the product id")
    if not product_id.strip():
        raise BadInput("a product needs a non-empty id")
    return product_id


def check_tag_key(key: str) -> str:
    """A tag key: short, no control characters (MongoDB refuses a NUL in a field name)."""
    if not key.strip():
        raise BadInput("a tag needs a key")
    if len(key) > MAX_TAG_KEY_CHARS:
        raise BadInput(
            f"the tag key is {len(key):,} characters long; the limit is {MAX_TAG_KEY_CHARS}"
        )
    check_text(key, "a tag key")
    if _CONTROL_CHARACTERS.search(key):
        raise BadInput(f"the tag key {key!r} contains a control character")
    return key


def check_new_product(
    product_id: str, name: str, description: str | None, tags: Mapping[str, str]
) -> None:
    """What a client sends for a new product (addProduct): bounded id, texts and tags, all
    valid text, refused before the image is read."""
    check_product_id(product_id)
    for what, text in (("name", name), ("description", description or "")):
        if len(text) > MAX_PRODUCT_TEXT_CHARS:
            raise BadInput(
                f"the product {what} is {len(text):,} characters long;"
                f" the limit is {MAX_PRODUCT_TEXT_CHARS:,}"
            )
        check_text(text, f"the product {what}")
    if len(tags) > MAX_PRODUCT_TAGS:
        raise BadInput(f"the product has {len(tags):,} tags; the limit is {MAX_PRODUCT_TAGS}")
    for key, value in tags.items():
        check_tag_value(check_tag_key(key), value)


def check_facet_keys(keys: Sequence[str] | None) -> list[str] | None:
    """Facet keys a client asks for: at most MAX_FILTER_KEYS, each a valid tag key."""
    if keys is None:
        return None
    if len(keys) > MAX_FILTER_KEYS:
        raise BadInput(f"{len(keys):,} facet keys asked for; the limit is {MAX_FILTER_KEYS}")
    return [check_tag_key(key.strip()) for key in keys]  # trimmed, as a filter's keys are


def check_tag_value(key: str, value: str) -> str:
    if len(value) > MAX_TAG_VALUE_CHARS:
        raise BadInput(
            f"a value of tag {key!r} is {len(value):,} characters long;"
            f" the limit is {MAX_TAG_VALUE_CHARS:,}"
        )
    return check_text(value, f"a value of tag {key!r}")


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"


class SearchMode(StrEnum):
    """Which signals rank a search: all three fused (HYBRID), only the products' images
    (VISUAL: the query vector against image vectors), or only their words (TEXT: lexical
    and semantic)."""

    HYBRID = "hybrid"
    VISUAL = "visual"
    TEXT = "text"


class MatchQuality(StrEnum):
    """How good the best match of a search is (thresholds in domain/fusion.py)."""

    STRONG = "strong"
    WEAK = "weak"
    NONE = "none"


PRODUCT_TEXT_SPACE_SUFFIX = "#text"


def product_text_space(encoder_id: str) -> str:
    """The vector space of the products' words as an encoder's text tower reads them: its
    own space beside the image vectors (``<encoder id>#text``), never mixed with them."""
    return encoder_id + PRODUCT_TEXT_SPACE_SUFFIX


def is_product_text_space(space: str) -> bool:
    return space.endswith(PRODUCT_TEXT_SPACE_SUFFIX)


def _frozen_tags(tags: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType({str(k): str(v) for k, v in tags.items()})


@dataclass(frozen=True)
class Product:
    """A catalog product. ``id`` is stable and comes from the catalog; ``tags`` are the
    catalog's attributes (category, colour, gender, ...); ``image_keys`` name the product's
    images in the ImageStore, the first one being the primary image; ``colour`` is the colour
    histogram of the garment in its primary image (``domain.colour``: float32 bytes), None
    when it was not computed (a product written before histograms were stored)."""

    id: str
    name: str
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    image_keys: tuple[str, ...] = ()
    colour: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.id or not self.id.strip():
            raise BadInput("a product needs a non-empty id")
        object.__setattr__(self, "tags", _frozen_tags(self.tags))
        object.__setattr__(self, "image_keys", tuple(self.image_keys))

    @property
    def primary_image_key(self) -> str | None:
        return self.image_keys[0] if self.image_keys else None


@dataclass(frozen=True)
class ProductFilter:
    """Tag constraints: every ``equals`` pair must hold and, for each ``any_of`` key, the tag
    must be one of the listed values. An empty filter matches everything."""

    equals: Mapping[str, str] = field(default_factory=dict)
    any_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Sizes first: a filter of a million values is refused before anything walks it.
        keys = len(set(self.equals) | set(self.any_of))
        if keys > MAX_FILTER_KEYS:
            raise BadInput(f"the filter has {keys:,} keys; the limit is {MAX_FILTER_KEYS}")
        for key, values in self.any_of.items():
            if len(values) > MAX_FILTER_VALUES:
                raise BadInput(
                    f"the filter on {key!r} lists {len(values):,} values;"
                    f" the limit is {MAX_FILTER_VALUES}"
                )
        object.__setattr__(self, "equals", _frozen_tags(self.equals))
        object.__setattr__(
            self,
            "any_of",
            MappingProxyType({str(k): tuple(str(v) for v in vs) for k, vs in self.any_of.items()}),
        )
        for key, value in self.equals.items():
            check_tag_value(check_tag_key(key), value)
        for key, values in self.any_of.items():
            check_tag_key(key)
            if not values:
                raise BadInput(f"filter on {key!r} lists no values")
            for value in values:
                check_tag_value(key, value)

    @property
    def is_empty(self) -> bool:
        return not self.equals and not self.any_of

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.equals) | frozenset(self.any_of)

    def matches(self, tags: Mapping[str, str]) -> bool:
        if any(tags.get(k) != v for k, v in self.equals.items()):
            return False
        return all(tags.get(k) in vs for k, vs in self.any_of.items())


@dataclass(frozen=True)
class Signals:
    """What each signal said about a hit (None: that signal did not find it or was not
    asked). ``visual`` and ``semantic`` are cosine similarities (query vs the product's image
    vector, vs its words' vector); ``lexical`` is the BM25 score relative to the best lexical
    match of the search (0..1]; ``colour`` is the share of the garment's pixels in the colours
    the query names (``domain.colour``; None when the query names no colour or the product
    has no colour histogram)."""

    visual: float | None = None
    lexical: float | None = None
    semantic: float | None = None
    colour: float | None = None


@dataclass(frozen=True)
class SearchHit:
    product: Product
    score: float
    rank: int
    image_url: str | None
    signals: Signals = field(default_factory=Signals)
    exact: bool = False
    """The query is this product's name or id (case and spacing aside)."""


class LexicalHit(NamedTuple):
    """A product the lexical index matched: its BM25 score (on the adapter's own scale, best
    first; only comparable within one answer), the share of the query's words it has
    (0..1, stems and compounds as the index reads them) and its name (for exact matches).
    A named tuple rather than a frozen dataclass: a text search makes 200 of them and the
    fusion reads them back, a third of the lexical signal's cost as a dataclass."""

    product_id: str
    score: float
    matched: float
    name: str

    @classmethod
    def from_columns(
        cls,
        product_ids: Iterable[str],
        scores: Iterable[float],
        matched: Iterable[float],
        names: Iterable[str],
    ) -> list[LexicalHit]:
        """Hits from one column per field, made in C: ``tuple.__new__`` with the four
        fields, as ``_make`` does, without a Python call per hit."""
        return list(
            map(partial(tuple.__new__, cls), zip(product_ids, scores, matched, names, strict=True))
        )


@dataclass(frozen=True)
class SearchPage:
    hits: tuple[SearchHit, ...]
    encoder_id: str
    took_ms: float
    next_cursor: str | None = None
    match_quality: MatchQuality = MatchQuality.STRONG
    mode: SearchMode = SearchMode.HYBRID
    ranked_ids: tuple[str, ...] = ()
    """The top of the whole ranking (up to ``FACET_DEPTH``), for facet counts that follow
    the query."""
    deeper_ids: Callable[[], Awaitable[tuple[str, ...]]] | None = field(
        default=None, compare=False, repr=False
    )
    """When ``ranked_ids`` stops short of ``FACET_DEPTH`` only because the search asked its
    one signal for the page alone (an image ranking): asks it for the top ``FACET_DEPTH``
    (called only when facets are wanted)."""


@dataclass(frozen=True)
class ProductPage:
    items: tuple[Product, ...]
    next_cursor: str | None = None


@dataclass(frozen=True)
class EncoderInfo:
    id: str
    dim: int
    modalities: frozenset[Modality]
    description: str = ""


@dataclass(frozen=True)
class TextQuery:
    text: str

    def __post_init__(self) -> None:
        if not self.text or not self.text.strip():
            raise BadInput("the search text is empty")
        if len(self.text) > MAX_QUERY_TEXT_CHARS:
            raise BadInput(
                f"the search text is {len(self.text):,} characters long;"
                f" the limit is {MAX_QUERY_TEXT_CHARS:,}"
            )
        check_text(self.text, "the search text")


@dataclass(frozen=True)
class ImageQuery:
    """Exactly one of raw image bytes, an http(s) URL or an existing product id."""

    data: bytes | None = None
    url: str | None = None
    product_id: str | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.data, self.url, self.product_id) if x is not None]
        if len(given) != 1:
            raise BadInput("give exactly one of image bytes, an image URL or a product id")
        if self.data is not None and len(self.data) == 0:
            raise BadInput("the image is empty")
        if self.product_id is not None:
            check_product_id(self.product_id)
        if self.url is not None:
            check_text(self.url, "the image URL")


@dataclass(frozen=True)
class SearchQuery:
    """A search: text, image, or both (the text modifies the image with ``text_weight``)."""

    text: TextQuery | None = None
    image: ImageQuery | None = None
    text_weight: float = 0.5
    filter: ProductFilter | None = None
    top_k: int = DEFAULT_TOP_K
    encoder_id: str | None = None
    cursor: str | None = None
    mode: SearchMode = SearchMode.HYBRID

    def __post_init__(self) -> None:
        if self.text is None and self.image is None:
            raise BadInput("a search needs a text or an image")
        validate_top_k(self.top_k)
        if not 0.0 <= self.text_weight <= 1.0:
            raise BadInput("text_weight must be between 0 and 1")
        check_mode(self.mode, self.text is not None)
        check_search_cursor(self.cursor, self.top_k)


def check_mode(mode: SearchMode, has_text: bool) -> None:
    """TEXT ranks by the words alone: a search without words cannot be ranked so."""
    if mode is SearchMode.TEXT and not has_text:
        raise BadInput("mode TEXT ranks by the words alone: give a text (or use HYBRID or VISUAL)")


def validate_top_k(top_k: int) -> int:
    if not MIN_TOP_K <= top_k <= MAX_TOP_K:
        raise BadInput(f"topK must be between {MIN_TOP_K} and {MAX_TOP_K}, got {top_k}")
    return top_k


@dataclass(frozen=True)
class Cursor:
    """Opaque pagination position: an offset into a ranked result or a listing key."""

    offset: int = 0
    after_id: str | None = None

    def encode(self) -> str:
        payload = {"o": self.offset, "a": self.after_id}
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()

    @classmethod
    def decode(cls, token: str | None) -> Cursor:
        """The position a token names; BadInput for anything this class did not encode
        (too long, not base64 JSON, ``Infinity``, ``1e400``, deep nesting, bad ids)."""
        if not token:
            return cls()
        if len(token) > MAX_CURSOR_CHARS:
            raise BadInput("invalid cursor")
        try:
            payload = json.loads(
                base64.urlsafe_b64decode(token.encode("ascii")), parse_constant=_no_constant
            )
        except (ValueError, TypeError, binascii.Error, RecursionError):
            raise BadInput("invalid cursor") from None
        if not isinstance(payload, dict):
            raise BadInput("invalid cursor")
        offset, after_id = payload.get("o"), payload.get("a")
        if type(offset) is not int or not 0 <= offset <= MAX_RESULT_DEPTH:
            raise BadInput("invalid cursor")
        if after_id is not None:
            if not isinstance(after_id, str):
                raise BadInput("invalid cursor")
            try:
                check_product_id(after_id)
            except BadInput:
                raise BadInput("invalid cursor") from None
        return cls(offset=offset, after_id=after_id)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a cursor value")


def check_search_cursor(cursor: str | None, top_k: int) -> Cursor:
    """The position of a search page, checked before any work (encoding, fetching)."""
    position = Cursor.decode(cursor)
    search_page_end(position, top_k)
    return position


def search_page_end(position: Cursor, top_k: int) -> int:
    """Where a search page starting at ``position`` ends: ``top_k`` results on, cut at
    MAX_RESULT_DEPTH (the last page is shorter; its nextCursor is null)."""
    if position.offset >= MAX_RESULT_DEPTH:
        raise BadInput(f"cannot page deeper than {MAX_RESULT_DEPTH} results")
    return min(position.offset + top_k, MAX_RESULT_DEPTH)
