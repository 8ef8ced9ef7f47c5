"""One real `easel serve` process on loopback for the whole fuzz package (it takes seconds to
start), with keys, as a server that people reach must run: the fuzzers sign their PICPIK
requests and authenticate their Runware sockets, except where they fuzz that too. The engine
queue is kept short: the fuzzed valid jobs that find it full are answered busy at once instead
of piling up behind each other."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.server_process import ServerProcess
from tests.fuzz.harness import PICPIK_PRIVATE_KEY, PICPIK_PUBLIC_KEY, RUNWARE_API_KEY

MAX_QUEUE = 2


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    keys = {
        "picpik": [{"public_key": PICPIK_PUBLIC_KEY, "private_key": PICPIK_PRIVATE_KEY}],
        "runware": [{"api_key": RUNWARE_API_KEY}],
    }
    (root / "keys.json").write_text(json.dumps(keys))
    args = ("--keys-file", str(root / "keys.json"), "--max-queue", str(MAX_QUEUE))
    with ServerProcess(root / "data", *args) as process:
        yield process
