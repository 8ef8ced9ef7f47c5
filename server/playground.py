"""The playground page: GET / (the HTML) and GET /playground/{file} (its script and style).

A plain HTML/JS page shipped inside the package (server/playground/, package data), so it works
offline with no build step. It only talks to the public APIs clients use (the Runware WebSocket,
PICPIK `POST /`, GET /engine/events), so it needs no route of its own beyond serving its files.
PICPIK keeps `POST /`: this router adds GET and HEAD on the same path and nothing else.

Only the files named in ASSETS are served, whatever the path says: there is no directory
listing and no way to reach another file of the package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

PAGE = "index.html"
ASSETS_ROUTE = "/playground"
# File name -> media type: the files the page is made of, nothing else is served.
ASSETS: Mapping[str, str] = MappingProxyType(
    {
        PAGE: "text/html; charset=utf-8",
        "app.js": "text/javascript; charset=utf-8",
        "style.css": "text/css; charset=utf-8",
    }
)
# The page loads nothing from elsewhere; result images may come from the server's public URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src * data: blob:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# Revalidate every time (cheap with the ETag): after an upgrade the page and its script must
# not come from two versions.
CACHE_CONTROL = "no-cache"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def load_asset(name: str) -> Asset:
    """A playground file read from the package (works from a wheel as from a checkout)."""
    body = resources.files("server").joinpath("playground", name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, ASSETS[name], etag)


def _serve(name: str, request: Request) -> Response:
    asset = load_asset(name)
    headers = {
        "Cache-Control": CACHE_CONTROL,
        "ETag": asset.etag,
        "X-Content-Type-Options": "nosniff",
    }
    if name == PAGE:
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def playground_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.api_route("/", methods=["GET", "HEAD"])
    async def playground_page(request: Request) -> Response:
        return _serve(PAGE, request)

    @router.api_route(ASSETS_ROUTE + "/{file_name}", methods=["GET", "HEAD"])
    async def playground_asset(file_name: str, request: Request) -> Response:
        if file_name not in ASSETS:
            return JSONResponse({"error": "not found"}, status_code=404)
        return _serve(file_name, request)

    return router
