"""GET /metrics: Prometheus text that moves with the work done (images, task latency by action,
batch sizes, step times, model loads), failures by the engine's code and error replies by each
protocol's code; one log line per task state change; GPU memory from a faked torch.cuda."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import demo_app
from tests.runware_client import rest, task

SMALL = {"model": "easel-demo", "width": 64, "height": 64, "steps": 2}
INFERENCE = ("runware", "imageInference")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def client(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = demo_app(demo_dir, tmp_path_factory.mktemp("metrics"))
    with TestClient(app) as started:
        yield started


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def inference(**fields: Any) -> dict[str, Any]:
    return task("imageInference", positivePrompt="a lighthouse", **{**SMALL, **fields})


def test_a_job_moves_the_metrics(client: TestClient) -> None:
    before = scrape(client)
    assert ("easel_queue_jobs", frozenset()) in before
    assert ("easel_queue_images", frozenset()) in before
    assert value(before, "easel_ready") in (0.0, 1.0)

    reply = rest(client, inference(numberResults=2, seed=3))
    assert reply.status_code == 200, reply.text
    after = scrape(client)

    protocol, action = INFERENCE
    assert value(after, "easel_images_total") == value(before, "easel_images_total") + 2
    assert value(after, "easel_jobs_total", outcome="finished") >= 1
    latency = dict(protocol=protocol, action=action, outcome="finished")
    count_before = value(before, "easel_task_duration_seconds_count", **latency)
    assert value(after, "easel_task_duration_seconds_count", **latency) == count_before + 1
    assert value(after, "easel_task_duration_seconds_sum", **latency) > 0
    queued = dict(protocol=protocol, action=action, state="queued")
    assert (
        value(after, "easel_tasks_total", **queued)
        == value(before, "easel_tasks_total", **queued) + 1
    )
    assert value(after, "easel_task_queue_seconds_count", protocol=protocol, action=action) >= 1
    # Two steps of one batched forward of two images (the two results share it).
    forwards = value(after, "easel_batch_images_count") - value(before, "easel_batch_images_count")
    assert forwards >= 2
    images = value(after, "easel_batch_images_sum") - value(before, "easel_batch_images_sum")
    assert images == 2 * forwards
    assert value(after, "easel_batch_images_bucket", le="1.0") == value(
        before, "easel_batch_images_bucket", le="1.0"
    )
    assert value(after, "easel_step_seconds_count", device="cpu") > value(
        before, "easel_step_seconds_count", device="cpu"
    )
    assert value(after, "easel_step_seconds_sum", device="cpu") > 0
    assert value(after, "easel_model_loads_total", device="cpu") >= 1
    assert value(after, "easel_model_load_seconds_count", device="cpu") >= 1
    assert value(after, "easel_models_loaded", device="cpu") == 1
    assert value(after, "easel_ready") == 1
    assert value(after, "easel_images_per_second") > 0
    # The CPU has no GPU memory series.
    assert not any(name.startswith("easel_gpu_memory") for name, _ in after)


def test_failures_by_engine_code_and_refusals_by_protocol_code(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.denoise_loop import DenoiseLoop
    from pipelines.jobs import ErrorCode, JobError

    def refuse(*_args: Any) -> None:  # the job fails while it runs
        raise JobError(ErrorCode.INVALID_INPUT, "the worker refused this job")

    before = scrape(client)
    monkeypatch.setattr(DenoiseLoop, "step", refuse)
    failing = inference()
    with caplog.at_level(logging.INFO, logger="server.taskstore.observed"):
        errors = rest(client, failing).json()["errors"]
    assert [e["code"] for e in errors] == ["invalidParameter"]
    monkeypatch.undo()
    unknown = rest(client, inference(model="no-such-model")).json()["errors"]
    assert [e["code"] for e in unknown] == ["unknownModel"]
    picpik = client.post("/", content=b"{}").json()  # no Action
    assert picpik["RetCode"] == 10001
    with client.websocket_connect("/v1") as socket:
        socket.send_text(json.dumps([task("makeCoffee")]))
        (error,) = socket.receive_json()["errors"]
    assert error["code"] == "unknownTaskType"
    after = scrape(client)

    protocol, action = INFERENCE
    failure = dict(protocol=protocol, action=action, code="invalid_input")
    assert value(after, "easel_task_failures_total", **failure) == (
        value(before, "easel_task_failures_total", **failure) + 1
    )
    failed = dict(protocol=protocol, action=action, outcome="failed")
    assert value(after, "easel_task_duration_seconds_count", **failed) == (
        value(before, "easel_task_duration_seconds_count", **failed) + 1
    )
    for code_labels in (
        dict(protocol="runware", code="invalidParameter"),
        dict(protocol="runware", code="unknownModel"),
        dict(protocol="picpik", code="10001"),
        dict(protocol="runware", code="unknownTaskType"),
    ):
        assert value(after, "easel_error_replies_total", **code_labels) == (
            value(before, "easel_error_replies_total", **code_labels) + 1
        ), code_labels
    assert value(after, "easel_jobs_total", outcome="failed") >= 1

    # One log line per state change of the failed task, with its id and no prompt.
    task_id = failing["taskUUID"]
    lines = [r for r in caplog.records if getattr(r, "task_id", None) == task_id]
    assert [r.state for r in lines] == ["queued", "running", "failed"]  # type: ignore[attr-defined]
    assert all(r.protocol == protocol and r.action == action for r in lines)  # type: ignore[attr-defined]
    assert lines[-1].code == "invalid_input"  # type: ignore[attr-defined]
    assert not any("lighthouse" in r.getMessage() for r in caplog.records)


def test_gpu_memory_comes_from_torch_cuda_for_cuda_devices_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from pipelines.batching.stats import EngineStats
    from pipelines.metrics import EngineMetrics
    from pipelines.status import EngineStatus

    class Properties:
        total_memory = 80 * 2**30

    allocated = {"cuda:0": 3 * 2**30, "cuda:1": 5 * 2**30}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: allocated[d])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: allocated[d] + 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Properties())

    def idle() -> EngineStatus:
        return EngineStatus(0, 0, (), 0.0)

    def gpu_samples(devices: list[str]) -> Samples:
        from prometheus_client import generate_latest

        metrics = EngineMetrics(EngineStats(), idle, devices)
        text = generate_latest(metrics.registry).decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("easel_gpu_memory")
        }

    samples = gpu_samples(["cuda:0", "cuda:1"])
    assert value(samples, "easel_gpu_memory_allocated_bytes", device="cuda:0") == 3 * 2**30
    assert value(samples, "easel_gpu_memory_allocated_bytes", device="cuda:1") == 5 * 2**30
    assert value(samples, "easel_gpu_memory_reserved_bytes", device="cuda:1") == 6 * 2**30
    assert value(samples, "easel_gpu_memory_total_bytes", device="cuda:0") == 80 * 2**30
    assert len(samples) == 6
    assert gpu_samples(["cpu"]) == {}
