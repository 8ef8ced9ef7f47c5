"""The cluster end to end: real redis-server, two `easel serve --broker` replicas and two
`easel worker`s as processes, clients over real sockets.

A task accepted by one replica is polled, downloaded, answered and terminated through the other;
a worker killed with SIGKILL mid-job does not lose the task nor duplicate its images; the jobs
of separate tasks share forward passes in a worker.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipelines.jobs import CaptionJob, JobResult
from server.cluster.redis_tasks import RedisTaskStore
from tests.cluster.clients import LONG_JOB, download, picpik, wait_running
from tests.cluster.processes import Cluster
from tests.e2e.test_runware_sdks import CLIENT_TIMEOUT_S, CLIENTS_DIR, sdk_folder
from tests.engine_harness import run_jobs
from tests.models import tiny
from tests.models.tiny_blip import save_tiny_blip
from tests.picpik_client import PicpikClient

MODEL = {"ModelCode": "easel-demo", "InferenceParams": {"Steps": 6}}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every replica and worker shares the catalogue: the demo model, and a tiny checkpoint
    under the Runware AIR id the official SDK's scenarios ask for."""
    root = tmp_path_factory.mktemp("models")
    pipe = tiny.tiny_sd1_pipeline(tmp_path_factory.mktemp("tokenizers"))
    tiny.save_single_file(pipe, root / "checkpoints" / "tiny.safetensors")
    tiny.save_config_dir(pipe, root / "configs" / "tiny", like="sd15")
    (root / "manifest.toml").write_text(
        '[aliases]\n"runware:100@1" = "tiny"\n'
        '[models."checkpoints/tiny.safetensors"]\nconfig = "configs/tiny"\n'
    )
    save_tiny_blip(root / "caption" / "blip-tiny")  # utility tasks run on the workers too
    return root


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, demo_root: Path, models_dir: Path
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    with Cluster(root, demo_root, "--models-dir", str(models_dir)).running(apis=2, workers=2) as up:
        yield up


def runware(url: str, *tasks: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = httpx.post(url + "/v1", json=list(tasks), timeout=120)
    assert response.status_code == status, response.text
    return response.json()


def inference(**fields: Any) -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "positivePrompt": "a lighthouse",
        "model": "easel-demo",
        "width": 64,
        "height": 64,
        "steps": 4,
        **fields,
    }


def test_picpik_task_submitted_to_one_replica_is_polled_and_downloaded_from_the_other(
    cluster: Cluster, make_client: Any
) -> None:
    first, second = (picpik(api.url) for api in cluster.apis)
    request = dict(MainModel=MODEL, PositivePrompts=["a red boat"], Width=64, Height=64, Seed=21)
    reply = first.call("GenerateImages", BatchSize=2, **request)
    assert reply["RetCode"] == 0, reply
    detail = second.wait(reply["TaskUID"])
    assert detail["Status"] == "Finished", detail
    assert len(detail["ImgList"]) == 2
    assert all(url.startswith(cluster.apis[1].url) for url in detail["ImgList"])
    images = [download(url) for url in detail["ImgList"]]
    assert not np.array_equal(images[0], images[1])

    # Parity: the same request on a single-machine server gives the same pixels.
    local: TestClient = make_client()
    local_reply = local.post("/", json={"Action": "GenerateImages", "BatchSize": 2, **request})
    local_detail = PicpikClient(local).wait(local_reply.json()["TaskUID"])  # type: ignore[arg-type]
    expected = [
        np.asarray(Image.open(io.BytesIO(local.get(url).content)).convert("RGB"))
        for url in local_detail["ImgList"]
    ]
    for got, want in zip(images, expected, strict=True):
        assert np.array_equal(got, want)


def test_picpik_errors_and_listings_work_on_any_replica(cluster: Cluster) -> None:
    client = picpik(cluster.apis[0].url)
    bad = client.call("GenerateImages", MainModel={"ModelCode": "no-such-model"}, Width=64)
    assert bad["RetCode"] != 0 and "no-such-model" in bad["Message"]
    missing = picpik(cluster.apis[1].url).call("ListTasksDetails", TaskUIDList=["nope"])
    assert missing["RetCode"] != 0


def test_runware_async_task_is_answered_by_the_other_replica(cluster: Cluster) -> None:
    first, second = (api.url for api in cluster.apis)
    upload = runware(
        first,
        {
            "taskType": "imageUpload",
            "taskUUID": str(uuid.uuid4()),
            "image": _data_uri(Image.new("RGB", (64, 64), "navy")),
        },
    )
    image_uuid = upload["data"][0]["imageUUID"]
    # The upload lives in Redis: the other replica takes it as a seed image.
    task = inference(seedImage=image_uuid, strength=0.6, deliveryMethod="async", seed=5)
    accepted = runware(second, task)
    assert accepted["data"][0]["status"] == "processing", accepted
    deadline = time.monotonic() + 120
    while True:
        polled = runware(first, {"taskType": "getResponse", "taskUUID": task["taskUUID"]})
        items = polled.get("data", [])
        if items and items[0].get("status") == "success":
            break
        assert "errors" not in polled, polled
        assert time.monotonic() < deadline, "getResponse never reported success"
        time.sleep(0.1)
    (item,) = items
    assert item["seed"] == 5
    assert item["imageURL"].startswith(first)
    assert download(item["imageURL"]).shape == (64, 64, 3)
    assert httpx.get(second + item["imageURL"][len(first) :]).status_code == 200


def test_runware_sync_task_and_conflicting_task_uuid(cluster: Cluster) -> None:
    task = inference(seed=9, numberResults=2, outputType=["URL", "base64Data"])
    reply = runware(cluster.apis[0].url, task)
    assert [item["seed"] for item in reply["data"]] == [9, 10]
    assert all(item["imageBase64Data"] for item in reply["data"])
    # The taskUUID is taken cluster-wide, whichever replica sees it again.
    again = runware(cluster.apis[1].url, task, status=400)
    assert again["errors"][0]["code"] == "conflictTaskUUID"


def test_the_official_runware_sdk_runs_against_a_replica(cluster: Cluster, tmp_path: Path) -> None:
    """runware-sdk 1.x over its WebSocket: default async delivery (ACK, then getResponse
    polling) and sync delivery, the images served by the other replica too."""
    first, second = (api.url for api in cluster.apis)
    command = [
        sys.executable,
        str(CLIENTS_DIR / "runware_sdk_1.py"),
        first,
        "any-key",  # the cluster runs open
        "websocket",
        "txt2img,txt2img_sync",
        str(tmp_path),
    ]
    sdk = sdk_folder("runware-sdk")
    env = {**os.environ, "PYTHONPATH": str(sdk), "RUNWARE_API_KEY": ""}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for scenario in ("txt2img", "txt2img_sync"):
        assert results[scenario]["ok"], results[scenario]
        images = results[scenario]["images"]
        assert [image["seed"] for image in images] == [1234, 1235]
        pixels = [download(second + image["imageURL"][len(first) :]) for image in images]
        assert not np.array_equal(pixels[0], pixels[1])


def test_terminate_task_through_the_replica_that_did_not_accept_it(cluster: Cluster) -> None:
    first, second = (picpik(api.url) for api in cluster.apis)
    reply = first.call("GenerateImages", Seed=1, **LONG_JOB)
    task_id = reply["TaskUID"]
    wait_running(second, task_id)
    started = time.monotonic()
    assert second.call("TerminateTask", TaskUID=task_id)["RetCode"] == 0
    detail = first.wait(task_id, timeout=60)
    assert detail["Status"] == "Error"
    assert "terminated" in detail["ErrorMassage"]
    assert time.monotonic() - started < 5  # it stopped at a step boundary
    again = second.call("TerminateTask", TaskUID=task_id)
    assert again["RetCode"] != 0  # already ended


def test_a_task_terminated_right_after_submission_never_delivers_images(
    cluster: Cluster,
) -> None:
    first, second = (picpik(api.url) for api in cluster.apis)
    # Long jobs of another size keep the workers' loops busy, so the task usually still waits
    # (queued: the replica ends it at once); if a worker already took it, the flag stops it.
    blockers = [first.call("GenerateImages", Seed=s, **LONG_JOB)["TaskUID"] for s in range(2)]
    reply = first.call("GenerateImages", MainModel=MODEL, Width=64, Height=64, Seed=3)
    assert second.call("TerminateTask", TaskUID=reply["TaskUID"])["RetCode"] == 0
    detail = first.wait(reply["TaskUID"])
    assert (detail["Status"], detail["ImgList"]) == ("Error", [])
    assert "terminated" in detail["ErrorMassage"]
    for blocker in blockers:
        assert second.call("TerminateTask", TaskUID=blocker)["RetCode"] == 0
        assert first.wait(blocker)["Status"] == "Error"


def test_jobs_of_separate_tasks_share_forward_passes_in_a_worker(cluster: Cluster) -> None:
    clients = [picpik(api.url) for api in cluster.apis]
    before = _batched_forwards(cluster)
    results: list[dict[str, Any]] = []

    def submit(i: int) -> None:
        job = {"ModelCode": "easel-demo", "InferenceParams": {"Steps": 20}}
        detail = clients[i % 2].generate(
            MainModel=job, PositivePrompts=[f"prompt {i}"], Width=64, Height=64, Seed=i
        )
        results.append(detail)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [d["Status"] for d in results] == ["Finished"] * 8
    time.sleep(2)  # the next heartbeats carry the workers' statistics
    assert _batched_forwards(cluster) > before
    # Workers that loaded the model took its queue: its next jobs go straight to them.
    stats = httpx.get(cluster.apis[1].url + "/engine/stats", timeout=10).json()
    holders = [w for w in stats["workers"].values() if "easel-demo" in w["models"]]
    assert holders
    assert all("easel.model.easel-demo" in w["queues"] for w in holders)


def _batched_forwards(cluster: Cluster) -> int:
    """Forward passes that held more than one image, plus loop joins, over live workers."""
    stats = httpx.get(cluster.apis[0].url + "/engine/stats", timeout=10).json()
    assert stats["cluster"] is True
    total = 0
    for worker in stats["workers"].values():
        sizes = worker["stats"]["batch_sizes"]
        total += sum(count for size, count in sizes.items() if int(size) > 1)
        total += worker["stats"]["joins"]
    return total


def test_a_killed_worker_task_finishes_once(cluster: Cluster) -> None:
    client = cluster.redis.client()
    store = RedisTaskStore(client, 3600)
    first, second = (picpik(api.url) for api in cluster.apis)
    images_before = len(list(client.scan_iter(match="easel:image:*")))
    reply = first.call("GenerateImages", BatchSize=2, Seed=7, **LONG_JOB)
    task_id = reply["TaskUID"]
    wait_running(second, task_id)
    holder = client.get(f"easel:lease:{task_id}").decode()
    victim = next(w for w in cluster.workers if w.name == holder)
    victim.kill()
    cluster.workers.remove(victim)

    detail = second.wait(task_id, timeout=180)
    assert detail["Status"] == "Finished", detail
    assert len(detail["ImgList"]) == 2
    assert store.attempts(task_id) == 2  # delivered again after the worker died
    images_after = len(list(client.scan_iter(match="easel:image:*")))
    assert images_after - images_before == 2  # no image of the lost run, no duplicates
    assert [download(url).shape for url in detail["ImgList"]] == [(192, 192, 3)] * 2
    cluster.add_worker("worker-replacement")


def test_a_worker_told_to_stop_finishes_its_running_job_first(cluster: Cluster) -> None:
    client = cluster.redis.client()
    store = RedisTaskStore(client, 3600)
    first, second = (picpik(api.url) for api in cluster.apis)
    reply = first.call("GenerateImages", Seed=8, **LONG_JOB)
    task_id = reply["TaskUID"]
    wait_running(second, task_id)
    holder = client.get(f"easel:lease:{task_id}").decode()
    worker = next(w for w in cluster.workers if w.name == holder)
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)  # warm shutdown: no new jobs, finish this one
    detail = second.wait(task_id, timeout=120)
    assert detail["Status"] == "Finished", detail
    assert store.attempts(task_id) == 1  # finished by the worker that was stopping
    assert worker.process.wait(60) == 0
    cluster.workers.remove(worker)
    cluster.add_worker("worker-after-stop")


def _data_uri(image: Image.Image) -> str:
    import base64

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_utility_task_runs_on_a_worker_and_answers_on_any_replica(
    cluster: Cluster, models_dir: Path, tmp_path: Path
) -> None:
    """A caption task travels like a generation job: accepted by one replica (async), run by a
    worker, its text read back through the other replica; the same text as one machine's."""
    picture = Image.new("RGB", (40, 32), (200, 40, 40))
    picture.paste((20, 20, 220), (10, 8, 30, 24))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    task_uuid = str(uuid.uuid4())
    task = {"taskType": "caption", "taskUUID": task_uuid, "inputImage": image}
    (ack,) = runware(cluster.apis[0].url, {**task, "deliveryMethod": "async"})["data"]
    assert ack["status"] == "processing"
    poll = {"taskType": "getResponse", "taskUUID": task_uuid}
    deadline = time.monotonic() + 120
    while True:
        (item,) = runware(cluster.apis[1].url, poll)["data"]
        if item["status"] != "processing" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    (expected,) = run_jobs(models_dir, tmp_path / "data", [CaptionJob(images=(picture,))])
    assert isinstance(expected, JobResult)
    assert item == {
        "taskType": "caption",
        "taskUUID": task_uuid,
        "status": "success",
        "text": expected.texts[0],
    }
