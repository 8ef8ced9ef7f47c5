"""The observed task store logs and counts each real state change once, with latency from the
record's creation; the engine status' readiness; images per second; a cluster's status
gathered from its workers' heartbeats."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.metrics import ImageRate
from pipelines.status import BatchStatus, DeviceStatus, EngineStatus
from server.metrics import ServerMetrics
from server.status import gathered, status_json
from server.taskstore import SqliteTaskStore, TaskRecord
from server.taskstore.observed import ObservedTaskStore


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(metrics: ServerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_state_changes_are_logged_and_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, metrics = Clock(), ServerMetrics()
    inner = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    store = ObservedTaskStore(inner, metrics, clock)
    with caplog.at_level(logging.INFO, logger="server.taskstore.observed"):
        store.create(TaskRecord("t1", "picpik", "GenerateImages", "owner", created_at=1000.0))
        store.create(TaskRecord("t2", "runware", "imageInference", "owner", created_at=1000.0))
        clock.now = 1002.0
        store.mark_running("t1")
        clock.now = 1005.5
        assert store.finish("t1", ["a", "b"], [])
        assert not store.finish("t1", ["c"], [])  # a task ends once: nothing logged
        assert not store.fail("t1", "internal", "late")
        assert store.fail("t2", "cancelled", "terminated by request")
    lines = [(r.task_id, r.state) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [
        ("t1", "queued"),
        ("t2", "queued"),
        ("t1", "running"),
        ("t1", "finished"),
        ("t2", "cancelled"),
    ]
    assert caplog.records[3].images == 2  # type: ignore[attr-defined]
    got = samples(metrics)
    picpik = {("protocol", "picpik"), ("action", "GenerateImages")}
    assert got[("easel_task_queue_seconds_sum", frozenset(picpik))] == 2.0
    finished = frozenset(picpik | {("outcome", "finished")})
    assert got[("easel_task_duration_seconds_sum", finished)] == 5.5
    assert got[("easel_task_duration_seconds_count", finished)] == 1
    cancelled = frozenset({("protocol", "runware"), ("action", "imageInference")})
    assert got[("easel_task_duration_seconds_count", cancelled | {("outcome", "cancelled")})] == 1
    assert not any(name == "easel_task_failures_total" for name, _ in got)  # a cancel is not one
    assert got[("easel_tasks_total", frozenset(picpik | {("state", "finished")}))] == 1


def test_another_process_learns_the_task_from_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cluster worker did not create the task: its protocol and action come from the record
    (the API replica created it), and a failure counts by its code."""
    path = tmp_path / "tasks.sqlite3"
    ObservedTaskStore(SqliteTaskStore(path), ServerMetrics()).create(
        TaskRecord("t1", "runware", "imageInference", "owner")
    )
    metrics = ServerMetrics()
    worker = ObservedTaskStore(SqliteTaskStore(path), metrics)
    with caplog.at_level(logging.INFO, logger="server.taskstore.observed"):
        worker.mark_running("t1")
        assert worker.fail("t1", "out_of_memory", "the device ran out of memory")
        assert worker.requeue("t1") is False
    assert [(r.state, r.protocol) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("running", "runware"),
        ("failed", "runware"),
    ]
    assert caplog.records[-1].code == "out_of_memory"  # type: ignore[attr-defined]
    failures = {("protocol", "runware"), ("action", "imageInference"), ("code", "out_of_memory")}
    assert samples(metrics)[("easel_task_failures_total", frozenset(failures))] == 1


def test_readiness_and_status_json() -> None:
    assert EngineStatus(0, 0, (), 0.0).unready_reason() == "the engine is not running"
    loading = EngineStatus(0, 0, (DeviceStatus("cuda:0", (), loading="sdxl"),), 0.0)
    assert loading.unready_reason() == "loading sdxl"
    idle = EngineStatus(0, 0, (DeviceStatus("cpu", ()),), 0.0)
    assert "no model is loaded" in (idle.unready_reason() or "")
    batch = BatchStatus("sdxl", jobs=2, images=5, progress=0.123456)
    busy = EngineStatus(3, 7, (DeviceStatus("cuda:0", ("sdxl",), batch),), 2.34567)
    assert busy.ready and busy.unready_reason() is None
    assert status_json(busy) == {
        "ready": True,
        "queue": {"jobs": 3, "images": 7},
        "devices": [
            {
                "device": "cuda:0",
                "models": ["sdxl"],
                "batch": {"model": "sdxl", "jobs": 2, "images": 5, "progress": 0.1235},
            }
        ],
        "images_per_second": 2.346,
    }


def test_a_clusters_status_from_its_workers() -> None:
    one = status_json(
        EngineStatus(1, 2, (DeviceStatus("cuda:0", ("sd1",)), DeviceStatus("cuda:1", ())), 1.5)
    )
    two = status_json(EngineStatus(0, 0, (DeviceStatus("cuda:0", ()),), 0.5))
    status = gathered({"w2@b": two, "w1@a": one}, broker_jobs=4)
    assert status["queue"] == {"jobs": 5, "images": 6}
    assert [d["device"] for d in status["devices"]] == ["w1@a/cuda:0", "w1@a/cuda:1", "w2@b/cuda:0"]
    assert status["ready"] is True
    assert status["images_per_second"] == 2.0
    assert gathered({"w": two}, 0)["ready"] is False
    assert gathered({}, 0) == {
        "ready": False,
        "queue": {"jobs": 0, "images": 0},
        "devices": [],
        "images_per_second": 0.0,
    }


def test_images_per_second_over_a_recent_window() -> None:
    clock = Clock(0.0)
    rate = ImageRate(window=30.0, clock=clock)
    clock.now = 0.5
    rate.add(4)
    assert rate.per_second() == 4.0  # a young engine: divided by at least one second
    clock.now = 10.0
    rate.add(6)
    assert rate.per_second() == 1.0  # 10 images in its 10 s
    clock.now = 35.0
    assert rate.per_second() == 6 / 30  # the first 4 left the window
    clock.now = 100.0
    assert rate.per_second() == 0.0


def test_the_rate_keeps_only_its_window_when_nobody_reads_it() -> None:
    clock = Clock(0.0)
    rate = ImageRate(window=30.0, clock=clock)
    for second in range(1000):  # a server that is never scraped or probed
        clock.now = float(second)
        rate.add(1)
    assert len(rate._events) == 31  # the last 30 s, both ends included
    assert rate.per_second() == 31 / 30
