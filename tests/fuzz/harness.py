"""What the fuzz tests share: hypothesis settings, keeping generation jobs tiny, the checks every
answer must pass, and the check that the server still works after the fuzzing.

CI runs a few dozen examples per test with a fixed derandomized seed, so a run is reproducible
and stays within its time budget. EASEL_FUZZ_EXAMPLES=N runs N examples per test (per
operation for schemathesis) with fresh random seeds: the deep run (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from hypothesis import HealthCheck, settings

from server import jsonbody
from server.picpik.signature import sign
from server.runware.legacy.tables import SIZES
from tests.e2e.server_process import ServerProcess

DEEP_EXAMPLES = int(os.environ.get("EASEL_FUZZ_EXAMPLES", "0") or 0)
DEMO_MODEL = "easel-demo"
PICPIK_PUBLIC_KEY, PICPIK_PRIVATE_KEY = "fuzz-public", "fuzz-private"
RUNWARE_API_KEY = "fuzz-runware-key"
RUNWARE_AUTH = {"authorization": "Bearer " + RUNWARE_API_KEY}
REQUEST_TIMEOUT_S = 60.0  # one answer; a valid job may wait behind the queue's others
PICPIK_INTERNAL_ERROR = 10000  # server/picpik/errors.py RetCode.INTERNAL_ERROR
PICPIK_BUSY = 10050  # RetCode.SERVER_BUSY
RUNWARE_INTERNAL_ERROR = "internalError"
LEGACY_INTERNAL_ERROR = 1  # server/runware/legacy/translate.py ErrorId.INTERNAL_ERROR
TRACEBACK = "Traceback (most recent call last)"


def fuzz_settings(ci_examples: int) -> settings:
    """ci_examples with a fixed seed; the deep run's count with random seeds."""
    return settings(
        max_examples=DEEP_EXAMPLES or ci_examples,
        derandomize=not DEEP_EXAMPLES,
        database=None,  # no example database: CI reruns the same examples anyway
        deadline=None,  # a real server on a shared CPU: latency is not what is tested
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# --- tiny jobs ---------------------------------------------------------------------------------

# (smallest, largest): a number a field documents as valid can still ask for minutes of CPU work
# (2560x2560, 100 steps, 16 images); fuzzed values inside the range become the smallest, values
# outside it are kept, since those are what the server must refuse.
PICPIK_RANGES: Mapping[str, tuple[float, float]] = {
    "Width": (64, 4096),
    "Height": (64, 4096),
    "BatchSize": (1, 16),
    "Steps": (6, 100),
    "Resolution": (64, 2048),
}
RUNWARE_RANGES: Mapping[str, tuple[float, float]] = {
    "width": (64, 2048),
    "height": (64, 2048),
    "steps": (1, 100),
    "numberResults": (1, 20),
    "promptVersions": (1, 5),
}
# A legacy newTask is 512x512 at least (sizeId 1), and 20 steps unless it says; the larger
# sizeIds become 1 (the unknown ones stay: they must be refused).
LEGACY_RANGES: Mapping[str, tuple[float, float]] = {"steps": (1, 100), "numberResults": (1, 20)}
LEGACY_LARGER_SIZES = frozenset(SIZES) - {1}
# Sizes a generation would otherwise default to (PICPIK 1024x1024, Runware 512x512).
PICPIK_GENERATION = frozenset(
    {"GenerateImages", "ModifyMaskedPixels", "ApplyReferenceStyle", "GenerateBackgrounds"}
)
PICPIK_DEFAULTS = {"Width": 64, "Height": 64}
RUNWARE_DEFAULTS = {"width": 64, "height": 64, "steps": 1}
LEGACY_DEFAULTS = {"steps": 1}


def shrink(value: Any, ranges: Mapping[str, tuple[float, float]]) -> Any:
    """value with every in-range number of a `ranges` field (at any depth) set to its smallest."""
    if isinstance(value, list):
        return [shrink(item, ranges) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        bounds = ranges.get(key)
        if bounds is not None and _in_range(item, bounds):
            item = int(bounds[0])
        out[key] = shrink(item, ranges)
    return out


def _in_range(value: Any, bounds: tuple[float, float]) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and bounds[0] <= value <= bounds[1]
    )


def tiny_picpik(body: Any) -> Any:
    body = shrink(body, PICPIK_RANGES)
    if isinstance(body, dict) and str(body.get("Action")) in PICPIK_GENERATION:
        body = _with_defaults(body, PICPIK_DEFAULTS)
    return body


def tiny_runware(body: Any) -> Any:
    body = shrink(body, RUNWARE_RANGES)
    if isinstance(body, list):
        return [
            _with_defaults(task, RUNWARE_DEFAULTS)
            if isinstance(task, dict) and str(task.get("taskType")) == "imageInference"
            else task
            for task in body
        ]
    return body


def tiny_legacy(message: Any) -> Any:
    if isinstance(message, dict) and isinstance(message.get("newTask"), dict):
        task = _with_defaults(shrink(message["newTask"], LEGACY_RANGES), LEGACY_DEFAULTS)
        size = task.get("sizeId")
        if _in_range(size, (1, max(SIZES))) and size in LEGACY_LARGER_SIZES:
            task["sizeId"] = 1
        return {**message, "newTask": task}
    return message


def _with_defaults(body: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Small values for the fields that are absent (null is absent too)."""
    return {**body, **{key: value for key, value in defaults.items() if body.get(key) is None}}


def signed(body: Any) -> Any:
    """A PICPIK body with the fuzz key's PublicKey and a valid Signature (anything but an
    object is left as it is). Signed as the server reads it (a lone surrogate is U+FFFD there,
    as a JavaScript client's encoder writes it)."""
    if not isinstance(body, dict):
        return body
    body = {**body, "PublicKey": PICPIK_PUBLIC_KEY}
    as_read = jsonbody.loads(json.dumps(body))
    return {**body, "Signature": sign(as_read, PICPIK_PRIVATE_KEY)}


# --- checks ------------------------------------------------------------------------------------


def check_picpik(status: int, body: Any) -> None:
    """Every PICPIK answer: HTTP 200 and the envelope, never an internal error."""
    assert status == 200, f"PICPIK answered HTTP {status}: {body!r}"
    assert isinstance(body, dict), f"PICPIK answered a non-object: {body!r}"
    assert isinstance(body.get("RetCode"), int), f"no RetCode: {body!r}"
    assert isinstance(body.get("Message"), str), f"no Message: {body!r}"
    assert body["RetCode"] != PICPIK_INTERNAL_ERROR, f"internal error: {body!r}"


def check_runware_frame(frame: Any) -> None:
    """A current-protocol frame (or REST body): data items, or error items with code and
    message, none an internal error."""
    assert isinstance(frame, dict), f"a frame that is not an object: {frame!r}"
    assert "data" in frame or "errors" in frame, f"neither data nor errors: {frame!r}"
    for item in frame.get("errors", []):
        assert isinstance(item, dict), f"an error item that is not an object: {frame!r}"
        assert isinstance(item.get("code"), str) and item["code"], f"no code: {frame!r}"
        assert isinstance(item.get("message"), str), f"no message: {frame!r}"
        assert item["code"] != RUNWARE_INTERNAL_ERROR, f"internal error: {frame!r}"
    for item in frame.get("data", []):
        assert isinstance(item, dict), f"a data item that is not an object: {frame!r}"


def check_runware_rest(status: int, body: Any) -> None:
    assert status < 500, f"Runware REST answered HTTP {status}: {body!r}"
    check_runware_frame(body)
    assert (status == 200) == ("errors" not in body), f"HTTP {status} for {body!r}"


def check_legacy_frame(frame: Any) -> None:
    """A legacy frame: an object; an error frame has errorId and errorMessage, and is not an
    internal error."""
    assert isinstance(frame, dict) and frame, f"a legacy frame that is not an object: {frame!r}"
    if "errors" in frame or "data" in frame:  # answered in the current format (payloadTooLarge)
        check_runware_frame(frame)
        return
    if frame.get("error"):
        assert isinstance(frame.get("errorId"), int), f"no errorId: {frame!r}"
        assert isinstance(frame.get("errorMessage"), str), f"no errorMessage: {frame!r}"
        assert frame["errorId"] != LEGACY_INTERNAL_ERROR, f"internal error: {frame!r}"


class LogWatch:
    """The part of the server's log written since it was made: a traceback there is a crash
    that the protocol answer may have hidden (a background task's, an exception handler's)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.start = len(server.log())

    def tracebacks(self) -> str:
        new = self.server.log()[self.start :]
        return new if TRACEBACK in new else ""


# --- after the fuzzing -------------------------------------------------------------------------


def assert_generates(server: ServerProcess, deadline_s: float = 180.0) -> None:
    """The server still serves both protocols: a Runware REST image and a PICPIK task that
    finishes, each downloadable. Waits out a queue still busy with fuzzed jobs."""
    deadline = time.monotonic() + deadline_s
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        # The fuzzed PICPIK tasks still queued go: waiting for them tests nothing.
        listed = client.post("/", json=signed({"Action": "ListRunningTasks"})).json()
        for task_id in listed["TaskUIDList"]:
            client.post("/", json=signed({"Action": "TerminateTask", "TaskUID": task_id}))
        task = {
            "taskType": "imageInference",
            "positivePrompt": "a red fox in the snow",
            "model": DEMO_MODEL,
            "width": 64,
            "height": 64,
            "steps": 1,
            "seed": 7,
            "outputFormat": "PNG",
        }
        while True:
            task["taskUUID"] = str(uuid.uuid4())
            response = client.post("/v1", json=[task], headers=RUNWARE_AUTH)
            body = response.json()
            if response.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert response.status_code == 200, body
        _download(client, body["data"][0]["imageURL"])

        request = {
            "Action": "GenerateImages",
            "MainModel": {"ModelCode": DEMO_MODEL, "InferenceParams": {"Steps": 6}},
            "PositivePrompts": ["a red fox in the snow"],
            "Width": 64,
            "Height": 64,
        }
        while True:
            answer = client.post("/", json=signed(request)).json()
            if answer["RetCode"] != PICPIK_BUSY or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answer["RetCode"] == 0, answer
        query = {"Action": "ListTasksDetails", "TaskUIDList": [answer["TaskUID"]]}
        while True:
            (detail,) = client.post("/", json=signed(query)).json()["TaskDetailList"]
            if detail["Status"] in ("Finished", "Error") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert detail["Status"] == "Finished", detail
        _download(client, detail["ImgList"][0])


def _download(client: httpx.Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 200, url
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n", url
