"""Headless Chromium for the browser tests: Debian's `chromium`, driven by Playwright.

`make test` installs the package (scripts/system_packages.sh) and sets
EASEL_REQUIRE_SYSTEM_PACKAGES; a bare pytest run on a machine without it skips these tests, but
under `make test` or CI they fail instead, so a missing browser cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # kept after the run


def chromium_path() -> str:
    """Debian's Chromium binary; skips (fails under CI) when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") or os.environ.get("EASEL_REQUIRE_SYSTEM_PACKAGES"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def launched_browser() -> Iterator[object]:
    """A Playwright Chromium browser for a fixture to yield."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
