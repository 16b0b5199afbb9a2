"""ui.client against a live API: typed results, variables, and every error as an ApiError
with a message fit for a shopper."""

from __future__ import annotations

import pytest

from tests.ui.conftest import SMALL_IMAGE_BYTES
from tests.ui.live import LiveApi, noisy_png
from ui.client import (
    ApiError,
    ApiUnavailable,
    FashionSearchClient,
    filter_input,
    graphql_endpoint,
)


@pytest.fixture
def client(live_api: LiveApi) -> FashionSearchClient:
    return FashionSearchClient(live_api.url)


def test_endpoint_and_filter_variables() -> None:
    assert graphql_endpoint("http://h:8000/") == "http://h:8000/graphql"
    assert graphql_endpoint("http://h:8000/graphql") == "http://h:8000/graphql"
    assert filter_input(None) is None
    assert filter_input({"colour": []}) is None
    assert filter_input({"section": ["Menswear"], "colour": ["Red", "Blue"], "x": []}) == {
        "tags": [
            {"key": "colour", "values": ["Red", "Blue"]},
            {"key": "section", "values": ["Menswear"]},
        ]
    }


def test_text_search_returns_typed_ranked_hits(
    client: FashionSearchClient, live_api: LiveApi
) -> None:
    page = client.search_by_text("Rhea pump", top_k=5)
    assert page.encoder == "fake-clip"
    assert [h.rank for h in page.hits] == [1, 2, 3, 4, 5]
    top = page.hits[0].product
    pump = live_api.product("Rhea pump")
    assert (top.id, top.name, top.description) == (pump.id, pump.name, pump.description)
    assert dict((t.key, t.value) for t in top.tags) == pump.tags
    assert page.took_ms >= 0
    assert page.next_cursor is not None
    assert all(h.product.image_url.startswith(f"{live_api.url}/images/") for h in page.hits)

    following = client.search_by_text("Rhea pump", top_k=5, after=page.next_cursor)
    assert [h.rank for h in following.hits] == [6, 7, 8, 9, 10]
    assert not {h.product.id for h in following.hits} & {h.product.id for h in page.hits}


def test_filters_and_encoder_reach_the_api(client: FashionSearchClient) -> None:
    page = client.search_by_text(
        "Garment Upper body",
        top_k=20,
        filters={"section": ["Menswear", "Sport"]},
        encoder="fake-lite",
    )
    assert page.encoder == "fake-lite"
    assert page.hits
    assert {h.product.tag("section") for h in page.hits} <= {"Menswear", "Sport"}


def test_image_search_by_bytes_url_and_similar(
    client: FashionSearchClient, live_api: LiveApi
) -> None:
    umbrella = live_api.product("Mini Umbrella")
    by_bytes = client.search_by_image(image=umbrella.image, top_k=3)
    assert by_bytes.hits[0].product.id == umbrella.id
    by_url = client.search_by_image(url=live_api.image_url(umbrella), top_k=3)
    assert [h.product.id for h in by_url.hits] == [h.product.id for h in by_bytes.hits]
    similar = client.similar_products(umbrella.id, top_k=3)
    assert umbrella.id not in {h.product.id for h in similar.hits}
    assert len(similar.hits) == 3
    with pytest.raises(ValueError, match="exactly one"):
        client.search_by_image(top_k=3)


def test_product_facets_and_encoders(client: FashionSearchClient, live_api: LiveApi) -> None:
    fedora = live_api.product("Hat Frank Fedora(1)")
    product = client.product(fedora.id)
    assert product is not None
    assert product.name == fedora.name
    assert product.description == fedora.description
    assert product.tag("product_type") == "Felt hat"
    assert client.product("no-such-product") is None

    facets = client.facets(keys=["section"])
    assert [f.key for f in facets] == ["section"]
    sections = {v.value: v.count for v in facets[0].values}
    assert sum(sections.values()) == len(live_api.products)

    encoders = client.encoders()
    assert [(e.id, e.is_default, e.indexed_count) for e in encoders] == [
        ("fake-clip", True, 24),
        ("fake-lite", False, 24),
        ("fake-pixels", False, 24),
    ]
    assert [e.supports_text for e in encoders] == [True, True, False]


def test_errors_carry_the_graphql_code(client: FashionSearchClient) -> None:
    with pytest.raises(ApiError) as not_found:
        client.similar_products("no-such-product")
    assert not_found.value.code == "NOT_FOUND"
    assert "no-such-product" in not_found.value.message

    with pytest.raises(ApiError) as bad_image:
        client.search_by_image(image=b"GIF89a not really")
    assert bad_image.value.code == "BAD_USER_INPUT"
    assert "JPEG, PNG or WebP" in bad_image.value.friendly

    with pytest.raises(ApiError) as refused:
        client.search_by_image(url="http://169.254.169.254/latest/meta-data")
    assert refused.value.code == "BAD_USER_INPUT"
    assert not isinstance(refused.value, ApiUnavailable)


def test_too_large_images_are_explained(strict_api: LiveApi) -> None:
    client = FashionSearchClient(strict_api.url)
    over_image_limit = noisy_png(100)  # ~30 kB: over the image limit, under the body limit
    assert len(over_image_limit) > SMALL_IMAGE_BYTES
    with pytest.raises(ApiError) as graphql_error:
        client.search_by_image(image=over_image_limit)
    over_body_limit = noisy_png(300)  # ~270 kB: the server refuses the request body (413)
    with pytest.raises(ApiError) as http_error:
        client.search_by_image(image=over_body_limit)
    for error in (graphql_error.value, http_error.value):
        assert error.code == "PAYLOAD_TOO_LARGE"
        assert error.friendly.startswith("That image is too large")


def test_api_down_and_wrong_address(down_url: str, live_api: LiveApi) -> None:
    with pytest.raises(ApiUnavailable) as down:
        FashionSearchClient(down_url).encoders()
    assert down.value.code == "API_UNAVAILABLE"
    # Shopper language: what happened and what to do, no address or command; the operator's
    # detail (which address failed) stays in the message.
    assert down.value.friendly == "Search is unavailable right now. Please try again in a moment."
    assert down_url in down.value.message

    with pytest.raises(ApiError) as elsewhere:
        FashionSearchClient(f"{live_api.url}/healthz").encoders()
    assert elsewhere.value.code == "NOT_GRAPHQL"
    assert live_api.url in elsewhere.value.message
    assert live_api.url not in elsewhere.value.friendly
