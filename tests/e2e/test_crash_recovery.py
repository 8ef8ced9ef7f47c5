"""Crash recovery and graceful shutdown of a real single-machine `easel serve` (CPU, demo model).

kill -9 during a batch: after a restart on the same data directory every accepted task ends
Finished with its images (those of an uninterrupted run of the same seeds, up to batching
rounding), none is stuck, lost or run twice, and a Runware webhookURL still gets its result.
SIGTERM: the server stops accepting at once, lets the running batch finish within
--shutdown-grace-s (or cuts it there), leaves what was waiting queued, exits, and the next
start runs the rest.
"""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.server_process import ServerProcess
from tests.picpik_client import PicpikClient

MODEL = "easel-demo"
SIDE = 64
STEPS = 20  # a batch takes long enough to be caught running, even on a quiet machine
WAIT_S = 240.0
# A job's pixels depend on its batch-mates by at most this (tests/pipelines/test_engine_batching):
# a re-run batched differently than the first run is still the same image.
BATCH_TOLERANCE = 2  # generous: the suite shares two cores with everything else
# Two images per batch, so a kill finds one batch running and the other tasks waiting.
SERVER_ARGS = ("--max-batch-images", "2", "--max-queue", "8", "--allow-url-net", "127.0.0.0/8")


# --- clients ---


def picpik_submit(http: httpx.Client, seed: int, steps: int = STEPS, side: int = SIDE) -> str:
    reply = PicpikClient(http).call(
        "GenerateImages",
        PositivePrompts=[f"a lighthouse at dusk {seed}"],
        MainModel={"ModelCode": MODEL, "InferenceParams": {"Steps": steps}},
        Width=side,
        Height=side,
        Seed=seed,
    )
    assert reply["RetCode"] == 0, reply
    return reply["TaskUID"]


def picpik_detail(http: httpx.Client, task_id: str) -> dict[str, Any]:
    reply = PicpikClient(http).call("ListTasksDetails", TaskUIDList=[task_id])
    assert reply["RetCode"] == 0, reply
    return reply["TaskDetailList"][0]


def runware_task(seed: int, **fields: Any) -> dict[str, Any]:
    """An imageInference task of one PNG image (sync unless fields say otherwise)."""
    return {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "positivePrompt": f"a lighthouse at dusk {seed}",
        "model": MODEL,
        "width": SIDE,
        "height": SIDE,
        "steps": STEPS,
        "seed": seed,
        "numberResults": 1,
        "outputFormat": "PNG",
        **fields,
    }


def runware_submit(http: httpx.Client, seed: int, **delivery: Any) -> str:
    body = runware_task(seed, deliveryMethod="async", **delivery)
    task_uuid = body["taskUUID"]
    response = http.post("/v1", json=[body])
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["status"] == "processing"
    return task_uuid


def runware_items(http: httpx.Client, task_uuid: str) -> list[dict[str, Any]]:
    response = http.post("/v1", json=[{"taskType": "getResponse", "taskUUID": task_uuid}])
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def pixels(http: httpx.Client, url: str) -> np.ndarray:
    path = url.split("/results/", 1)[1]
    response = http.get(f"/results/{path}")  # the URL names the old server's port
    assert response.status_code == 200, url
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def until(condition: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what or 'the condition'} did not come true within {timeout} s")


class Tasks:
    """Tasks of both protocols on one server: their states and, once finished, their images."""

    def __init__(self) -> None:
        self.picpik: dict[str, int] = {}  # task id -> seed
        self.runware: dict[str, int] = {}

    def states(self, http: httpx.Client) -> dict[str, str]:
        """Each task's state: queued, running, finished or error."""
        states = {}
        for task_id in self.picpik:
            detail = picpik_detail(http, task_id)
            states[task_id] = {"Queuing": "queued", "Running": "running"}.get(
                detail["Status"], detail["Status"].lower()
            )
        for task_uuid in self.runware:
            (item, *_) = runware_items(http, task_uuid)
            states[task_uuid] = "finished" if item["status"] == "success" else "running"
        return states

    def images(self, http: httpx.Client) -> dict[str, list[np.ndarray]]:
        """Every task's images once all have finished (asserting each has one, its seed's)."""
        until(
            lambda: set(self.states(http).values()) <= {"finished", "error"},
            what="every task to end",
        )
        found: dict[str, list[np.ndarray]] = {}
        for task_id, seed in self.picpik.items():
            detail = picpik_detail(http, task_id)
            assert detail["Status"] == "Finished", detail
            assert detail["Seed"] == seed and len(detail["ImgList"]) == 1, detail
            found[task_id] = [pixels(http, url) for url in detail["ImgList"]]
        for task_uuid, seed in self.runware.items():
            items = runware_items(http, task_uuid)
            assert [(i["status"], i["seed"]) for i in items] == [("success", seed)], items
            found[task_uuid] = [pixels(http, i["imageURL"]) for i in items]
        return found


class Webhook:
    """A local HTTP endpoint that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[dict[str, Any]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def journal_task_ids(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "journal.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT task_id FROM journal ORDER BY accepted_at")]


def journal_size(data_dir: Path) -> int:
    return len(journal_task_ids(data_dir))


# --- kill -9 ---


def test_kill_9_during_a_batch_loses_no_accepted_task(tmp_path: Path, webhook: Webhook) -> None:
    data_dir = tmp_path / "data"
    tasks = Tasks()
    with ServerProcess(data_dir, *SERVER_ARGS) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            first = picpik_submit(http, 101)  # the first batch: these two
            tasks.picpik = {first: 101, picpik_submit(http, 102): 102}
            hooked = runware_submit(http, 201, webhookURL=webhook.url)  # waiting
            tasks.runware = {hooked: 201, runware_submit(http, 202): 202}
            until(lambda: picpik_detail(http, first)["Progress"] > 0, what="a running batch")
            before = tasks.states(http)
        server.stop(signal.SIGKILL)
    assert server.process is not None and server.process.returncode == -signal.SIGKILL
    assert "running" in before.values() and before[hooked] != "finished", before
    unfinished = [task_id for task_id, state in before.items() if state != "finished"]
    assert journal_size(data_dir) == len(unfinished) >= 3

    with ServerProcess(data_dir, *SERVER_ARGS) as restarted:
        with httpx.Client(base_url=restarted.url, timeout=30) as http:
            recovered = tasks.images(http)  # each Finished with one image of its seed
            assert f"re-running {len(unfinished)} task(s)" in restarted.log()
            assert PicpikClient(http).call("ListRunningTasks")["TaskUIDList"] == []
            until(lambda: len(webhook.received) >= 1, timeout=30, what="the webhook")
            (hooked_item,) = runware_items(http, hooked)
            # The same seeds on a server that was never interrupted give the same images: for
            # the task cut in the middle of its batch, and for one that was waiting.
            again = Tasks()
            again.picpik = {picpik_submit(http, 101): 101}
            again.runware = {runware_submit(http, 201): 201}
            reference = again.images(http)
            assert journal_size(data_dir) == 0
    pairs = [(first, next(iter(again.picpik))), (hooked, next(iter(again.runware)))]
    for task_id, ref_id in pairs:
        difference = np.abs(recovered[task_id][0].astype(int) - reference[ref_id][0])
        assert difference.max() <= BATCH_TOLERANCE, task_id
    # The webhook got the re-run's result once (the first process died before sending it).
    assert [body["data"][0]["taskUUID"] for body in webhook.received] == [hooked]
    (item,) = webhook.received[0]["data"]
    assert item["status"] == "success" and item["seed"] == 201
    assert item["imageUUID"] == hooked_item["imageUUID"]  # the image getResponse reports


# --- SIGTERM ---


def sigterm(server: ServerProcess) -> tuple[float, int]:
    """SIGTERM the server and wait for it to exit: (seconds it took, connections it refused
    meanwhile: it stops accepting at once)."""
    assert server.process is not None
    stopped_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    refused = 0
    while server.process.poll() is None:
        time.sleep(0.2)
        try:
            httpx.get(server.url + "/healthz", timeout=1)
        except httpx.TransportError:
            refused += 1
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()
    return time.monotonic() - stopped_at, refused


def test_sigterm_drains_the_running_batch_and_requeues_the_rest(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # A grace period long enough for the running batch: it finishes, the waiting tasks stay.
    grace_s = 60.0
    tasks = Tasks()
    with ServerProcess(data_dir, "--max-batch-images", "1", "--shutdown-grace-s", "60") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            running = picpik_submit(http, 301)
            waiting = [picpik_submit(http, 302), picpik_submit(http, 303)]
            tasks.picpik = {running: 301, waiting[0]: 302, waiting[1]: 303}
            until(lambda: picpik_detail(http, running)["Progress"] > 0, what="a running batch")
        took, refused = sigterm(server)
    log = server.log()
    assert took < grace_s and (refused >= 1 or took < 0.5), log
    assert f"task {running} finished" in log  # the running batch was let finish
    left = [line for line in log.splitlines() if "run again at the next start" in line]
    assert left and left[0].endswith("run again at the next start: " + ", ".join(waiting)), left

    # Restarted with a 1 s grace period: the waiting tasks run; then a long batch is cut there.
    with ServerProcess(data_dir, "--shutdown-grace-s", "1") as restarted:
        with httpx.Client(base_url=restarted.url, timeout=30) as http:
            images = tasks.images(http)  # each Finished with one image of its seed
            cut = picpik_submit(http, 401, steps=100, side=512)  # a minute of CPU work
            until(lambda: picpik_detail(http, cut)["Progress"] > 0, what="a long batch")
        took, _ = sigterm(restarted)
    log = restarted.log()
    assert took < 15, log  # 1 s of grace, then a step or two to notice the cut
    assert "after the 1 s grace period" in log and f"task {cut} queued again" not in log
    assert all(f"task {task_id} queued again" in log for task_id in waiting)
    assert f"task {running} queued again" not in log
    assert all(len(found) == 1 for found in images.values())

    # The cut task did not fail: it is journaled, its record unfinished, so the next start runs
    # it again as after a crash (test_kill_9_during_a_batch_loses_no_accepted_task).
    assert journal_task_ids(data_dir) == [cut]
    with sqlite3.connect(data_dir / "tasks.sqlite3") as db:
        (status,) = db.execute("SELECT status FROM tasks WHERE task_id = ?", (cut,)).fetchone()
    assert status == "running"


def test_sigterm_still_answers_a_synchronous_request_under_way(tmp_path: Path) -> None:
    """A Runware REST request waiting (sync) at the signal for a task queued behind the
    running batch gets its image: the engine starts batches until no open request waits."""
    data_dir = tmp_path / "data"
    answer: dict[str, httpx.Response] = {}

    def sync_request(url: str, seed: int) -> None:
        body = runware_task(seed)
        answer["response"] = httpx.post(url + "/v1", json=[body], timeout=WAIT_S)

    with ServerProcess(data_dir, "--max-batch-images", "1", "--shutdown-grace-s", "60") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            running = picpik_submit(http, 311, steps=4 * STEPS)
            until(lambda: picpik_detail(http, running)["Progress"] > 0, what="a running batch")
            waiting = threading.Thread(target=sync_request, args=(server.url, 312))
            waiting.start()
            until(
                lambda: http.get("/engine/status").json()["queue"]["jobs"] == 1,
                what="the synchronous task queued behind the running one",
            )
        took, _ = sigterm(server)
        waiting.join(WAIT_S)
    assert took < 60, server.log()
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert [(i["status"], i["seed"]) for i in response.json()["data"]] == [("success", 312)]
    assert f"task {running} finished" in server.log()
    assert journal_task_ids(data_dir) == []  # nothing left for the next start
