"""/docs in a real browser, with every request outside the server refused: Swagger UI renders
both protocols' operations offline, and a documented example runs from the page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser import artifact, launched_browser
from tests.e2e.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("docs")
    with ServerProcess(root / "data") as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_browser()


def test_docs_render_offline_and_an_example_runs(server: ServerProcess, browser: Any) -> None:
    page = browser.new_page()
    outside: list[str] = []

    def only_the_server(route: Any) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_text_contents()
    assert "/" in paths and "/v1" in paths, paths
    assert "PICPIK" in page.locator(".info").inner_text()

    picpik = page.locator(".opblock-post", has=page.locator('.opblock-summary-path[data-path="/"]'))
    picpik.locator(".opblock-summary").click()
    # tryItOutEnabled: the request editor is open already, with the first example in it
    picpik.locator(".execute").click()
    status = picpik.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=60_000)
    assert status.inner_text().strip().startswith("200")
    body = picpik.locator(".live-responses-table tbody .response-col_description pre")
    body = body.first.inner_text()
    answer = json.loads(body)
    assert answer["RetCode"] == 0 and answer["TaskUID"], answer
    page.screenshot(path=str(artifact("docs.png")), full_page=True)
    assert outside == [], outside
    page.close()
