"""A worker that loses Redis mid-job reconnects and still delivers the job's images, once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.cluster.redis_tasks import RedisTaskStore
from tests.cluster.clients import LONG_JOB, download, picpik, wait_running
from tests.cluster.processes import Cluster


@pytest.fixture()
def small_cluster(tmp_path: Path, demo_root: Path) -> Iterator[Cluster]:
    # Append-only Redis: its data survive the restart.
    with Cluster(tmp_path, demo_root, persistent_redis=True).running(apis=1, workers=1) as up:
        yield up


def test_worker_rides_out_a_redis_restart(small_cluster: Cluster) -> None:
    client = picpik(small_cluster.apis[0].url)
    reply = client.call("GenerateImages", Seed=4, **LONG_JOB)
    task_id = reply["TaskUID"]
    wait_running(client, task_id)

    small_cluster.redis.stop()  # the job goes on; its progress and results cannot be written
    time.sleep(5)  # longer than what is left of the job: it ends while Redis is away
    small_cluster.redis.start()

    detail = client.wait(task_id, timeout=120)
    assert detail["Status"] == "Finished", small_cluster.logs()
    assert [download(url).shape for url in detail["ImgList"]] == [(192, 192, 3)]
    store = RedisTaskStore(small_cluster.redis.client(), 3600)
    assert store.attempts(task_id) == 1, small_cluster.logs()  # the run that lived through it
    # The worker is connected again: a new task runs.
    after = client.generate(
        MainModel={"ModelCode": "easel-demo", "InferenceParams": {"Steps": 6}},
        Width=64,
        Height=64,
        Seed=1,
    )
    assert after["Status"] == "Finished"
    assert httpx.get(small_cluster.apis[0].url + "/healthz").status_code == 200
