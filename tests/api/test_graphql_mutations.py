"""addProduct and deleteProduct: API-key protected, uploads per the multipart request spec."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import UpstreamUnavailable
from tests.api.helpers import API_KEY, Api, codes, jpeg, make_api, png

ADD = """mutation($input: AddProductInput!, $image: Upload!) {
  addProduct(input: $input, image: $image) { id name description imageUrl tags { key value } }
}"""
DELETE = "mutation($id: ID!) { deleteProduct(id: $id) }"
NEW = {
    "id": "n1",
    "name": "green wool coat",
    "description": "Warm.",
    "tags": [{"key": "type", "value": "Coat"}, {"key": "colour", "value": "Green"}],
}


async def add(api: Api, data: bytes, headers: dict[str, str] | None = None, **input: Any) -> Any:
    response = await api.gql_upload(
        ADD,
        {"input": {**NEW, **input}, "image": None},
        {"image": ("coat.jpg", data, "image/jpeg")},
        headers={"X-API-Key": API_KEY} if headers is None else headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_add_product_stores_indexes_and_serves_its_image(api: Api) -> None:
    photo = jpeg()
    result = await add(api, photo)
    assert "errors" not in result, result
    product = result["data"]["addProduct"]
    assert product["id"] == "n1"
    assert product["name"] == "green wool coat"
    assert product["description"] == "Warm."
    assert sorted((t["key"], t["value"]) for t in product["tags"]) == [
        ("colour", "Green"),
        ("type", "Coat"),
    ]
    assert product["imageUrl"].startswith("http://testserver/images/n1-")
    assert product["imageUrl"].endswith(".jpg")

    image = await api.client.get(product["imageUrl"])
    assert image.status_code == 200
    assert image.content == photo
    assert image.headers["content-type"] == "image/jpeg"

    fetched = await api.gql('{ product(id: "n1") { name } }')
    assert fetched["data"]["product"] == {"name": "green wool coat"}
    query = "query($b: String!) { searchByImage(image: {base64: $b}, topK: 1) { hits { product { id } } } }"
    import base64

    found = await api.gql(query, {"b": base64.b64encode(photo).decode()})
    assert found["data"]["searchByImage"]["hits"][0]["product"]["id"] == "n1"


async def test_add_product_replaces_a_product_with_the_same_id(api: Api) -> None:
    await add(api, jpeg())
    result = await add(api, png(), name="green coat, new photo", tags=[])
    assert result["data"]["addProduct"]["name"] == "green coat, new photo"
    assert result["data"]["addProduct"]["imageUrl"].endswith(".png")
    assert api.world.catalog.products["n1"].tags == {}


@pytest.mark.parametrize(
    "headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}, {"X-API-Key": ""}]
)
async def test_mutations_need_a_valid_api_key(api: Api, headers: dict[str, str]) -> None:
    result = await add(api, jpeg(), headers=headers)
    assert codes(result) == ["UNAUTHENTICATED"]
    assert result["data"] is None
    assert "n1" not in api.world.catalog.products
    deleted = await api.gql(DELETE, {"id": "p1"}, headers=headers)
    assert codes(deleted) == ["UNAUTHENTICATED"]
    assert "p1" in api.world.catalog.products


async def test_any_configured_key_works() -> None:
    api = await make_api(api_keys=("first-key", "second-key"))
    async with api.client:
        result = await api.gql(DELETE, {"id": "p1"}, headers={"X-API-Key": "second-key"})
    assert result == {"data": {"deleteProduct": True}}


async def test_without_configured_keys_mutations_are_disabled() -> None:
    api = await make_api(api_keys=())
    async with api.client:
        for key in ("", "anything"):
            result = await api.gql(DELETE, {"id": "p1"}, headers={"X-API-Key": key})
            assert codes(result) == ["UNAUTHENTICATED"]
            assert "disabled" in result["errors"][0]["message"]
    assert "p1" in api.world.catalog.products


async def test_delete_product_removes_it_everywhere(api: Api) -> None:
    key = api.world.catalog.products["p2"].image_keys[0]
    result = await api.gql(DELETE, {"id": "p2"}, headers={"X-API-Key": API_KEY})
    assert result == {"data": {"deleteProduct": True}}
    assert (await api.gql('{ product(id: "p2") { id } }'))["data"]["product"] is None
    assert key not in api.world.images.objects
    assert await api.world.index.count("fake") == 5
    again = await api.gql(DELETE, {"id": "p2"}, headers={"X-API-Key": API_KEY})
    assert again == {"data": {"deleteProduct": False}}


async def test_add_product_rejects_non_images_and_writes_nothing(api: Api) -> None:
    result = await add(api, b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert codes(result) == ["BAD_USER_INPUT"]
    assert "n1" not in api.world.catalog.products
    assert await api.world.index.count("fake") == 6


async def test_add_product_rejects_oversize_uploads() -> None:
    api = await make_api(max_image_bytes=20_000, max_body_bytes=1_000_000)
    photo = png(size=(400, 400)) + b"\x00" * 20_000
    async with api.client:
        result = await add(api, photo)
    assert codes(result) == ["PAYLOAD_TOO_LARGE"]
    assert "n1" not in api.world.catalog.products


async def test_add_product_validates_its_input(api: Api) -> None:
    assert codes(await add(api, jpeg(), name="  ")) == ["BAD_USER_INPUT"]
    twice = [{"key": "type", "value": "Coat"}, {"key": "type", "value": "Jacket"}]
    assert codes(await add(api, jpeg(), tags=twice)) == ["BAD_USER_INPUT"]
    assert codes(await add(api, jpeg(), id=" ")) == ["BAD_USER_INPUT"]


async def test_upload_must_be_a_file(api: Api) -> None:
    result = await api.gql(
        ADD, {"input": NEW, "image": "not a file"}, headers={"X-API-Key": API_KEY}
    )
    assert codes(result) == ["BAD_USER_INPUT"]


async def test_replacing_a_photo_deletes_the_old_image(api: Api) -> None:
    await add(api, jpeg())
    await add(api, png())
    keys = api.world.catalog.products["n1"].image_keys
    assert [k for k in api.world.images.objects if k.startswith("n1-")] == list(keys)


async def test_add_failing_at_the_catalog_write_leaves_nothing_and_says_so(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: object) -> None:
        raise UpstreamUnavailable("MongoDB (MONGODB_URI=...) did not answer within 5s")

    images_before = dict(api.world.images.objects)
    monkeypatch.setattr(api.world.catalog, "upsert_many", down)
    result = await add(api, jpeg())
    assert codes(result) == ["UPSTREAM_UNAVAILABLE"]
    assert "did not answer" in result["errors"][0]["message"]
    assert api.world.images.objects == images_before
    assert await api.world.index.fetch("fake", ["n1"]) == {}
    assert "n1" not in api.world.catalog.ledger.get("fake", {})


async def test_delete_with_the_image_store_down_keeps_the_product_and_says_retry(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: object) -> None:
        raise UpstreamUnavailable("S3 (S3_BUCKET=shop) did not answer within 5s")

    monkeypatch.setattr(api.world.images, "delete", down)
    headers = {"X-API-Key": API_KEY}
    result = await api.gql(DELETE, {"id": "p1"}, headers=headers)
    assert codes(result) == ["UPSTREAM_UNAVAILABLE"]
    assert "retry deleteProduct" in result["errors"][0]["message"]
    assert "p1" in api.world.catalog.products
    assert "p1" in await api.world.index.fetch("fake", ["p1"])
    monkeypatch.undo()
    again = await api.gql(DELETE, {"id": "p1"}, headers=headers)
    assert again["data"]["deleteProduct"] is True
    assert "p1" not in api.world.catalog.products
