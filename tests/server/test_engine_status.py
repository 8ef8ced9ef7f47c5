"""GET /readyz and /engine/status: not ready until a model is loaded (the first job loads it,
or preloading at start), the running batch with its progress, and the queue behind it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import demo_app
from tests.runware_client import rest, task


@pytest.fixture(scope="module")
def client(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = demo_app(demo_dir, tmp_path_factory.mktemp("status"))  # no preloading
    with TestClient(app) as started:
        yield started


def until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def submitted(client: TestClient, **fields: Any) -> str:
    inference = task(
        "imageInference",
        positivePrompt="a lighthouse",
        model="easel-demo",
        deliveryMethod="async",
        **fields,
    )
    (ack,) = rest(client, inference).json()["data"]
    assert ack["status"] == "processing"
    return inference["taskUUID"]


def succeeded(client: TestClient, task_uuid: str) -> bool:
    items = rest(client, task("getResponse", taskUUID=task_uuid)).json()["data"]
    return all(item["status"] == "success" for item in items)


def test_ready_after_the_first_job_with_its_batch_and_queue_in_the_status(
    client: TestClient,
) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "not ready"
    assert "no model is loaded" in response.json()["reason"]
    assert client.get("/engine/status").json() == {
        "ready": False,
        "queue": {"jobs": 0, "images": 0},
        "devices": [{"device": "cpu", "models": [], "batch": None}],
        "images_per_second": 0.0,
    }

    running = submitted(client, width=64, height=64, steps=40, numberResults=2)

    def batch_in_progress() -> dict[str, Any] | None:
        status = client.get("/engine/status").json()
        batch = status["devices"][0]["batch"]
        return status if batch is not None and batch["progress"] > 0 else None

    status = until(batch_in_progress)
    batch = status["devices"][0]["batch"]
    assert batch["model"] == "easel-demo"
    assert (batch["jobs"], batch["images"]) == (1, 2)
    assert 0 < batch["progress"] < 1
    assert status["devices"][0]["models"] == ["easel-demo"]
    assert status["ready"] is True

    # Another size cannot join the running loop: it waits in the queue.
    waiting = submitted(client, width=128, height=64, steps=2, numberResults=3)
    queue = client.get("/engine/status").json()["queue"]
    assert queue == {"jobs": 1, "images": 3}
    assert client.get("/readyz").json() == {"status": "ready"}

    until(lambda: succeeded(client, running) and succeeded(client, waiting))
    status = client.get("/engine/status").json()
    assert status["queue"] == {"jobs": 0, "images": 0}
    assert status["devices"] == [{"device": "cpu", "models": ["easel-demo"], "batch": None}]
    assert status["images_per_second"] > 0


def test_preloading_makes_the_server_ready_before_any_job(
    demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from models.catalogue import Catalogue
    from models.demo import demo_spec
    from pipelines.engine import Engine, EngineConfig
    from server.app import build_app
    from server.settings import Settings

    # An unknown code is logged and skipped; "" is the default checkpoint.
    config = EngineConfig(devices=["cpu"], cache_dir=tmp_path / "cache", preload=("nope", ""))
    engine = Engine(Catalogue([demo_spec(demo_dir)]), config)
    with (
        caplog.at_level(logging.ERROR),
        TestClient(build_app(Settings(data_dir=tmp_path), engine)) as client,
    ):
        until(lambda: client.get("/readyz").status_code == 200, timeout=30)
        assert client.get("/engine/status").json()["devices"][0]["models"] == ["easel-demo"]
    assert any("cannot preload 'nope'" in r.getMessage() for r in caplog.records)
