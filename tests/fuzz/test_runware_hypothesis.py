"""Hypothesis-generated Runware messages against a real `easel serve` over a real WebSocket and
over REST: current-protocol task arrays, legacy (picfinder) objects, and raw frames that are
not JSON at all (tests/fuzz/strategies.py).

Over the socket every message must be answered: one frame per task of an array (none for an
empty array), one frame for anything else, within REQUEST_TIMEOUT_S, and the socket stays
open. Over REST every body gets a JSON answer below HTTP 500. No answer may be an internal error
(internalError, legacy errorId 1), and the server's log must show no traceback. After the
fuzzing the server still generates images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.e2e.server_process import ServerProcess
from tests.fuzz.harness import (
    REQUEST_TIMEOUT_S,
    RUNWARE_API_KEY,
    RUNWARE_AUTH,
    LogWatch,
    assert_generates,
    check_legacy_frame,
    check_runware_frame,
    check_runware_rest,
    fuzz_settings,
)
from tests.fuzz.strategies import (
    CURRENT_ARRAYS,
    CURRENT_MESSAGES,
    DEEP,
    JUNK,
    LEGACY_BASES,
    RAW_BYTES,
    RAW_TEXTS,
    RUNWARE_BASES,
    SURROGATE,
    legacy_message,
    to_json,
)

KEY = RUNWARE_API_KEY
Frame = str | bytes  # what goes over the socket as it is sent: a text or a binary frame
# A third each: current messages, legacy ones, raw frames (fewer shapes: found sooner).
SOCKET_MESSAGES = st.one_of(
    CURRENT_ARRAYS.map(to_json),
    CURRENT_ARRAYS.map(to_json),
    legacy_message().map(to_json),
    legacy_message().map(to_json),
    RAW_TEXTS,
    RAW_BYTES,
)
# Found by this fuzzing, kept as explicit examples (fixed in server/jsonbody.py):
# - nesting past the JSON parser's recursion limit: REST answered HTTP 500, the socket closed
#   without an answer;
# - lone surrogate escapes ("\ud800"): an apiKey made REST answer 500 and killed the socket, a
#   taskUUID or taskType echoed in an answer made REST answer 500.
NESTED_ARRAYS = "[" * DEEP + "]" * DEEP
NESTED_OBJECTS = '{"a":' * DEEP + "0" + "}" * DEEP
AUTHENTICATION = {"taskType": "authentication", "apiKey": KEY}
LOGIN = to_json([AUTHENTICATION])
LEGACY_LOGIN = to_json({"newConnection": {"apiKey": KEY}})
# Log in first (either protocol's way: they share the session) or not: then every task must be
# refused as unauthenticated, and the messages may log in themselves.
LOGINS = st.sampled_from([LOGIN, LOGIN, LOGIN, LEGACY_LOGIN, None])
INFERENCE = {
    "taskType": "imageInference",
    "taskUUID": "9b0e7c1e-0c55-4f44-9d7e-2d2a39f1a001",
    **RUNWARE_BASES["imageInference"],
}
LEGACY_TASK = {"taskUUID": "9b0e7c1e-0c55-4f44-9d7e-2d2a39f1a002", **LEGACY_BASES["newTask"]}


@pytest.fixture(scope="module")
def watch(server: ServerProcess) -> LogWatch:
    return LogWatch(server)


@pytest.fixture(scope="module")
def socket_url(server: ServerProcess, watch: LogWatch) -> str:
    return server.url.replace("http://", "ws://") + "/v1"


@pytest.fixture(scope="module")
def rest(server: ServerProcess, watch: LogWatch) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


def parsed(frame: Frame) -> Any:
    """The message as the server reads it (binary frames as UTF-8, bad bytes replaced);
    ValueError when it is not JSON."""
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deep") from None


def expected_answers(frame: Frame) -> int:
    """Frames the server answers a message with: one per task of an array, else one."""
    try:
        message = parsed(frame)
    except ValueError:
        return 1
    return len(message) if isinstance(message, list) else 1


def is_legacy(frame: Frame) -> bool:
    try:
        return isinstance(parsed(frame), dict)
    except ValueError:
        return False


def exchange(socket: ClientConnection, frame: Frame) -> list[Any]:
    """Send one message and read its answers; fails on silence or a closed socket."""
    socket.send(frame)
    answers = []
    for _ in range(expected_answers(frame)):
        try:
            answers.append(json.loads(socket.recv(timeout=REQUEST_TIMEOUT_S)))
        except TimeoutError:
            pytest.fail(f"no answer within {REQUEST_TIMEOUT_S:g} s, after {answers!r}")
        except ConnectionClosed as closed:
            pytest.fail(f"the server closed the socket ({closed}) after {answers!r}")
    return answers


def record_outcomes(answer: Any) -> None:
    """What an answer was, for hypothesis' statistics (--hypothesis-show-statistics): each
    error code, each data item's taskType, each legacy frame's kind."""
    if not isinstance(answer, dict):
        labels = {"?"}
    elif "errors" in answer or "data" in answer:
        labels = {f"error {item.get('code')}" for item in answer.get("errors", [])}
        labels |= {f"data {item.get('taskType')}" for item in answer.get("data", [])}
    elif answer.get("error"):
        labels = {f"legacy error {answer.get('errorId')}"}
    else:
        labels = {"legacy " + ", ".join(sorted(answer))}
    for label in sorted(labels):
        event(label)


@given(login=LOGINS, messages=st.lists(SOCKET_MESSAGES, min_size=1, max_size=4))
@example(login=LOGIN, messages=[NESTED_ARRAYS, '[{"taskType": "ping"}]'])
@example(login=LOGIN, messages=[NESTED_OBJECTS.encode(), '{"ping": true}'])
@example(login=LOGIN, messages=[to_json([INFERENCE, AUTHENTICATION])])
@example(
    login=None,
    messages=[
        to_json([{**AUTHENTICATION, "apiKey": SURROGATE}]),
        to_json({"newConnection": {"apiKey": SURROGATE}}),
        LOGIN,
        to_json([{"taskType": SURROGATE, "taskUUID": SURROGATE}]),
    ],
)
@example(
    login=LEGACY_LOGIN,
    messages=[to_json({"newTask": LEGACY_TASK}), to_json({"newConnection": {"apiKey": KEY}})],
)
@fuzz_settings(100)
def test_the_socket_answers_every_message(
    socket_url: str, login: Frame | None, messages: list[Frame]
) -> None:
    with connect(socket_url, max_size=None, open_timeout=30) as socket:
        if login is not None:
            (answer,) = exchange(socket, login)
            assert "errors" not in answer and not answer.get("error"), answer
        for frame in messages:
            check = check_legacy_frame if is_legacy(frame) else check_runware_frame
            for answer in exchange(socket, frame):
                check(answer)
                record_outcomes(answer)
        # Still serving: a ping after all that is answered.
        assert exchange(socket, '[{"taskType": "ping"}]') == [
            {"data": [{"taskType": "ping", "pong": True}]}
        ]


@given(body=CURRENT_MESSAGES | JUNK, auth=st.sampled_from([RUNWARE_AUTH, {}]))
@example(body=[{**AUTHENTICATION, "apiKey": SURROGATE}, {"taskType": "ping"}], auth={})
@example(body=[{**INFERENCE, "taskUUID": SURROGATE}], auth=RUNWARE_AUTH)
@example(body=[{"taskType": "getResponse", "taskUUID": SURROGATE}], auth=RUNWARE_AUTH)
@fuzz_settings(60)
def test_rest_answers_every_body(rest: httpx.Client, body: Any, auth: dict[str, str]) -> None:
    headers = {"content-type": "application/json", **auth}
    response = rest.post("/v1", content=to_json(body), headers=headers)
    check_runware_rest(response.status_code, response.json())
    record_outcomes(response.json())


@given(
    raw=RAW_TEXTS.map(str.encode) | RAW_BYTES,
    bearer=st.none()
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
)
@example(raw=NESTED_ARRAYS.encode(), bearer=None)
@example(raw=NESTED_OBJECTS.encode(), bearer=None)
@fuzz_settings(30)
def test_rest_answers_raw_bodies(rest: httpx.Client, raw: bytes, bearer: str | None) -> None:
    headers = {} if bearer is None else {"authorization": "Bearer " + bearer}
    response = rest.post("/v1", content=raw, headers=headers)
    check_runware_rest(response.status_code, response.json())


def test_a_frame_made_while_the_socket_is_away_waits_for_the_resume(
    socket_url: str, rest: httpx.Client
) -> None:
    """Found while fuzzing re-authentication: a closed socket never left its session, so the
    frames of tasks ending while it was away went to the dead socket instead of the session's
    buffer (and no session ever expired)."""
    task = {**INFERENCE, "taskUUID": "9b0e7c1e-0c55-4f44-9d7e-2d2a39f1a003"}
    with connect(socket_url, open_timeout=30) as socket:
        (auth,) = exchange(socket, LOGIN)
        session = auth["data"][0]["connectionSessionUUID"]
        socket.send(to_json([task]))
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while not _succeeded(rest, task["taskUUID"]):  # not found yet, or still processing
        assert time.monotonic() < deadline, "the task did not finish"
        time.sleep(0.1)
    resume = {**AUTHENTICATION, "connectionSessionUUID": session}
    with connect(socket_url, open_timeout=30) as socket:
        socket.send(to_json([resume]))
        answers = [json.loads(socket.recv(timeout=REQUEST_TIMEOUT_S)) for _ in range(2)]
    assert answers[0]["data"][0]["connectionSessionUUID"] == session
    assert answers[1]["data"][0]["taskUUID"] == task["taskUUID"]


def _succeeded(rest: httpx.Client, task_uuid: str) -> bool:
    poll = [{"taskType": "getResponse", "taskUUID": task_uuid}]
    answer = rest.post("/v1", json=poll, headers=RUNWARE_AUTH).json()
    return any(item.get("status") == "success" for item in answer.get("data", []))


def test_after_fuzzing_the_server_still_generates(server: ServerProcess, watch: LogWatch) -> None:
    assert_generates(server)
    assert not watch.tracebacks(), watch.tracebacks()
