"""One real `easel serve` process on loopback for the whole fuzz package (it takes seconds to
start). The engine queue is kept short: the fuzzed valid jobs that find it full are answered
busy at once instead of piling up behind each other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.server_process import ServerProcess

MAX_QUEUE = 2


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    with ServerProcess(root / "data", "--max-queue", str(MAX_QUEUE)) as process:
        yield process
