"""GET /docs: Swagger UI over the OpenAPI document, served from the package, never a CDN.

FastAPI's own /docs page loads Swagger UI from a CDN, which a self-hosted server on a closed
network cannot reach; the swagger-ui-bundle-v2 wheel ships the same files (Swagger UI 5, which
reads the OpenAPI 3.1 documents FastAPI writes), and they are served here under /docs/assets.
The document itself (server/openapi.py) holds request examples that run on the demo model.
"""

from __future__ import annotations

from functools import cache
from types import MappingProxyType

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from swagger_ui_bundle import swagger_ui_path

DOCS_ROUTE = "/docs"
ASSETS_ROUTE = DOCS_ROUTE + "/assets"
# The Swagger UI files the page uses, with their media types: nothing else is served.
ASSETS: MappingProxyType[str, str] = MappingProxyType(
    {
        "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
        "swagger-ui.css": "text/css; charset=utf-8",
        "favicon-32x32.png": "image/png",
    }
)
# validatorUrl None: Swagger UI would otherwise fetch a validity badge from swagger.io.
SWAGGER_PARAMETERS = {"validatorUrl": None, "tryItOutEnabled": True, "displayRequestDuration": True}


@cache
def _asset(name: str) -> bytes:
    """A Swagger UI file (read once: the bundle is 1.5 MB)."""
    return (swagger_ui_path / name).read_bytes()


def install_docs(app: FastAPI) -> None:
    """Serve the Swagger UI page and its assets (the app is built with docs_url=None)."""

    @app.get(DOCS_ROUTE, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: PICPIK and Runware HTTP APIs",
            swagger_js_url=f"{ASSETS_ROUTE}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_ROUTE}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_ROUTE}/favicon-32x32.png",
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )

    @app.get(ASSETS_ROUTE + "/{name}", include_in_schema=False, response_model=None)
    async def docs_asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(
            _asset(name),
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=86400"},
        )
