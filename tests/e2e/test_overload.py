"""Overload on a real single-machine `easel serve`: a full queue refuses new work at once, in each
protocol's own format, while the work it holds goes on and the WebSocket still answers pings.

--max-queue 2 and one image per batch: a long job runs, two small ones wait, and every further
task is refused as busy (PICPIK RetCode 10050, Runware serverBusy: HTTP 429 over REST, an error
item with its taskUUID over the WebSocket) without waiting for anything. The long job is then
terminated, and the two waiting tasks finish.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from server.picpik.errors import RetCode
from tests.e2e.server_process import ServerProcess
from tests.picpik_client import PicpikClient

MODEL = "easel-demo"
AT_ONCE_S = 1.0  # a refusal or a pong within this, however busy the worker is
WAIT_S = 240.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("overload") / "data"
    with ServerProcess(data_dir, "--max-queue", "2", "--max-batch-images", "1") as process:
        yield process


def generate(http: httpx.Client, side: int, steps: int, seed: int) -> dict[str, Any]:
    return PicpikClient(http).call(
        "GenerateImages",
        PositivePrompts=["a busy harbour"],
        MainModel={"ModelCode": MODEL, "InferenceParams": {"Steps": steps}},
        Width=side,
        Height=side,
        Seed=seed,
    )


def inference(seed: int) -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "positivePrompt": "a busy harbour",
        "model": MODEL,
        "width": 64,
        "height": 64,
        "steps": 6,
        "seed": seed,
        "deliveryMethod": "async",
    }


def receive(socket: ClientConnection) -> dict[str, Any]:
    return json.loads(socket.recv(timeout=AT_ONCE_S * 5))


def status(http: httpx.Client, task_id: str) -> dict[str, Any]:
    reply = PicpikClient(http).call("ListTasksDetails", TaskUIDList=[task_id])
    return reply["TaskDetailList"][0]


def wait_for(http: httpx.Client, task_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        detail = status(http, task_id)
        if detail["Status"] in statuses:
            return detail
        time.sleep(0.05)
    raise TimeoutError(f"task {task_id} is still {detail['Status']}")


def test_a_full_queue_refuses_at_once_and_the_queued_work_finishes(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # A long job runs (a minute of CPU work: it is terminated once the checks are done).
        long = generate(http, 512, 100, 1)
        assert long["RetCode"] == 0, long
        until_running = wait_for(http, long["TaskUID"], ("Running",))
        assert until_running["Progress"] >= 0
        # Two small tasks fill the queue: one per protocol.
        small = generate(http, 64, 6, 2)
        assert small["RetCode"] == 0, small
        queued = inference(3)
        accepted = http.post("/v1", json=[queued])
        assert accepted.status_code == 200, accepted.text

        # PICPIK: refused with SERVER_BUSY, at once.
        started = time.monotonic()
        busy = generate(http, 64, 6, 4)
        assert time.monotonic() - started < AT_ONCE_S
        assert busy["RetCode"] == RetCode.SERVER_BUSY and "busy" in busy["Message"], busy

        # Runware over REST: 429 with a serverBusy error item for the task.
        refused = inference(5)
        started = time.monotonic()
        response = http.post("/v1", json=[refused])
        assert time.monotonic() - started < AT_ONCE_S
        assert response.status_code == 429, response.text
        (error,) = response.json()["errors"]
        assert error["code"] == "serverBusy" and error["taskUUID"] == refused["taskUUID"]
        # Nothing of it was kept.
        lookup = http.post(
            "/v1", json=[{"taskType": "getResponse", "taskUUID": refused["taskUUID"]}]
        )
        assert lookup.json()["errors"][0]["code"] == "taskNotFound"

        # Runware over the WebSocket: an error item with the taskUUID; pings answered at once.
        url = server.url.replace("http://", "ws://") + "/v1"
        with connect(url, max_size=None, open_timeout=30) as socket:
            refused = inference(6)
            started = time.monotonic()
            socket.send(json.dumps([refused]))
            frame = receive(socket)
            assert time.monotonic() - started < AT_ONCE_S
            (error,) = frame["errors"]
            assert error["code"] == "serverBusy" and error["taskUUID"] == refused["taskUUID"]
            for _ in range(5):
                started = time.monotonic()
                socket.send(json.dumps([{"taskType": "ping", "ping": True}]))
                assert receive(socket) == {"data": [{"taskType": "ping", "pong": True}]}
                assert time.monotonic() - started < AT_ONCE_S
                time.sleep(0.1)
        assert status(http, long["TaskUID"])["Status"] == "Running"  # still busy throughout

        # The work the server accepted goes on: the long job is ended, the queued ones finish.
        ended = PicpikClient(http).call("TerminateTask", TaskUID=long["TaskUID"])
        assert ended["RetCode"] == 0, ended
        assert wait_for(http, small["TaskUID"], ("Finished", "Error"))["Status"] == "Finished"
        deadline = time.monotonic() + WAIT_S
        get = [{"taskType": "getResponse", "taskUUID": queued["taskUUID"]}]
        while (item := http.post("/v1", json=get).json()["data"][0])["status"] != "success":
            assert time.monotonic() < deadline, item
            time.sleep(0.05)
        assert item["imageURL"].endswith(".jpg")
        assert status(http, long["TaskUID"])["Status"] == "Error"
