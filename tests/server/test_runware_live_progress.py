"""Async tasks sent over the Runware WebSocket: progress items are pushed while they run, then
their result items (or their error), with nothing asked; REST and sync tasks are unchanged."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tests.runware_client import fetch, rest, task

SMALL = {"model": "easel-demo", "width": 64, "height": 64}


def _frames_until_end(socket: Any, task_uuid: str) -> list[dict[str, Any]]:
    """Every item or error for the task, in order, up to its result items or its error."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = json.loads(socket.receive_text())
        for error in frame.get("errors", []):
            if error.get("taskUUID") == task_uuid:
                return [*seen, {"error": error}]
        items = [i for i in frame.get("data", []) if i.get("taskUUID") == task_uuid]
        seen.extend(items)
        if any(i.get("status") == "success" for i in items):
            return seen


def _open(client: Any) -> Any:
    socket = client.websocket_connect("/v1")
    ws = socket.__enter__()
    ws.send_text(json.dumps([{"taskType": "authentication", "apiKey": "any"}]))
    assert json.loads(ws.receive_text())["data"][0]["taskType"] == "authentication"
    return socket, ws


def test_async_inference_pushes_progress_then_its_images(make_client) -> None:
    client = make_client()
    context, ws = _open(client)
    try:
        inference = task(
            "imageInference",
            positivePrompt="a lighthouse",
            steps=60,  # about a second on the CPU: several pushes (4 a second)
            seed=4,
            numberResults=2,
            deliveryMethod="async",
            **SMALL,
        )
        ws.send_text(json.dumps([inference]))
        items = _frames_until_end(ws, inference["taskUUID"])
    finally:
        context.__exit__(None, None, None)

    ack, *progress_items, last = [i for i in items if i.get("status") != "success"] + [None]
    assert ack == {
        "taskType": "imageInference",
        "taskUUID": inference["taskUUID"],
        "status": "processing",
    }
    assert last is None
    progress = [i["progress"] for i in progress_items]
    assert progress, "no progress item was pushed"
    assert all(i["status"] == "processing" for i in progress_items)
    assert progress == sorted(progress) and len(set(progress)) == len(progress)
    assert any(0 < p < 100 for p in progress), progress
    results = [i for i in items if i.get("status") == "success"]
    assert [i["seed"] for i in results] == [4, 5]

    # The pushed items are what getResponse returns, and the images are the sync task's.
    poll = rest(client, task("getResponse", taskUUID=inference["taskUUID"])).json()["data"]
    assert poll == results
    sync = {**inference, "taskUUID": task("x")["taskUUID"], "deliveryMethod": "sync"}
    same = rest(client, sync).json()["data"]
    for pushed, direct in zip(results, same, strict=True):
        assert np.array_equal(fetch(client, pushed["imageURL"]), fetch(client, direct["imageURL"]))


def test_async_failure_is_pushed_as_an_error_of_its_task(make_client, monkeypatch) -> None:
    from pipelines import worker
    from pipelines.jobs import ErrorCode, JobError

    def fail(*_args: Any) -> None:  # the job fails on the worker, after the acknowledgement
        raise JobError(ErrorCode.INVALID_INPUT, "the worker refused this job")

    monkeypatch.setattr(worker, "prepare", fail)
    client = make_client()
    context, ws = _open(client)
    try:
        bad = task("imageInference", positivePrompt="x", steps=2, deliveryMethod="async", **SMALL)
        ws.send_text(json.dumps([bad]))
        items = _frames_until_end(ws, bad["taskUUID"])
    finally:
        context.__exit__(None, None, None)
    assert items[0] == {
        "taskType": "imageInference",
        "taskUUID": bad["taskUUID"],
        "status": "processing",
    }
    error = items[-1]["error"]
    assert error["taskType"] == "imageInference"
    assert error["message"] == "the worker refused this job"
    polled = rest(client, task("getResponse", taskUUID=bad["taskUUID"])).json()["errors"]
    assert [e["code"] for e in polled] == [error["code"]]


def test_sync_tasks_and_rest_get_no_pushed_items(make_client) -> None:
    client = make_client()
    context, ws = _open(client)
    try:
        inference = task("imageInference", positivePrompt="x", steps=8, **SMALL)
        ws.send_text(json.dumps([inference]))
        frame = json.loads(ws.receive_text())
    finally:
        context.__exit__(None, None, None)
    (item,) = frame["data"]
    assert item["status"] == "success" and item["taskUUID"] == inference["taskUUID"]
    over_rest = rest(client, {**inference, "taskUUID": task("x")["taskUUID"]}).json()["data"]
    assert [i["status"] for i in over_rest] == ["success"]
