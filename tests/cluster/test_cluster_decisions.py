"""The cluster's decisions, against a real redis-server but without Celery workers: where a job
is queued, what TerminateTask does to a queued or running task, and when a delivered task must
not run (ended, cancelled, leased by a live worker, unreadable)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from pipelines.batching.stats import EngineStats
from pipelines.handle import JobHandle
from pipelines.job_codec import encode_job
from pipelines.jobs import ErrorCode, GenerationJob, JobError, JobKind
from server.cluster.celery_app import make_celery
from server.cluster.config import DEFAULT_QUEUE, ClusterConfig, model_queue
from server.cluster.dispatch import BrokerDispatcher
from server.cluster.redis_results import RedisResultStore
from server.cluster.redis_tasks import RedisTaskStore
from server.cluster.registry import WorkerBeat, WorkerRegistry
from server.cluster.worker import WorkerRuntime
from server.taskstore import TaskRecord, TaskStatus
from server.tracking import TaskTracker
from tests.redis_server import RedisServer


@pytest.fixture
def config(redis_server: RedisServer) -> Iterator[ClusterConfig]:
    redis_server.client().flushdb()
    yield ClusterConfig(broker_url=redis_server.url, heartbeat_s=0.2)


@pytest.fixture
def client(config: ClusterConfig) -> redis.Redis:
    return redis.Redis.from_url(config.broker_url)


class NoEngine:
    """The worker's engine, for deliveries that must never reach it."""

    devices = ("cpu",)
    stats = EngineStats()

    def submit(self, *_: Any, **__: Any) -> None:
        raise AssertionError("this delivery must not run")

    def loaded_models(self) -> list[str]:
        return []


def job() -> GenerationJob:
    return GenerationJob(
        kind=JobKind.TXT2IMG,
        model="easel-demo",
        prompt="a cat",
        width=64,
        height=64,
        steps=2,
        guidance_scale=7.0,
        seeds=(1,),
    )


def queued(store: RedisTaskStore, task_id: str = "t1") -> str:
    store.create(TaskRecord(task_id, "picpik", "GenerateImages", "owner"))
    return task_id


def runtime(config: ClusterConfig) -> WorkerRuntime:
    return WorkerRuntime(NoEngine(), config, "w1@test", make_celery(config))  # type: ignore[arg-type]


# --- routing ---


def test_a_job_goes_to_its_model_queue_only_while_a_live_worker_consumes_it(
    config: ClusterConfig, client: redis.Redis
) -> None:
    store = RedisTaskStore(client, 60)
    dispatcher = BrokerDispatcher(None, config, client, store)  # type: ignore[arg-type]
    assert dispatcher._queue_for(None) == DEFAULT_QUEUE  # preprocessing
    assert dispatcher._queue_for("easel-demo") == DEFAULT_QUEUE  # nobody holds it

    beat = WorkerBeat("w1@test", ["cuda:0"], [DEFAULT_QUEUE, model_queue("easel-demo")], [])
    WorkerRegistry(client, config).publish(beat)
    dispatcher._routes = (0.0, set())  # forget the cached view
    assert dispatcher._queue_for("easel-demo") == "easel.model.easel-demo"
    assert dispatcher._queue_for("other") == DEFAULT_QUEUE

    time.sleep(config.lease_s + 0.1)  # the worker stopped beating
    dispatcher._routes = (0.0, set())
    assert dispatcher._queue_for("easel-demo") == DEFAULT_QUEUE


def test_model_queue_names_stay_plain() -> None:
    assert model_queue("sd_xl-base.1") == "easel.model.sd_xl-base.1"
    assert model_queue("a b/c*") == "easel.model.a_b_c_"


# --- TerminateTask ---


def test_terminating_a_queued_task_ends_it_at_once(
    config: ClusterConfig, client: redis.Redis
) -> None:
    store = RedisTaskStore(client, 60)
    dispatcher = BrokerDispatcher(None, config, client, store)  # type: ignore[arg-type]
    task_id = queued(store)
    assert dispatcher.cancel(task_id)
    record = store.get(task_id)
    assert (record.status, record.error_code) == (TaskStatus.ERROR, "cancelled")
    assert client.exists(config.cancel_key(task_id))
    assert not dispatcher.cancel(task_id)  # ended
    assert not dispatcher.cancel("unknown")


def test_terminating_a_running_task_leaves_it_to_its_worker(
    config: ClusterConfig, client: redis.Redis
) -> None:
    store = RedisTaskStore(client, 60)
    dispatcher = BrokerDispatcher(None, config, client, store)  # type: ignore[arg-type]
    task_id = queued(store)
    store.mark_running(task_id)
    assert dispatcher.cancel(task_id)
    assert store.get(task_id).status is TaskStatus.RUNNING  # the worker stops it, then fails it
    assert client.exists(config.cancel_key(task_id))


# --- deliveries that must not run ---


def test_a_delivery_of_an_ended_or_expired_task_is_dropped(config: ClusterConfig) -> None:
    worker = runtime(config)
    task_id = queued(worker.store)
    worker.store.finish(task_id, ["image"], [])
    worker.run(task_id, encode_job(job()), {"format": "png", "quality": 95})
    worker.run("expired", encode_job(job()), {"format": "png", "quality": 95})
    assert worker.store.attempts(task_id) == 0
    assert worker.store.get(task_id).image_ids == ["image"]


def test_a_delivery_of_a_cancelled_task_fails_it_without_running(
    config: ClusterConfig, client: redis.Redis
) -> None:
    worker = runtime(config)
    task_id = queued(worker.store)
    client.set(config.cancel_key(task_id), b"1")
    worker.run(task_id, encode_job(job()), {"format": "png", "quality": 95})
    record = worker.store.get(task_id)
    assert (record.status, record.error_code) == (TaskStatus.ERROR, "cancelled")
    assert worker.store.attempts(task_id) == 0


def test_a_second_delivery_waits_for_the_live_lease_holder(
    config: ClusterConfig, client: redis.Redis
) -> None:
    worker = runtime(config)
    task_id = queued(worker.store)
    worker.store.mark_running(task_id)
    client.set(config.lease_key(task_id), b"w0@elsewhere", px=60_000)  # a live holder
    delivery = threading.Thread(
        target=worker.run, args=(task_id, encode_job(job()), {"format": "png", "quality": 95})
    )
    delivery.start()
    time.sleep(0.5)
    assert delivery.is_alive()  # waiting, not running
    worker.store.finish(task_id, ["image"], [])  # the holder finished
    delivery.join(timeout=5)
    assert not delivery.is_alive()
    assert worker.store.attempts(task_id) == 0
    assert client.get(config.lease_key(task_id)) == b"w0@elsewhere"  # not released by us


def test_a_redelivery_waits_for_this_workers_own_run_after_its_lease_lapsed(
    config: ClusterConfig, client: redis.Redis
) -> None:
    """A Redis outage longer than the lease: at reconnection the broker hands the message out
    again, to the worker still running it; the lease key is gone, but the run is not."""
    worker = runtime(config)
    task_id = queued(worker.store)
    worker.store.mark_running(task_id)
    worker._leases.add(task_id)  # the first delivery's run goes on; its key lapsed
    delivery = threading.Thread(
        target=worker.run, args=(task_id, encode_job(job()), {"format": "png", "quality": 95})
    )
    delivery.start()
    time.sleep(0.5)
    assert delivery.is_alive()  # waiting, not running the job a second time
    assert not client.exists(config.lease_key(task_id))
    worker.store.finish(task_id, ["image"], [])  # the first run finished
    delivery.join(timeout=5)
    assert not delivery.is_alive()
    assert worker.store.attempts(task_id) == 0


def test_a_delivery_whose_task_ended_while_it_took_the_lease_is_dropped(
    config: ClusterConfig, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run it waited for finished and let the lease go just before this delivery took it."""
    worker = runtime(config)
    task_id = queued(worker.store)
    worker.store.mark_running(task_id)
    running = worker.store.get(task_id)
    worker.store.finish(task_id, ["image"], [])
    reads = iter([running])  # the first read (before the lease) still sees it running
    real_get = worker.store.get
    monkeypatch.setattr(worker.store, "get", lambda tid: next(reads, None) or real_get(tid))
    worker.run(task_id, encode_job(job()), {"format": "png", "quality": 95})
    assert worker.store.attempts(task_id) == 0
    assert not client.exists(config.lease_key(task_id))  # taken, then let go


def test_the_heartbeat_takes_back_a_lapsed_lease_but_not_one_taken_over(
    config: ClusterConfig, client: redis.Redis
) -> None:
    worker = runtime(config)
    lapsed, taken = config.lease_key("lapsed"), config.lease_key("taken")
    client.set(taken, b"w2@elsewhere", px=60_000)
    for key in (lapsed, taken):
        worker._refresh(keys=[key], args=[worker.name, 5_000])
    assert client.get(lapsed) == worker.name.encode() and 0 < client.pttl(lapsed) <= 5_000
    assert client.get(taken) == b"w2@elsewhere"


def test_an_unreadable_job_fails_its_task_and_frees_the_lease(
    config: ClusterConfig, client: redis.Redis
) -> None:
    worker = runtime(config)
    task_id = queued(worker.store)
    payload = encode_job(job())
    payload["fields"]["width"] = "wide"
    worker.run(task_id, payload, {"format": "png", "quality": 95})
    record = worker.store.get(task_id)
    assert (record.status, record.error_code) == (TaskStatus.ERROR, "invalid_input")
    assert "width" in record.error_message
    assert worker.store.attempts(task_id) == 1
    assert not client.exists(config.lease_key(task_id))


def test_a_lapsed_lease_is_taken_over(config: ClusterConfig, client: redis.Redis) -> None:
    worker = runtime(config)
    task_id = queued(worker.store)
    client.set(config.lease_key(task_id), b"w0@dead", px=300)  # its holder stopped beating
    payload = encode_job(job())
    payload["fields"]["width"] = "wide"  # fails right after taking the lease: no engine needed
    worker.run(task_id, payload, {"format": "png", "quality": 95})
    assert worker.store.attempts(task_id) == 1


def test_registry_lists_live_workers_only(config: ClusterConfig, client: redis.Redis) -> None:
    registry = WorkerRegistry(client, config)
    registry.publish(WorkerBeat("a@x", ["cpu"], [DEFAULT_QUEUE], ["m"], stats={"joins": 3}))
    registry.publish(WorkerBeat("b@x", ["cpu"], [DEFAULT_QUEUE, model_queue("m")], ["m"]))
    assert sorted(beat.name for beat in registry.live()) == ["a@x", "b@x"]
    assert registry.consumed_queues() == {DEFAULT_QUEUE, "easel.model.m"}
    registry.withdraw("a@x")
    assert [beat.name for beat in registry.live()] == ["b@x"]


def test_a_job_interrupted_on_a_worker_leaves_its_task_for_another(
    config: ClusterConfig, client: redis.Redis
) -> None:
    store = RedisTaskStore(client, 60)
    results = RedisResultStore(client, 60)
    task_id = queued(store)

    async def interrupted(tracker: TaskTracker, task: str) -> None:
        handle = JobHandle(task, job(), asyncio.get_running_loop(), lambda _: None)
        follower = tracker.follow(task, handle)
        handle.fail(JobError(ErrorCode.INTERRUPTED, "the worker stopped"))
        await follower

    asyncio.run(interrupted(TaskTracker(store, results, record_interruptions=False), task_id))
    assert store.get(task_id).status is TaskStatus.QUEUED  # the message goes back to the queue
    # On one machine an interruption is final: the task ends as interrupted.
    asyncio.run(interrupted(TaskTracker(store, results), task_id))
    assert store.get(task_id).error_code == "interrupted"
