"""/docs: Swagger UI from the package (no CDN), over a document that explains both protocols."""

from __future__ import annotations

import re

from server.docs_routes import ASSETS


def test_docs_page_loads_only_local_assets(make_client) -> None:
    client = make_client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
    assert "'/openapi.json'" in page.text
    assert '"validatorUrl": null' in page.text  # no badge fetched from swagger.io
    for name, media_type in ASSETS.items():
        asset = client.get(f"/docs/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"] == media_type
        assert len(asset.content) > 100
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/docs/assets/..%2F..%2F__init__.py").status_code == 404
    assert client.get("/redoc").status_code in (404, 405)  # ReDoc would need a CDN


def test_the_document_describes_both_protocols_with_examples(make_client) -> None:
    document = make_client().get("/openapi.json").json()
    assert "PICPIK" in document["info"]["description"]
    assert "Runware" in document["info"]["description"]
    assert {t["name"] for t in document["tags"]} >= {"PICPIK", "Runware"}
    picpik = document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]
    runware = document["paths"]["/v1"]["post"]["requestBody"]["content"]["application/json"]
    assert "GenerateImages" in picpik["examples"]
    assert {"imageInference", "imageInference async", "imageUpload"} <= set(runware["examples"])
