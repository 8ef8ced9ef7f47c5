"""The playground's routes: GET / serves the page, /playground/{file} its files, and nothing
else changes for API clients (PICPIK keeps POST /)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from server.playground import ASSETS, CONTENT_SECURITY_POLICY


@pytest.fixture(scope="module")
def client(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from tests.conftest import demo_app

    with TestClient(demo_app(demo_dir, tmp_path_factory.mktemp("data"))) as started:
        yield started


def test_page_is_served_at_the_root(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page = response.text
    assert "<title>easel playground</title>" in page
    # Relative asset URLs: the page also works under a proxy's sub-path; nothing from a CDN.
    assert 'src="playground/app.js"' in page
    assert 'href="playground/style.css"' in page
    assert "http://" not in page and "https://" not in page


def test_head_at_the_root_answers_without_a_body(client: TestClient) -> None:
    response = client.head("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.content == b""


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("app.js", "text/javascript"), ("style.css", "text/css"), ("index.html", "text/html")],
)
def test_assets_have_their_media_types(client: TestClient, name: str, media_type: str) -> None:
    response = client.get(f"/playground/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    assert len(response.content) > 100


def test_an_unchanged_asset_is_not_sent_again(client: TestClient) -> None:
    etag = client.get("/playground/app.js").headers["etag"]
    again = client.get("/playground/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    other = client.get("/playground/app.js", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200


def _raw_get(app: Any, raw_path: str) -> tuple[int, bytes]:
    """GET a path exactly as written, straight into the ASGI app (HTTP clients resolve dot
    segments before sending); the path decoded as uvicorn decodes it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize(
    "path",
    [
        "/playground/missing.js",
        "/playground/",
        "/playground/__init__.py",
        "/playground/app.py",
        "/playground/..%2Fapp.py",
        "/playground/%2e%2e%2fapp.py",
        "/playground/../app.py",
        "/playground/../../pyproject.toml",
        "/playground/..%5Capp.py",
        "/playground/playground%2Fapp.js",
        "/playground/APP.JS",
        "/playground/app.js%00",
        "/playground/.",
    ],
)
def test_only_the_known_files_are_served(client: TestClient, path: str) -> None:
    status, body = _raw_get(client.app, path)
    assert status in (404, 405), (path, status)
    assert b"import" not in body and b"[project]" not in body  # no file of the package


def test_raw_requests_do_reach_the_assets(client: TestClient) -> None:
    """The control for the test above: the same raw request serves a known file."""
    status, body = _raw_get(client.app, "/playground/app.js")
    assert status == 200 and b"easelPlayground" in body


def test_every_listed_asset_ships_with_the_package() -> None:
    from importlib import resources

    folder = resources.files("server").joinpath("playground")
    assert {p.name for p in folder.iterdir()} >= set(ASSETS)


def test_post_at_the_root_still_reaches_picpik(client: TestClient) -> None:
    bad = client.post("/", content=b"not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 200
    assert bad.json()["RetCode"] != 0
    assert bad.json()["Message"] == "the request body is not valid JSON"
    listed = client.post("/", json={"Action": "ListModels", "PublicKey": "any"})
    assert listed.json()["RetCode"] == 0
    assert "easel demo" in listed.json()["MainModels"]


def test_the_page_is_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "get" not in paths.get("/", {})
    assert "post" in paths["/"]
    assert not any(path.startswith("/playground") for path in paths)
