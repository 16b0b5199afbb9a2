"""A small typed GraphQL client for the fashion-search API.

The UI reaches the product only through this module, over HTTP, with the `gql` client. The
GraphQL documents live in ui/queries/*.graphql (validated against schema.graphql in a test).
Every failure surfaces as an `ApiError` whose `friendly` text is fit to show a shopper.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from gql import Client, GraphQLRequest
from gql.transport.exceptions import (
    TransportConnectionFailed,
    TransportError,
    TransportProtocolError,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.requests import RequestsHTTPTransport

QUERIES_DIR = Path(__file__).resolve().parent / "queries"
DEFAULT_TIMEOUT_S = 60

Filters = Mapping[str, Sequence[str]]
"""Tag key -> accepted values (a product matches when, for every key, its tag is one of them)."""


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Tag:
    key: str
    value: str


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    image_url: str
    description: str | None = None
    tags: tuple[Tag, ...] = ()

    def tag(self, key: str) -> str | None:
        for tag in self.tags:
            if tag.key == key:
                return tag.value
        return None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Product:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            image_url=str(data["imageUrl"]),
            description=data.get("description"),
            tags=tuple(Tag(str(t["key"]), str(t["value"])) for t in data.get("tags") or ()),
        )


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    product: Product


@dataclass(frozen=True)
class FacetValue:
    value: str
    count: int


@dataclass(frozen=True)
class Facet:
    key: str
    values: tuple[FacetValue, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Facet:
        return cls(
            key=str(data["key"]),
            values=tuple(FacetValue(str(v["value"]), int(v["count"])) for v in data["values"]),
        )


MatchQuality = Literal["STRONG", "WEAK", "NONE"]


@dataclass(frozen=True)
class SearchPage:
    hits: tuple[Hit, ...]
    encoder: str
    took_ms: float
    next_cursor: str | None = None
    match_quality: MatchQuality = "STRONG"
    """How good the best match is: NONE means nothing matches well (say so to the shopper)."""
    facets: tuple[Facet, ...] = ()
    """Tag values with counts among the search's top results (asked for with facet_keys)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchPage:
        quality = data.get("matchQuality")
        return cls(
            hits=tuple(
                Hit(int(h["rank"]), float(h["score"]), Product.from_json(h["product"]))
                for h in data["hits"]
            ),
            encoder=str(data["encoder"]),
            took_ms=float(data["tookMs"]),
            next_cursor=data.get("nextCursor"),
            match_quality=quality if quality in ("STRONG", "WEAK", "NONE") else "STRONG",
            facets=tuple(Facet.from_json(f) for f in data.get("facets") or ()),
        )


@dataclass(frozen=True)
class EncoderInfo:
    id: str
    dim: int
    modalities: frozenset[str]
    is_default: bool
    indexed_count: int

    @property
    def supports_text(self) -> bool:
        return any(m.lower() == "text" for m in self.modalities)


# --------------------------------------------------------------------------------------------
# Errors


@dataclass
class ApiError(Exception):
    """The API answered with an error, or could not be reached. `code` is the GraphQL
    `extensions.code` (or a transport-level code); `friendly` is safe to show a shopper."""

    code: str
    message: str
    friendly: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if not self.friendly:
            self.friendly = self.message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ApiUnavailable(ApiError):
    """The API could not be reached (down, wrong URL, timed out)."""


_FRIENDLY_BY_CODE = {
    "BAD_USER_INPUT": "We couldn't use that: {message}",
    "NOT_FOUND": "We couldn't find that: {message}",
    "PAYLOAD_TOO_LARGE": "That image is too large. Try a smaller photo (a few megabytes at most).",
    "UPSTREAM_UNAVAILABLE": "Search is unavailable right now. Please try again in a moment.",
    "UNAUTHENTICATED": "Search refused the request: {message}",
}


def friendly_message(code: str, message: str) -> str:
    template = _FRIENDLY_BY_CODE.get(code, "Something went wrong with search. Please try again.")
    return template.format(code=code, message=message.rstrip(".") + ".")


# --------------------------------------------------------------------------------------------
# Documents


def _fragment_names(text: str) -> list[str]:
    return re.findall(r"\.\.\.\s*([_A-Za-z][_0-9A-Za-z]*)", text)


@cache
def _fragments() -> dict[str, str]:
    source = (QUERIES_DIR / "fragments.graphql").read_text()
    parts = re.split(r"(?m)^(?=fragment\s)", source)
    found: dict[str, str] = {}
    for part in parts:
        match = re.match(r"fragment\s+([_A-Za-z][_0-9A-Za-z]*)", part)
        if match:
            found[match.group(1)] = part.strip()
    return found


@cache
def document(name: str) -> str:
    """The operation in ui/queries/<name>.graphql plus every fragment it uses."""
    text = (QUERIES_DIR / f"{name}.graphql").read_text()
    fragments = _fragments()
    needed: list[str] = []
    pending = _fragment_names(text)
    while pending:
        fragment = pending.pop(0)
        if fragment in needed or fragment not in fragments:
            continue
        needed.append(fragment)
        pending.extend(_fragment_names(fragments[fragment]))
    return "\n\n".join([text.strip(), *(fragments[f] for f in needed)]) + "\n"


def operation_names() -> list[str]:
    return sorted(p.stem for p in QUERIES_DIR.glob("*.graphql") if p.stem != "fragments")


def filter_input(filters: Filters | None) -> dict[str, Any] | None:
    """`ProductFilter` variables from {key: values}; empty selections are dropped."""
    if not filters:
        return None
    tags = [
        {"key": key, "values": list(values)} for key, values in sorted(filters.items()) if values
    ]
    return {"tags": tags} if tags else None


def facet_variables(keys: Sequence[str] | None) -> dict[str, Any]:
    """Ask a search for its facets (counts among its top results) only when keys are given:
    they cost the server a pass over the top results."""
    return {"facetKeys": list(keys), "withFacets": True} if keys else {"withFacets": False}


# --------------------------------------------------------------------------------------------
# Client


def graphql_endpoint(api_url: str) -> str:
    url = api_url.strip().rstrip("/")
    return url if url.endswith("/graphql") else f"{url}/graphql"


class FashionSearchClient:
    """Blocking client: one HTTP request per call, nothing shared between threads."""

    def __init__(self, api_url: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
        self.api_url = api_url.strip().rstrip("/")
        self.endpoint = graphql_endpoint(api_url)
        self.timeout_s = timeout_s

    # Queries ---------------------------------------------------------------------------------

    def encoders(self) -> list[EncoderInfo]:
        data = self._execute("encoders", {})
        return [
            EncoderInfo(
                id=str(e["id"]),
                dim=int(e["dim"]),
                modalities=frozenset(str(m) for m in e["modalities"]),
                is_default=bool(e["isDefault"]),
                indexed_count=int(e["indexedCount"]),
            )
            for e in data["encoders"]
        ]

    def facets(
        self, keys: Sequence[str] | None = None, filters: Filters | None = None
    ) -> list[Facet]:
        variables: dict[str, Any] = {
            "keys": list(keys) if keys is not None else None,
            "filter": filter_input(filters),
        }
        data = self._execute("facets", variables)
        return [Facet.from_json(f) for f in data["facets"]]

    def product(self, product_id: str) -> Product | None:
        data = self._execute("product", {"id": product_id})
        return Product.from_json(data["product"]) if data.get("product") else None

    def search_by_text(
        self,
        text: str,
        top_k: int = 10,
        filters: Filters | None = None,
        encoder: str | None = None,
        after: str | None = None,
        facet_keys: Sequence[str] | None = None,
    ) -> SearchPage:
        variables = {
            "text": text,
            "topK": top_k,
            "filter": filter_input(filters),
            "encoder": encoder,
            "after": after,
            **facet_variables(facet_keys),
        }
        return SearchPage.from_json(self._execute("search_by_text", variables)["searchByText"])

    def search_by_image(
        self,
        *,
        image: bytes | None = None,
        url: str | None = None,
        top_k: int = 10,
        filters: Filters | None = None,
        encoder: str | None = None,
        after: str | None = None,
        text: str | None = None,
        text_weight: float | None = None,
        facet_keys: Sequence[str] | None = None,
    ) -> SearchPage:
        """Search with image bytes (sent base64) or an image URL the API fetches; `text`
        optionally steers the search ("like this, but in red")."""
        if (image is None) == (url is None):
            raise ValueError("give exactly one of image or url")
        image_input = (
            {"base64": base64.b64encode(image).decode("ascii")}
            if image is not None
            else {"url": url}
        )
        variables = {
            "image": image_input,
            "topK": top_k,
            "filter": filter_input(filters),
            "encoder": encoder,
            "after": after,
            "text": text or None,
            "textWeight": text_weight if text else None,
            **facet_variables(facet_keys),
        }
        return SearchPage.from_json(self._execute("search_by_image", variables)["searchByImage"])

    def similar_products(
        self,
        product_id: str,
        top_k: int = 10,
        filters: Filters | None = None,
        encoder: str | None = None,
        facet_keys: Sequence[str] | None = None,
    ) -> SearchPage:
        variables = {
            "productId": product_id,
            "topK": top_k,
            "filter": filter_input(filters),
            "encoder": encoder,
            **facet_variables(facet_keys),
        }
        return SearchPage.from_json(self._execute("similar_products", variables)["similarProducts"])

    # Transport -------------------------------------------------------------------------------

    def _execute(self, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
        transport = RequestsHTTPTransport(url=self.endpoint, timeout=self.timeout_s, retries=0)
        client = Client(transport=transport, fetch_schema_from_transport=False)
        request = GraphQLRequest(document(operation), variable_values=variables)
        try:
            result: dict[str, Any] = client.execute(request)
        except TransportQueryError as exc:
            raise _query_error(exc) from None
        except TransportConnectionFailed as exc:
            raise self._unavailable(str(exc)) from None
        except TransportServerError as exc:
            raise _server_error(exc) from None
        except TransportProtocolError:
            raise ApiError(
                "NOT_GRAPHQL",
                f"{self.endpoint} did not answer like a GraphQL API",
                friendly="Search is unavailable right now. Please try again later.",
            ) from None
        except TransportError as exc:
            raise self._unavailable(str(exc)) from None
        except OSError as exc:  # sockets failing outside the transport's own wrapping
            raise self._unavailable(str(exc)) from None
        return result

    def _unavailable(self, detail: str) -> ApiUnavailable:
        timed_out = "timed out" in detail.lower()
        friendly = (
            "Search is taking too long to answer. Please try again in a moment."
            if timed_out
            else "Search is unavailable right now. Please try again in a moment."
        )
        return ApiUnavailable(
            "TIMEOUT" if timed_out else "API_UNAVAILABLE",
            f"{self.endpoint}: {detail}",
            friendly=friendly,
        )


def _query_error(exc: TransportQueryError) -> ApiError:
    errors = exc.errors or []
    first: Mapping[str, Any] = errors[0] if errors and isinstance(errors[0], Mapping) else {}
    extensions = first.get("extensions") or {}
    code = str(extensions.get("code") or "INTERNAL_SERVER_ERROR")
    message = str(first.get("message") or exc)
    return ApiError(code, message, friendly=friendly_message(code, message), details=extensions)


def _server_error(exc: TransportServerError) -> ApiError:
    if exc.code == 413:
        return ApiError(
            "PAYLOAD_TOO_LARGE", str(exc), friendly=friendly_message("PAYLOAD_TOO_LARGE", "")
        )
    if exc.code in (404, 405):
        return ApiError(
            "NOT_GRAPHQL",
            str(exc),
            friendly="Search is unavailable right now. Please try again later.",
        )
    if exc.code in (502, 503, 504):
        return ApiUnavailable(
            "UPSTREAM_UNAVAILABLE",
            str(exc),
            friendly=friendly_message("UPSTREAM_UNAVAILABLE", ""),
        )
    return ApiError(
        f"HTTP_{exc.code or 'ERROR'}",
        str(exc),
        friendly="Something went wrong with search. Please try again.",
    )
