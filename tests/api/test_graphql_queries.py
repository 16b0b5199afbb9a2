"""Every query of the schema, through HTTP against the ASGI app over the in-memory fakes."""

from __future__ import annotations

from typing import Any

from tests.api.helpers import (
    PRODUCTS,
    Api,
    World,
    b64,
    codes,
    errors_of,
    make_api,
    png,
    webp,
)
from tests.fakes import fake_image

PAGE = """
fragment P on Product { id name description imageUrl tags { key value } }
query Search($text: String!, $topK: Int!, $filter: ProductFilter, $after: String, $encoder: String) {
  searchByText(text: $text, topK: $topK, filter: $filter, after: $after, encoder: $encoder) {
    encoder tookMs nextCursor hits { rank score product { ...P } }
  }
}
"""

IMAGE = """
query Image($image: ImageInput!, $topK: Int! = 10, $text: String, $textWeight: Float) {
  searchByImage(image: $image, topK: $topK, text: $text, textWeight: $textWeight) {
    encoder nextCursor hits { rank score product { id name imageUrl } }
  }
}
"""


def hit_ids(result: dict[str, Any], field: str) -> list[str]:
    return [h["product"]["id"] for h in result["data"][field]["hits"]]


async def test_search_by_text_ranks_and_maps_every_field(api: Api) -> None:
    result = await api.gql(PAGE, {"text": "white sneakers", "topK": 2})
    assert "errors" not in result
    page = result["data"]["searchByText"]
    assert page["encoder"] == "fake"
    assert page["tookMs"] >= 0
    assert {h["product"]["id"] for h in page["hits"]} == {"p4", "p5"}
    assert [h["rank"] for h in page["hits"]] == [1, 2]
    assert page["hits"][0]["score"] >= page["hits"][1]["score"] > 0
    product = page["hits"][0]["product"]
    assert product["description"] == f"{product['name']}."
    assert {"key": "colour", "value": "White"} in product["tags"]
    key = api.world.catalog.products[product["id"]].image_keys[0]
    assert product["imageUrl"] == f"http://testserver/images/{key}"


async def test_image_urls_use_the_public_url_when_configured() -> None:
    api = await make_api(public_url="https://shop.example/search/")
    async with api.client:
        result = await api.gql(PAGE, {"text": "red dress", "topK": 1})
    url = result["data"]["searchByText"]["hits"][0]["product"]["imageUrl"]
    assert url.startswith("https://shop.example/search/images/")


async def test_filter_keeps_only_matching_tags(api: Api) -> None:
    tag_filter = {"tags": [{"key": "colour", "values": ["Black", "Blue"]}]}
    result = await api.gql(PAGE, {"text": "summer dress", "topK": 10, "filter": tag_filter})
    assert set(hit_ids(result, "searchByText")) == {"p1", "p3", "p6"}
    both = {"tags": [{"key": "colour", "values": ["Black"]}, {"key": "type", "values": ["Dress"]}]}
    result = await api.gql(PAGE, {"text": "summer dress", "topK": 10, "filter": both})
    assert hit_ids(result, "searchByText") == ["p3"]


async def test_filter_with_a_key_twice_or_no_values_is_bad_input(api: Api) -> None:
    twice = {"tags": [{"key": "colour", "values": ["Black"]}, {"key": "colour", "values": ["Red"]}]}
    result = await api.gql(PAGE, {"text": "dress", "topK": 3, "filter": twice})
    assert codes(result) == ["BAD_USER_INPUT"]
    empty = {"tags": [{"key": "colour", "values": []}]}
    result = await api.gql(PAGE, {"text": "dress", "topK": 3, "filter": empty})
    assert codes(result) == ["BAD_USER_INPUT"]


async def test_cursor_pagination_walks_the_ranking_once(api: Api) -> None:
    seen: list[str] = []
    ranks: list[int] = []
    after = None
    for _ in range(10):
        result = await api.gql(PAGE, {"text": "black dress", "topK": 2, "after": after})
        page = result["data"]["searchByText"]
        seen += [h["product"]["id"] for h in page["hits"]]
        ranks += [h["rank"] for h in page["hits"]]
        after = page["nextCursor"]
        if after is None:
            break
    assert sorted(seen) == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert ranks == [1, 2, 3, 4, 5, 6]


async def test_an_invalid_cursor_is_bad_input(api: Api) -> None:
    result = await api.gql(PAGE, {"text": "dress", "topK": 2, "after": "not-a-cursor"})
    assert codes(result) == ["BAD_USER_INPUT"]
    assert result["data"] is None


async def test_unknown_encoder_is_not_found_and_other_encoders_are_separate(api: Api) -> None:
    result = await api.gql(PAGE, {"text": "dress", "topK": 2, "encoder": "nope"})
    assert codes(result) == ["NOT_FOUND"]
    # an encoder the server has but nothing is indexed with has nothing to find: it is not
    # loaded on a client's word (an id can name a model file on the server)
    result = await api.gql(PAGE, {"text": "dress", "topK": 2, "encoder": "other"})
    assert codes(result) == ["NOT_FOUND"]
    assert "no products are indexed with encoder 'other'" in errors_of(result)[0]["message"]
    await api.world.products.add("o1", "red dress", fake_image("red dress"), encoder_ids=["other"])
    result = await api.gql(PAGE, {"text": "dress", "topK": 2, "encoder": "other"})
    page = result["data"]["searchByText"]
    assert (page["encoder"], [h["product"]["id"] for h in page["hits"]]) == ("other", ["o1"])


async def _add_real_image_product(world: World, pid: str, data: bytes) -> None:
    await world.products.add(
        pid, f"photo {pid}", data, tags={"type": "Photo"}, encoder_ids=["fake"]
    )


async def test_search_by_image_base64_finds_the_product_with_that_image(api: Api) -> None:
    photo = png((10, 200, 10))
    await _add_real_image_product(api.world, "photo", photo)
    result = await api.gql(IMAGE, {"image": {"base64": b64(photo)}, "topK": 3})
    assert "errors" not in result, result
    hits = result["data"]["searchByImage"]["hits"]
    assert hits[0]["product"]["id"] == "photo"
    assert hits[0]["score"] > 0.999


MODE_OF_IMAGE = """
query($image: ImageInput!, $text: String, $mode: SearchMode!) {
  searchByImage(image: $image, text: $text, mode: $mode) { mode hits { product { id } } }
}
"""


async def test_search_by_image_answers_in_the_mode_asked_or_says_why_not(api: Api) -> None:
    photo = png((10, 200, 10))
    await _add_real_image_product(api.world, "photo", photo)
    alone = {"image": {"base64": b64(photo)}}
    for mode in ("HYBRID", "VISUAL"):
        result = await api.gql(MODE_OF_IMAGE, {**alone, "mode": mode})
        assert result["data"]["searchByImage"]["mode"] == mode
    # TEXT ranks by the words only: a photo without words cannot be searched so, and the
    # refusal comes before the URL is fetched
    url = {"image": {"url": "https://shop.example/photo.png"}, "mode": "TEXT"}
    for variables in ({**alone, "mode": "TEXT"}, url):
        result = await api.gql(MODE_OF_IMAGE, variables)
        assert codes(result) == ["BAD_USER_INPUT"]
        assert "TEXT" in errors_of(result)[0]["message"]
    assert api.world.fetcher.requested == []  # type: ignore[attr-defined]
    steered = await api.gql(MODE_OF_IMAGE, {**alone, "text": "dress", "mode": "TEXT"})
    assert steered["data"]["searchByImage"]["mode"] == "TEXT"


async def test_search_by_image_accepts_a_data_url(api: Api) -> None:
    photo = webp()
    await _add_real_image_product(api.world, "photo", photo)
    result = await api.gql(IMAGE, {"image": {"base64": "data:image/webp;base64," + b64(photo)}})
    assert hit_ids(result, "searchByImage")[0] == "photo"


async def test_search_by_image_upload_follows_the_multipart_spec(api: Api) -> None:
    photo = png((1, 2, 3))
    await _add_real_image_product(api.world, "photo", photo)
    response = await api.gql_upload(
        IMAGE,
        {"image": {"upload": None}, "topK": 2},
        {"image.upload": ("query.png", photo, "application/octet-stream")},
    )
    assert response.status_code == 200
    assert hit_ids(response.json(), "searchByImage")[0] == "photo"


async def test_search_by_image_url_goes_through_the_fetcher(api: Api) -> None:
    photo = png((9, 9, 250))
    await _add_real_image_product(api.world, "photo", photo)
    api.world.fetcher.responses["https://img.example/q.png"] = photo  # type: ignore[attr-defined]
    result = await api.gql(IMAGE, {"image": {"url": "https://img.example/q.png"}})
    assert hit_ids(result, "searchByImage")[0] == "photo"
    assert api.world.fetcher.requested == ["https://img.example/q.png"]  # type: ignore[attr-defined]


async def test_the_text_modifier_steers_an_image_search(api: Api) -> None:
    photo = png((120, 120, 0))
    await _add_real_image_product(api.world, "photo", photo)
    image = {"base64": b64(photo)}
    plain = await api.gql(IMAGE, {"image": image, "text": "red summer dress", "textWeight": 0.0})
    assert hit_ids(plain, "searchByImage")[0] == "photo"
    steered = await api.gql(IMAGE, {"image": image, "text": "red summer dress", "textWeight": 0.9})
    assert hit_ids(steered, "searchByImage")[0] == "p2"
    bad = await api.gql(IMAGE, {"image": image, "text": "red", "textWeight": 1.5})
    assert codes(bad) == ["BAD_USER_INPUT"]


async def test_image_input_needs_exactly_one_source(api: Api) -> None:
    none = await api.gql(IMAGE, {"image": {}})
    assert codes(none) == ["BAD_USER_INPUT"]
    two = await api.gql(IMAGE, {"image": {"url": "https://x.example/a.png", "base64": b64(png())}})
    assert codes(two) == ["BAD_USER_INPUT"]
    assert "exactly one" in none["errors"][0]["message"]


async def test_similar_products_excludes_the_product_itself(api: Api) -> None:
    query = """query($id: ID!, $topK: Int!, $filter: ProductFilter) {
      similarProducts(productId: $id, topK: $topK, filter: $filter) {
        hits { rank product { id } } } }"""
    result = await api.gql(query, {"id": "p4", "topK": 2})
    ids = hit_ids(result, "similarProducts")
    assert "p4" not in ids
    assert ids[0] == "p5"
    shoes = {"tags": [{"key": "type", "values": ["Dress"]}]}
    result = await api.gql(query, {"id": "p2", "topK": 5, "filter": shoes})
    assert hit_ids(result, "similarProducts") == ["p3"]
    missing = await api.gql(query, {"id": "nope", "topK": 2})
    assert codes(missing) == ["NOT_FOUND"]


async def test_similar_products_pages_with_the_cursor_it_hands_out(api: Api) -> None:
    """A page of similarProducts with a nextCursor can be followed by passing it as `after`:
    the pages walk the ranking once (the product itself left out), like every search."""
    query = """query($id: ID!, $topK: Int!, $after: String) {
      similarProducts(productId: $id, topK: $topK, after: $after) {
        nextCursor hits { rank product { id } } } }"""
    whole = await api.gql(query, {"id": "p4", "topK": 10})
    assert whole["data"]["similarProducts"]["nextCursor"] is None
    expected = hit_ids(whole, "similarProducts")
    seen: list[str] = []
    ranks: list[int] = []
    after = None
    for _ in range(10):
        result = await api.gql(query, {"id": "p4", "topK": 2, "after": after})
        assert "errors" not in result, result
        page = result["data"]["similarProducts"]
        seen += [h["product"]["id"] for h in page["hits"]]
        ranks += [h["rank"] for h in page["hits"]]
        after = page["nextCursor"]
        if after is None:
            break
    assert seen == expected
    assert len(seen) == len(PRODUCTS) - 1
    assert ranks == list(range(1, len(PRODUCTS)))


async def test_product_by_id_and_null_when_missing(api: Api) -> None:
    query = """query($id: ID!) { product(id: $id) { id name description imageUrl tags { key value } } }"""
    result = await api.gql(query, {"id": "p2"})
    product = result["data"]["product"]
    assert product["name"] == "red summer dress"
    assert product["description"] == "red summer dress."
    assert sorted((t["key"], t["value"]) for t in product["tags"]) == [
        ("colour", "Red"),
        ("type", "Dress"),
    ]
    assert product["imageUrl"].startswith("http://testserver/images/p2-")
    missing = await api.gql(query, {"id": "nope"})
    assert missing == {"data": {"product": None}}


async def test_products_pages_in_id_order_with_a_total(api: Api) -> None:
    query = """query($first: Int!, $after: String, $filter: ProductFilter) {
      products(first: $first, after: $after, filter: $filter) {
        items { id } nextCursor totalCount } }"""
    ids: list[str] = []
    after = None
    for _ in range(5):
        page = (await api.gql(query, {"first": 4, "after": after}))["data"]["products"]
        assert page["totalCount"] == 6
        ids += [p["id"] for p in page["items"]]
        after = page["nextCursor"]
        if after is None:
            break
    assert ids == ["p1", "p2", "p3", "p4", "p5", "p6"]
    shoes = {"tags": [{"key": "type", "values": ["Shoes"]}]}
    page = (await api.gql(query, {"first": 10, "filter": shoes}))["data"]["products"]
    assert page == {"items": [{"id": "p4"}, {"id": "p5"}], "nextCursor": None, "totalCount": 2}


async def test_products_first_out_of_range_is_bad_input(api: Api) -> None:
    query = "query($first: Int!) { products(first: $first) { items { id } } }"
    for first in (0, 101):
        assert codes(await api.gql(query, {"first": first})) == ["BAD_USER_INPUT"]


async def test_total_count_costs_nothing_unless_asked(api: Api) -> None:
    calls = 0
    original = api.world.catalog.count

    async def counting(filter: Any = None) -> int:
        nonlocal calls
        calls += 1
        return await original(filter)

    api.world.catalog.count = counting  # type: ignore[method-assign]
    await api.gql("{ products(first: 2) { items { id } } }")
    assert calls == 0
    await api.gql("{ products(first: 2) { totalCount } }")
    assert calls == 1


async def test_facets_count_values_most_frequent_first(api: Api) -> None:
    query = """query($keys: [String!], $filter: ProductFilter) {
      facets(keys: $keys, filter: $filter) { key values { value count } } }"""
    result = await api.gql(query, {"keys": ["type", "colour"]})
    facets = result["data"]["facets"]
    assert [f["key"] for f in facets] == ["type", "colour"]
    assert facets[1]["values"] == [
        {"value": "Black", "count": 2},
        {"value": "White", "count": 2},
        {"value": "Blue", "count": 1},
        {"value": "Red", "count": 1},
    ]
    dresses = {"tags": [{"key": "type", "values": ["Dress"]}]}
    result = await api.gql(query, {"keys": ["colour"], "filter": dresses})
    assert result["data"]["facets"] == [
        {"key": "colour", "values": [{"value": "Black", "count": 1}, {"value": "Red", "count": 1}]}
    ]
    every = await api.gql("{ facets { key } }")
    assert [f["key"] for f in every["data"]["facets"]] == ["colour", "type"]


async def test_facet_keys_are_read_like_filter_keys(api: Api) -> None:
    """A filter's key is trimmed (" colour" filters on colour): so is a facet's, on the
    catalog's facets and on a search page's, and the facet answers under the key it has."""
    query = """query($keys: [String!]) {
      facets(keys: $keys) { key values { value count } }
      searchByText(text: "dress", topK: 2) { facets(keys: $keys) { key } } }"""
    result = await api.gql(query, {"keys": [" colour", "type "]})
    assert [f["key"] for f in result["data"]["facets"]] == ["colour", "type"]
    assert [f["key"] for f in result["data"]["searchByText"]["facets"]] == ["colour", "type"]
    filtered = await api.gql(
        '{ products(filter: {tags: [{key: " colour", values: ["Red"]}]}) { totalCount } }'
    )
    assert filtered["data"]["products"]["totalCount"] == 1


async def test_encoders_list_the_default_first_with_indexed_counts(api: Api) -> None:
    result = await api.gql("{ encoders { id dim modalities isDefault indexedCount } }")
    assert result["data"]["encoders"] == [
        {
            "id": "fake",
            "dim": 64,
            "modalities": ["image", "text"],
            "isDefault": True,
            "indexedCount": 6,
        },
        {
            "id": "other",
            "dim": 32,
            "modalities": ["image", "text"],
            "isDefault": False,
            "indexedCount": 0,
        },
    ]


async def test_a_page_of_hits_is_one_catalog_round_trip(api: Api) -> None:
    api.world.catalog.get_many_calls = 0
    result = await api.gql(PAGE, {"text": "black", "topK": 6})
    assert len(result["data"]["searchByText"]["hits"]) == 6
    assert api.world.catalog.get_many_calls == 1


async def test_product_lookups_in_one_request_are_batched(api: Api) -> None:
    api.world.catalog.get_many_calls = 0
    query = """{ a: product(id: "p1") { id } b: product(id: "p2") { name }
                 c: product(id: "p3") { id } d: product(id: "zz") { id } }"""
    result = await api.gql(query)
    assert result["data"] == {
        "a": {"id": "p1"},
        "b": {"name": "red summer dress"},
        "c": {"id": "p3"},
        "d": None,
    }
    assert api.world.catalog.get_many_calls == 1


async def test_the_loader_is_per_request(api: Api) -> None:
    api.world.catalog.get_many_calls = 0
    await api.gql('{ product(id: "p1") { id } }')
    await api.gql('{ product(id: "p1") { id } }')
    assert api.world.catalog.get_many_calls == 2


async def test_products_seen_in_a_search_are_not_loaded_again(api: Api) -> None:
    api.world.catalog.get_many_calls = 0
    query = """{ searchByText(text: "red summer dress", topK: 3) { hits { product { id } } }
                 product(id: "p2") { name } }"""
    result = await api.gql(query)
    assert result["data"]["product"] == {"name": "red summer dress"}
    # Fields resolve concurrently: the search's page is one call, the lookup at most one more.
    assert api.world.catalog.get_many_calls <= 2


async def test_fake_images_are_what_the_seeded_catalog_uses() -> None:
    # Guard for the fixtures above: seeded products are indexed by their words.
    world = World()
    await world.seed()
    assert world.images.objects[world.catalog.products["p1"].image_keys[0]][0] == fake_image(
        "black slim trousers"
    )
