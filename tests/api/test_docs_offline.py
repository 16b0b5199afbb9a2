"""GraphiQL (/graphql) and Swagger UI (/docs) name only this app's own files, and those files
are the vendored npm copies whose hashes the pages (and api/static/vendor/README.md) carry.
The browser half (nothing requested from another host, the pages render) is in
tests/e2e/test_ui_browser.py."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from api.docs_ui import GRAPHIQL_ASSETS, STATIC_DIR
from tests.api.helpers import Api

ASSET_REF = re.compile(r'(?:src|href)="([^"]+)"')
INTEGRITY = re.compile(r'(?:src|href)="([^"]+)"\s+integrity="sha384-([^"]+)"')
HTML = {"accept": "text/html"}


def sha384(data: bytes) -> str:
    return base64.b64encode(hashlib.sha384(data).digest()).decode("ascii")


def external(refs: list[str]) -> list[str]:
    return [ref for ref in refs if ref.startswith(("http://", "https://", "//"))]


async def test_graphiql_loads_only_vendored_files_with_their_integrity_hashes(api: Api) -> None:
    page = await api.client.get("/graphql", headers=HTML)
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
    refs = ASSET_REF.findall(page.text)
    assert external(refs) == []
    checked = INTEGRITY.findall(re.sub(r"\s*crossorigin\s*", " ", page.text))
    assert len(checked) == len(GRAPHIQL_ASSETS)
    for url, expected in checked:
        asset = await api.client.get(url)
        assert asset.status_code == 200, url
        assert sha384(asset.content) == expected, url


async def test_swagger_ui_loads_only_vendored_files(api: Api) -> None:
    page = await api.client.get("/docs")
    assert page.status_code == 200
    refs = [ref for ref in ASSET_REF.findall(page.text) if not ref.startswith("data:")]
    assert "cdn.jsdelivr.net" not in page.text
    assert external(refs) == []
    assert len(refs) >= 2  # the bundle and its stylesheet (plus the favicon)
    for url in refs:
        asset = await api.client.get(url)
        assert asset.status_code == 200, url
        assert asset.content == (STATIC_DIR / url.removeprefix("/static/")).read_bytes()


@pytest.mark.parametrize(
    "path", ["/static/vendor/../../config.py", "/static/vendor/missing.js", "/static/"]
)
async def test_static_serves_nothing_outside_the_vendored_files(api: Api, path: str) -> None:
    response = await api.client.get(path)
    assert response.status_code == 404


def test_every_vendored_asset_has_its_licence_beside_it() -> None:
    vendored = {path.parent for path in (STATIC_DIR / "vendor").glob("*/*")}
    assert vendored
    for folder in vendored:
        assert (folder / "LICENSE").is_file(), folder
