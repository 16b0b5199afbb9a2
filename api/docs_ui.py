"""GraphiQL (/graphql in a browser) and Swagger UI (/docs) served from this app's own files,
so both work without internet: behind a firewall, on a plane, in CI.

The JavaScript and CSS are the npm packages' published files, vendored unchanged under
api/static/vendor/ (versions, hashes and licences in its README.md). Strawberry's GraphiQL page
names the same files on unpkg.com with subresource-integrity hashes; we point those tags at
our copies and keep the hashes, so the browser itself checks they are byte-identical."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from strawberry.http.ides import get_graphql_ide_html

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/static"
VENDOR_PATH = f"{STATIC_PATH}/vendor"

GRAPHIQL_ASSETS = {
    "https://unpkg.com/react@18.2.0/umd/react.production.min.js": "react/react.production.min.js",
    "https://unpkg.com/react-dom@18.2.0/umd/react-dom.production.min.js": (
        "react-dom/react-dom.production.min.js"
    ),
    "https://unpkg.com/js-cookie@3.0.5/dist/js.cookie.min.js": "js-cookie/js.cookie.min.js",
    "https://unpkg.com/graphiql@3.8.3/graphiql.min.css": "graphiql/graphiql.min.css",
    "https://unpkg.com/graphiql@3.8.3/graphiql.min.js": "graphiql/graphiql.min.js",
    "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/style.css": (
        "graphiql-plugin-explorer/style.css"
    ),
    "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/index.umd.js": (
        "graphiql-plugin-explorer/index.umd.js"
    ),
}
"""Strawberry's CDN URL -> our vendored copy (relative to VENDOR_PATH)."""

SWAGGER_JS = f"{VENDOR_PATH}/swagger-ui-dist/swagger-ui-bundle.js"
SWAGGER_CSS = f"{VENDOR_PATH}/swagger-ui-dist/swagger-ui.css"
SWAGGER_FAVICON = f"{VENDOR_PATH}/swagger-ui-dist/favicon-32x32.png"


class UnvendoredAsset(RuntimeError):
    """Strawberry's GraphiQL page names a CDN file we have no copy of (a Strawberry upgrade
    changed its pinned versions): vendor the new files rather than serve a page that needs
    the internet."""


def offline_graphiql_html() -> str:
    """Strawberry's GraphiQL page with every CDN URL replaced by our vendored copy."""
    html = get_graphql_ide_html("graphiql")
    for cdn_url, local in GRAPHIQL_ASSETS.items():
        html = html.replace(cdn_url, f"{VENDOR_PATH}/{local}")
    leftover = [part.split('"')[0] for part in html.split('"https://unpkg.com/')[1:]]
    if leftover:
        raise UnvendoredAsset(f"GraphiQL still loads from unpkg.com: {leftover}")
    return html


def docs_router(title: str, openapi_url: str) -> APIRouter:
    """/docs: FastAPI's Swagger UI page on the vendored swagger-ui-dist."""
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=SWAGGER_JS,
            swagger_css_url=SWAGGER_CSS,
            swagger_favicon_url=SWAGGER_FAVICON,
        )

    return router


def mount_static(app: FastAPI) -> None:
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
