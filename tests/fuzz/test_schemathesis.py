"""schemathesis against the OpenAPI document that a real `easel serve` publishes.

Every operation (PICPIK `POST /`, Runware `POST /v1`, the result images, /engine/stats,
/healthz) is fed the document's explicit examples and generated requests that fit the schemas
and that do not; the deep run (EASEL_FUZZ_EXAMPLES) adds the coverage phase, every field's
boundary values both ways (thousands of requests). server/openapi.py describes the two
raw-body endpoints from the wire models, so schemathesis builds real PICPIK actions and Runware
task arrays. Every answer must be: no 5xx; JSON where JSON is promised; PICPIK HTTP 200 with a
RetCode and a Message; Runware errors with code and message; never an internal error; and no
traceback in the server's log. Generation sizes are kept tiny (tests/fuzz/harness.py); PICPIK
bodies are signed and Runware requests carry the fuzz server's key.

The schema is built in-process from the same code as the server's /openapi.json (a test checks
they are equal) and given to `schema.parametrize()`: schemathesis' lazy pytest loader
(`schemathesis.pytest.from_fixture`) fails on pytest 9 (it sets `Item._nodeid`), so the
requests go to the real server through `case.call(base_url=...)` instead.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from server.openapi import PICPIK_EXAMPLES, RUNWARE_EXAMPLES
from tests.conftest import demo_app
from tests.e2e.server_process import ServerProcess
from tests.fuzz.harness import (
    DEEP_EXAMPLES,
    REQUEST_TIMEOUT_S,
    RUNWARE_AUTH,
    LogWatch,
    assert_generates,
    check_picpik,
    check_runware_rest,
    fuzz_settings,
    signed,
    tiny_picpik,
    tiny_runware,
)

SEED = 8  # issue 8; the deep run draws its own
CI_EXAMPLES = 60  # per operation, in the fuzzing phase (explicit examples come too)
TINY_BODIES = {"/": tiny_picpik, "/v1": tiny_runware}


@pytest.fixture(scope="module")
def watch(server: ServerProcess) -> LogWatch:
    return LogWatch(server)


def _published_document() -> dict[str, Any]:
    """The OpenAPI document `easel serve` publishes, built in-process (the same code) so the
    operations exist when pytest collects them; the first test checks the server's is this."""
    with tempfile.TemporaryDirectory() as tmp:
        app = demo_app(Path(tmp) / "demo", Path(tmp) / "data")
        try:
            return app.openapi()
        finally:
            app.state.services.store.close()


DOCUMENT = _published_document()
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "phases": {
                "stateful": {"enabled": False},  # no links between the operations
                # Boundary values of every field, both ways: thousands of requests (~50 s),
                # so only in the deep run.
                "coverage": {"enabled": bool(DEEP_EXAMPLES)},
            }
        }
        | ({} if DEEP_EXAMPLES else {"seed": SEED})
    ),
)


def test_the_server_publishes_the_fuzzed_document(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/openapi.json", timeout=30).json() == DOCUMENT


def test_the_documented_examples_work_on_the_demo_model(server: ServerProcess) -> None:
    """The request examples /docs shows succeed on a fresh install (a fresh taskUUID each)."""
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        for name, example in PICPIK_EXAMPLES.items():
            answer = client.post("/", json=signed(example["value"])).json()
            assert answer["RetCode"] == 0, (name, answer)
        for name, example in RUNWARE_EXAMPLES.items():
            tasks = [{**task, "taskUUID": str(uuid.uuid4())} for task in example["value"]]
            response = client.post("/v1", json=tasks, headers=RUNWARE_AUTH)
            assert response.status_code == 200, (name, response.json())
            assert len(response.json()["data"]) == len(tasks), (name, response.json())


@schema.parametrize()
@fuzz_settings(CI_EXAMPLES)
def test_every_endpoint_answers_in_its_protocol(
    case: schemathesis.Case, server: ServerProcess, watch: LogWatch
) -> None:
    tiny = TINY_BODIES.get(case.path)
    if tiny is not None and case.body is not None:
        case.body = tiny(case.body)
    if case.path == "/":
        case.body = signed(case.body)
    response = case.call(base_url=server.url, headers=RUNWARE_AUTH, timeout=REQUEST_TIMEOUT_S)
    case.validate_response(response, checks=[not_a_server_error])
    if case.method.upper() != case.operation.method.upper():  # the coverage phase tries others
        # GET and HEAD / serve the playground page (server/playground.py).
        page = case.path == "/" and case.method.upper() in ("GET", "HEAD")
        assert response.status_code == (200 if page else 405), response.status_code
    elif case.path == "/":
        check_picpik(response.status_code, response.json())
    elif case.path == "/v1":
        check_runware_rest(response.status_code, response.json())
    elif case.path.startswith("/results/"):
        if response.status_code != 200:  # 404 "image not found", or no such route
            assert response.status_code == 404, response.status_code
            assert isinstance(response.json(), dict)
    else:
        assert response.status_code == 200, (case.path, response.status_code)
        assert isinstance(response.json(), dict)


def test_after_fuzzing_the_server_still_generates(server: ServerProcess, watch: LogWatch) -> None:
    assert_generates(server)
    assert not watch.tracebacks(), watch.tracebacks()
