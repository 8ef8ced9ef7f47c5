"""Task control: TerminateTask on queued and running tasks, busy refusal, running lists."""

from __future__ import annotations

import time

from server.picpik.errors import RetCode, TaskErrorCode
from tests.picpik_client import PicpikClient

SLOW = {  # seconds of CPU work on the demo model: long enough to catch it running
    "PositivePrompts": ["slow"],
    "Width": 512,
    "Height": 512,
    "MainModel": {"InferenceParams": {"Steps": 100}},
}
FAST = {
    "PositivePrompts": ["fast"],
    "Width": 64,
    "Height": 64,
    "MainModel": {"InferenceParams": {"Steps": 6}},
}


def _submit(client: PicpikClient, params: dict) -> str:
    reply = client.call("GenerateImages", **params)
    assert reply["RetCode"] == 0, reply
    return reply["TaskUID"]


def _wait_running(client: PicpikClient, task_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        detail = client.call("ListTasksDetails", TaskUIDList=[task_id])["TaskDetailList"][0]
        if detail["Status"] == "Running" and detail["Progress"] > 0:
            return
        time.sleep(0.02)
    raise AssertionError("the task never started")


def test_terminate_running_and_queued(make_client) -> None:
    client = PicpikClient(make_client())
    running = _submit(client, SLOW)
    queued = _submit(client, FAST)
    _wait_running(client, running)
    assert client.call("ListRunningTasks")["TaskUIDList"] == [running, queued]

    detail = client.call("ListTasksDetails", TaskUIDList=[queued])["TaskDetailList"][0]
    assert detail["Status"] == "Queuing"
    assert client.call("TerminateTask", TaskUID=queued)["RetCode"] == 0
    detail = client.wait(queued, timeout=5)
    assert (detail["Status"], detail["ErrorCode"]) == ("Error", TaskErrorCode.CANCELLED)
    assert detail["ImgList"] == []

    started = time.monotonic()
    assert client.call("TerminateTask", TaskUID=running)["RetCode"] == 0
    detail = client.wait(running, timeout=30)
    assert time.monotonic() - started < 10  # stopped at a step boundary, not after 100 steps
    assert (detail["Status"], detail["ErrorCode"]) == ("Error", TaskErrorCode.CANCELLED)
    assert "terminated" in detail["ErrorMassage"]

    again = client.call("TerminateTask", TaskUID=running)
    assert again["RetCode"] == RetCode.TASK_ALREADY_ENDED
    assert client.call("ListRunningTasks")["TaskUIDList"] == []

    # The worker is fine afterwards.
    assert client.generate(**FAST)["Status"] == "Finished"


def test_full_queue_answers_busy_at_once_and_keeps_queued_work(make_client) -> None:
    client = PicpikClient(make_client(max_queue=1))
    running = _submit(client, SLOW)
    _wait_running(client, running)  # taken off the queue: one slot free again
    queued = _submit(client, FAST)
    started = time.monotonic()
    busy = client.call("GenerateImages", **FAST)
    assert time.monotonic() - started < 2
    assert busy["RetCode"] == RetCode.SERVER_BUSY
    assert "busy" in busy["Message"]
    assert "TaskUID" not in busy
    assert client.call("TerminateTask", TaskUID=running)["RetCode"] == 0
    assert client.wait(queued)["Status"] == "Finished"
    assert client.call("ListRunningTasks")["TaskUIDList"] == []


def test_tasks_of_another_key_are_invisible(make_client) -> None:
    from server.keys import KeyStore

    keys = KeyStore.of(picpik={"alice": "alice-secret", "bob": "bob-secret"})
    http = make_client(keys=keys)
    alice = PicpikClient(http, public_key="alice", private_key="alice-secret")
    bob = PicpikClient(http, public_key="bob", private_key="bob-secret")
    detail = alice.generate(**FAST)
    task_id = detail["TaskUID"]
    reply = bob.call("ListTasksDetails", TaskUIDList=[task_id])
    assert reply["RetCode"] == RetCode.TASK_NOT_FOUND
    assert bob.call("TerminateTask", TaskUID=task_id)["RetCode"] == RetCode.TASK_NOT_FOUND
    assert alice.call("GetCreditBalance")["UsedCredits"] == detail["ConsumeApiPoint"]
    assert bob.call("GetCreditBalance")["UsedCredits"] == 0


def test_signatures_are_checked_when_keys_are_configured(make_client) -> None:
    from server.keys import KeyStore

    http = make_client(keys=KeyStore.of(picpik={"abcdefg": "123456"}))
    good = PicpikClient(http, public_key="abcdefg", private_key="123456")
    assert good.call("ListModels")["RetCode"] == 0
    cases = [
        (PicpikClient(http), RetCode.AUTH_MISSING),
        (PicpikClient(http, public_key="abcdefg"), RetCode.AUTH_MISSING),
        (PicpikClient(http, public_key="abcdefg", private_key="wrong"), RetCode.AUTH_BAD_SIGNATURE),
        (PicpikClient(http, public_key="zzz", private_key="123456"), RetCode.AUTH_UNKNOWN_KEY),
    ]
    for client, code in cases:
        reply = client.call("GenerateImages", **FAST)
        assert reply["RetCode"] == code, reply
        assert "TaskUID" not in reply
    # A signed request whose body was changed after signing is refused too.
    body = {"Action": "GenerateImages", "PublicKey": "abcdefg", **FAST}
    from server.picpik.signature import sign

    body["Signature"] = sign(body, "123456")
    body["Width"] = 128
    assert http.post("/", json=body).json()["RetCode"] == RetCode.AUTH_BAD_SIGNATURE
    assert good.call("ListRunningTasks")["TaskUIDList"] == []
