"""A real `easel serve` as operators run it: preloading makes it ready before its first job,
/engine/events streams its status and ends at shutdown (which it does not hold up), and with
--log-json every line it writes is a JSON object, a task's state changes among them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server_process import ServerProcess

READY_S = 30.0  # building the demo model and loading it, on a busy 2-core machine


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) of each Server-Sent Event as it arrives."""
    name, data = "", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield name, json.loads(data)
            name, data = "", ""


def wait_ready(url: str, timeout: float = READY_S) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if httpx.get(url + "/readyz", timeout=5).status_code == 200:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not ready within {timeout} s: {httpx.get(url + '/readyz').text}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("operator") / "data"
    process = ServerProcess(data_dir, "--log-json").start()  # preloads the default checkpoint
    try:
        yield process
    finally:
        process.stop()


def test_preloaded_ready_then_status_events_a_job_and_json_logs(server: ServerProcess) -> None:
    wait_ready(server.url)  # no job was sent: the preload loaded the demo model

    with httpx.stream("GET", server.url + "/engine/events", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        (first_name, first), arrived = next(stream), time.monotonic()
        (second_name, second), then = next(stream), time.monotonic()
    assert first_name == second_name == "status"
    assert 0.3 < then - arrived < 2.0  # every 0.5 s
    for status in (first, second):
        assert status["ready"] is True
        assert status["queue"] == {"jobs": 0, "images": 0}
        assert status["devices"] == [{"device": "cpu", "models": ["easel-demo"], "batch": None}]
        assert isinstance(status["images_per_second"], float | int)

    task_uuid = str(uuid.uuid4())
    inference = {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "positivePrompt": "a secret prompt",
        "model": "easel-demo",
        "width": 64,
        "height": 64,
        "steps": 2,
    }
    reply = httpx.post(server.url + "/v1", json=[inference], timeout=60)
    assert reply.status_code == 200, reply.text
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert "easel_images_total 1.0" in metrics

    # A shutdown with a stream open: the stream ends and the server stops at once, not after
    # the shutdown grace period (30 s) that uvicorn gives open responses.
    opened, ended = threading.Event(), threading.Event()

    def listen() -> None:
        with httpx.stream("GET", server.url + "/engine/events", timeout=30) as response:
            for _ in events(response):
                opened.set()
        ended.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(10)
    stopping = time.monotonic()
    server.stop()
    assert time.monotonic() - stopping < 15
    assert ended.wait(5)

    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in entries)
    states = [e for e in entries if e.get("task_id") == task_uuid]
    assert [e["state"] for e in states] == ["queued", "running", "finished"]
    assert all(e["protocol"] == "runware" and e["action"] == "imageInference" for e in states)
    assert not any("secret prompt" in line for line in lines)
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any(e.get("path") == "/v1" and e.get("status") == 200 for e in access)


def test_without_preloading_not_ready_at_start(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", "--preload", "none") as process:
        response = httpx.get(process.url + "/readyz", timeout=5)
        assert response.status_code == 503
        assert response.json()["status"] == "not ready"
        assert httpx.get(process.url + "/engine/status", timeout=5).json()["ready"] is False
