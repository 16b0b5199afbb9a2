"""The legacy REST shims, exactly as the original clients call them."""

from __future__ import annotations

import base64

import jsonschema

from tests.api.helpers import Api, World, make_api, png

ITEM_KEYS = {"id", "name", "image_url", "score", "tags"}


async def test_get_image_by_text_returns_the_closest_product(api: Api) -> None:
    response = await api.client.post("/get_image_by_text", json={"text": "red summer dress"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == ITEM_KEYS | {"match_quality"}
    assert body["match_quality"] in {"strong", "weak", "none"}
    assert body["id"] == "p2"
    assert body["name"] == "red summer dress"
    assert body["tags"] == {"type": "Dress", "colour": "Red"}
    assert 0 < body["score"] <= 1.0001
    key = api.world.catalog.products["p2"].image_keys[0]
    assert body["image_url"] == f"http://testserver/images/{key}"
    image = await api.client.get(body["image_url"])
    assert image.status_code == 200


async def test_get_image_by_text_input_errors(api: Api) -> None:
    missing = await api.client.post("/get_image_by_text", json={})
    assert missing.status_code == 422
    assert missing.json()["code"] == "BAD_USER_INPUT"
    assert "text" in missing.json()["detail"]
    wrong_type = await api.client.post("/get_image_by_text", json={"text": 5})
    assert wrong_type.status_code == 422
    empty = await api.client.post("/get_image_by_text", json={"text": "  "})
    assert empty.status_code == 400
    assert empty.json() == {"detail": "the search text is empty", "code": "BAD_USER_INPUT"}
    not_json = await api.client.post(
        "/get_image_by_text", content=b"text=dress", headers={"content-type": "text/plain"}
    )
    assert not_json.status_code == 422
    broken = await api.client.post(
        "/get_image_by_text", content=b'{"text": "dre', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422
    assert broken.json() == {"detail": "the body is not valid JSON", "code": "BAD_USER_INPUT"}


async def test_get_image_by_text_on_an_empty_catalog_is_not_found() -> None:
    world = World()
    api = await make_api(world)
    for pid in list(world.catalog.products):
        await world.products.delete(pid)
    async with api.client:
        response = await api.client.post("/get_image_by_text", json={"text": "dress"})
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"


async def _with_photo(api: Api) -> bytes:
    photo = png((77, 1, 200))
    await api.world.products.add(
        "photo", "photo", photo, tags={"type": "Photo"}, encoder_ids=["fake"]
    )
    return photo


def assert_three_results(body: dict[str, object], first_id: str) -> None:
    assert set(body) == {"results", "match_quality"}
    assert body["match_quality"] == "strong"  # the photo itself is in the catalog
    results = body["results"]
    assert isinstance(results, list)
    assert len(results) == 3
    for item in results:
        assert set(item) == ITEM_KEYS
        assert item["image_url"].startswith("http://testserver/images/")
    assert results[0]["id"] == first_id
    scores = [item["score"] for item in results]
    assert scores == sorted(scores, reverse=True)


async def test_get_similar_images_with_a_multipart_file(api: Api) -> None:
    photo = await _with_photo(api)
    response = await api.client.post(
        "/get_similar_images", files={"file": ("query.png", photo, "image/png")}
    )
    assert response.status_code == 200, response.text
    assert_three_results(response.json(), "photo")


async def test_get_similar_images_with_a_url(api: Api) -> None:
    photo = await _with_photo(api)
    api.world.fetcher.responses["https://img.example/q.png"] = photo  # type: ignore[attr-defined]
    response = await api.client.post(
        "/get_similar_images", json={"url": "https://img.example/q.png"}
    )
    assert response.status_code == 200, response.text
    assert_three_results(response.json(), "photo")


async def test_get_similar_images_with_base64(api: Api) -> None:
    photo = await _with_photo(api)
    response = await api.client.post(
        "/get_similar_images", json={"image_base64": base64.b64encode(photo).decode()}
    )
    assert response.status_code == 200, response.text
    assert_three_results(response.json(), "photo")


async def test_get_similar_images_request_shape_errors(api: Api) -> None:
    photo = await _with_photo(api)
    encoded = base64.b64encode(photo).decode()
    both = await api.client.post(
        "/get_similar_images", json={"url": "https://x.example/a.png", "image_base64": encoded}
    )
    assert both.status_code == 400
    assert both.json()["code"] == "BAD_USER_INPUT"
    neither = await api.client.post("/get_similar_images", json={"text": "dress"})
    assert neither.status_code == 400
    not_a_string = await api.client.post("/get_similar_images", json={"url": 5})
    assert not_a_string.status_code == 400
    a_list = await api.client.post("/get_similar_images", json=[encoded])
    assert a_list.status_code == 400
    broken_json = await api.client.post(
        "/get_similar_images", content=b"{", headers={"content-type": "application/json"}
    )
    assert broken_json.status_code == 400
    wrong_field = await api.client.post(
        "/get_similar_images", files={"image": ("q.png", photo, "image/png")}
    )
    assert wrong_field.status_code == 400
    assert "file" in wrong_field.json()["detail"]
    plain = await api.client.post(
        "/get_similar_images", content=photo, headers={"content-type": "image/png"}
    )
    assert plain.status_code == 415
    assert plain.json()["code"] == "BAD_USER_INPUT"


async def test_openapi_documents_the_shims_with_examples(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    by_text = spec["paths"]["/get_image_by_text"]["post"]
    body_schema = by_text["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["$ref"].endswith("/TextSearchRequest")
    assert spec["components"]["schemas"]["TextSearchRequest"]["examples"] == [
        {"text": "white sneakers"}
    ]
    assert spec["components"]["schemas"]["ProductResult"]["examples"][0]["id"]
    similar = spec["paths"]["/get_similar_images"]["post"]
    content = similar["requestBody"]["content"]
    assert "file" in content["multipart/form-data"]["schema"]["properties"]
    assert set(content["application/json"]["examples"]) == {"url", "base64"}
    assert similar["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SimilarImagesResponse"
    )
    assert {"400", "413", "415", "503"} <= set(similar["responses"])
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_openapi_examples_have_the_shape_of_their_schemas(api: Api) -> None:
    """Every example /docs shows validates against the schema it illustrates, with no keys
    the answer does not have (a client copying an example sees what the shim sends)."""
    spec = (await api.client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    checked = 0
    for name, schema in schemas.items():
        closed = {**schema, "additionalProperties": False, "components": spec["components"]}
        closed["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        resolver = jsonschema.validators.Draft202012Validator(closed)
        for example in schema.get("examples", []):
            errors = [e.message for e in resolver.iter_errors(example)]
            assert errors == [], f"{name}: {errors}"
            checked += 1
    assert checked >= 3
    assert "match_quality" not in schemas["ProductResult"]["properties"]
