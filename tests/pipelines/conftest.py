"""Fixtures the pipeline tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipelines.masked_support import one_torch_thread


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """For a whole module (pytestmark = pytest.mark.usefixtures("single_torch_thread")): tiny
    models gain nothing from threads, and on a shared CPU extra threads spin and wait."""
    with one_torch_thread():
        yield
