"""Per-key limits, usage and visibility through both protocols' real request paths (in-process
app over the demo model): rate and concurrency refusals in each protocol's error format, usage
counted per key, and images that only their own key can use."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.keys import (
    UNLIMITED,
    ApiKey,
    KeyPolicy,
    KeyProtocol,
    KeySet,
    KeyStore,
    runware_key_hash,
)
from server.picpik.errors import RetCode
from server.runware.serving import MICRO_DOLLARS
from tests.conftest import demo_app
from tests.parity import png_data_uri
from tests.picpik_client import PicpikClient
from tests.runware_client import rest, task

FAST = {
    "PositivePrompts": ["fast"],
    "Width": 64,
    "Height": 64,
    "MainModel": {"InferenceParams": {"Steps": 6}},
}
SLOW = {  # long enough on the CPU to still be running when the next request comes
    "PositivePrompts": ["slow"],
    "Width": 512,
    "Height": 512,
    "MainModel": {"InferenceParams": {"Steps": 100}},
}
SMALL = {"model": "easel-demo", "width": 64, "height": 64, "steps": 2}


def _picpik(name: str, policy: KeyPolicy = UNLIMITED) -> ApiKey:
    return ApiKey(KeyProtocol.PICPIK, name, f"pub-{name}", f"priv-{name}", policy=policy)


def _runware(secret: str, policy: KeyPolicy = UNLIMITED) -> ApiKey:
    return ApiKey(KeyProtocol.RUNWARE, secret, runware_key_hash(secret), policy=policy)


def _client(http: Any, key: ApiKey) -> PicpikClient:
    return PicpikClient(http, public_key=key.key_id, private_key=key.private_key)


def _inference(**fields: Any) -> dict[str, Any]:
    return task("imageInference", positivePrompt="a cat", **{**SMALL, **fields})


PICPIK_LIMITED = _picpik("limited", KeyPolicy(rate_per_s=0.01, burst=2))
PICPIK_ONE = _picpik("one", KeyPolicy(max_concurrent=1))
ALICE, BOB = _picpik("alice"), _picpik("bob")
KEYS = (
    PICPIK_LIMITED,
    PICPIK_ONE,
    ALICE,
    BOB,
    _runware("rw-limited", KeyPolicy(rate_per_s=0.01, burst=1)),
    _runware("rw-one", KeyPolicy(max_concurrent=1)),
    _runware("rw-usage"),
    _runware("rw-a"),
    _runware("rw-b"),
)


@pytest.fixture(scope="module")
def http(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module: each test uses its own keys, so their limits do not meet."""
    keys = KeyStore(KeySet(KEYS, configured=True))
    app = demo_app(demo_dir, tmp_path_factory.mktemp("keyed"), keys=keys)
    with TestClient(app) as client:
        yield client


def test_picpik_rate_limit_refuses_task_actions_only(http: TestClient) -> None:
    client = _client(http, PICPIK_LIMITED)
    first, second = (client.call("GenerateImages", **FAST) for _ in range(2))
    assert first["RetCode"] == 0 and second["RetCode"] == 0, (first, second)
    refused = client.call("GenerateImages", **FAST)
    assert refused["RetCode"] == RetCode.RATE_LIMITED == 10051
    assert "0.01 tasks per second (burst 2)" in refused["Message"] and "TaskUID" not in refused
    # Polls and listings are not task submissions: they still answer.
    assert client.wait(first["TaskUID"])["Status"] == "Finished"
    assert client.call("ListModels")["RetCode"] == 0
    # Another key has its own bucket.
    assert _client(http, ALICE).call("GenerateImages", **FAST)["RetCode"] == 0


def test_picpik_concurrency_limit_frees_up_when_a_task_ends(http: TestClient) -> None:
    client = _client(http, PICPIK_ONE)
    running = client.call("GenerateImages", **SLOW)["TaskUID"]
    refused = client.call("GenerateImages", **FAST)
    assert refused["RetCode"] == RetCode.TOO_MANY_TASKS == 10052
    assert "its limit is 1" in refused["Message"]
    assert client.call("TerminateTask", TaskUID=running)["RetCode"] == 0
    assert client.wait(running)["Status"] == "Error"
    accepted = client.call("GenerateImages", **FAST)
    assert accepted["RetCode"] == 0, accepted


def test_runware_limits_answer_per_task_with_429(http: TestClient) -> None:
    ok = rest(http, _inference(), api_key="rw-limited")
    assert ok.status_code == 200, ok.text
    second = _inference()
    refused = rest(http, second, api_key="rw-limited")
    assert refused.status_code == 429
    (error,) = refused.json()["errors"]
    assert error["code"] == "rateLimitExceeded"
    assert error["taskUUID"] == second["taskUUID"] and error["taskType"] == "imageInference"
    # getResponse and modelSearch queue nothing: not counted.
    lookup = task("getResponse", taskUUID=ok.json()["data"][0]["taskUUID"])
    assert rest(http, lookup, api_key="rw-limited").status_code == 200
    assert rest(http, task("modelSearch"), api_key="rw-limited").status_code == 200


def test_runware_concurrency_limit(http: TestClient) -> None:
    slow = _inference(width=128, height=128, steps=30, deliveryMethod="async")
    assert rest(http, slow, api_key="rw-one").status_code == 200
    refused = rest(http, _inference(), api_key="rw-one")
    assert refused.status_code == 429
    assert refused.json()["errors"][0]["code"] == "concurrentTaskLimitExceeded"
    lookup = task("getResponse", taskUUID=slow["taskUUID"])
    deadline = time.monotonic() + 60
    while rest(http, lookup, api_key="rw-one").json()["data"][0].get("status") != "success":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rest(http, _inference(), api_key="rw-one").status_code == 200


def test_usage_is_counted_per_key_on_both_protocols(http: TestClient) -> None:
    alice, bob, rw = ALICE, BOB, KEYS[6]
    before = _client(http, alice).call("GetCreditBalance")["UsedCredits"]
    store = http.app.state.services.store
    detail = _client(http, alice).generate(**FAST)
    used = _client(http, alice).call("GetCreditBalance")["UsedCredits"]
    assert used == before + detail["ConsumeApiPoint"]
    assert _client(http, bob).call("GetCreditBalance")["UsedCredits"] == 0
    reply = rest(
        http, _inference(includeCost=True), _inference(includeCost=True), api_key="rw-usage"
    )
    costs = [item["cost"] for item in reply.json()["data"]]
    assert len(costs) == 2 and all(cost > 0 for cost in costs)
    assert store.usage(rw.owner) == sum(round(cost * MICRO_DOLLARS) for cost in costs)


def test_images_are_usable_only_by_their_own_key(http: TestClient) -> None:
    upload = task("imageUpload", image=png_data_uri(Image.new("RGB", (64, 64), "red")))
    image_id = rest(http, upload, api_key="rw-a").json()["data"][0]["imageUUID"]
    result_id = rest(http, _inference(), api_key="rw-a").json()["data"][0]["imageUUID"]
    for own in (image_id, result_id):
        mine = rest(http, _inference(seedImage=own, strength=0.5), api_key="rw-a")
        assert mine.status_code == 200, mine.text
        theirs = rest(http, _inference(seedImage=own, strength=0.5), api_key="rw-b")
        assert theirs.status_code == 400
        (error,) = theirs.json()["errors"]
        assert error["code"] == "invalidImage" and error["parameter"] == "seedImage"
        assert f"no image with imageUUID {own}" in error["message"]
        # Re-uploading someone else's id does not adopt it either.
        claim = rest(http, task("imageUpload", image=own), api_key="rw-b")
        assert claim.status_code == 400 and claim.json()["errors"][0]["code"] == "invalidImage"
    # getResponse of another key's task finds nothing.
    lookup = task("getResponse", taskUUID=upload["taskUUID"])
    assert rest(http, lookup, api_key="rw-b").json()["errors"][0]["code"] == "taskNotFound"
