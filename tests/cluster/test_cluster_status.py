"""An API replica's /readyz, /engine/status and /metrics view of the cluster, from the workers'
heartbeats and the broker's queues, against a real redis-server (no Celery workers)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import asdict

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.status import DeviceStatus, EngineStatus
from server.cluster.config import DEFAULT_QUEUE, ClusterConfig, model_queue
from server.cluster.dispatch import BrokerDispatcher
from server.cluster.redis_tasks import RedisTaskStore
from server.cluster.registry import WorkerBeat, WorkerRegistry
from server.status import status_json
from tests.redis_server import RedisServer


@pytest.fixture
def config(redis_server: RedisServer) -> Iterator[ClusterConfig]:
    redis_server.client().flushdb()
    yield ClusterConfig(broker_url=redis_server.url, heartbeat_s=5.0)


@pytest.fixture
def client(config: ClusterConfig) -> redis.Redis:
    return redis.Redis.from_url(config.broker_url)


def beat(name: str, models: list[str], queue: tuple[int, int] = (0, 0)) -> WorkerBeat:
    status = EngineStatus(*queue, (DeviceStatus("cuda:0", tuple(models)),), 1.25)
    return WorkerBeat(name, ["cuda:0"], [DEFAULT_QUEUE], models, status=status_json(status))


def test_readiness_status_and_metrics_from_heartbeats_and_queues(
    config: ClusterConfig, client: redis.Redis
) -> None:
    dispatcher = BrokerDispatcher(None, config, client, RedisTaskStore(client, 60))  # type: ignore[arg-type]
    registry = WorkerRegistry(client, config)
    assert "no live worker" in (asyncio.run(dispatcher.readiness()) or "")

    registry.publish(beat("w1@a", []))
    assert "no worker has a model" in (asyncio.run(dispatcher.readiness()) or "")
    assert asyncio.run(dispatcher.status())["ready"] is False

    registry.publish(beat("w2@b", ["easel-demo"], queue=(2, 5)))
    client.rpush(config.broker_key(DEFAULT_QUEUE), b"m1", b"m2")
    client.sadd(config.model_queues_key, model_queue("easel-demo"))
    client.rpush(config.broker_key(model_queue("easel-demo")), b"m3")
    assert asyncio.run(dispatcher.readiness()) is None
    assert asyncio.run(dispatcher.status()) == {
        "ready": True,
        "queue": {"jobs": 5, "images": 8},  # 3 in the broker (one image each), 2 in w2's engine
        "devices": [
            {"device": "w1@a/cuda:0", "models": [], "batch": None},
            {"device": "w2@b/cuda:0", "models": ["easel-demo"], "batch": None},
        ],
        "images_per_second": 2.5,
    }

    (registry_,) = dispatcher.metrics()
    text = generate_latest(registry_).decode()
    got = {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert (got["easel_queue_jobs"], got["easel_queue_images"]) == (5, 8)
    assert (got["easel_workers"], got["easel_workers_ready"], got["easel_ready"]) == (2, 1, 1)
    assert got["easel_images_per_second"] == 2.5


def test_beats_with_fields_this_version_does_not_know_still_read(
    config: ClusterConfig, client: redis.Redis
) -> None:
    newer = {**asdict(beat("w@c", ["x"])), "at": time.time(), "gpu_temperature": 61}
    client.hset(config.workers_key, "w@c", json.dumps(newer))
    (read,) = WorkerRegistry(client, config).live()
    assert (read.name, read.models) == ("w@c", ["x"])
