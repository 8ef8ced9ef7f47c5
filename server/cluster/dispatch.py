"""The API replica's side of the cluster: queue jobs on Celery, wait for their records in Redis.

The replica validates a job against its own catalogue (so bad requests fail at once, in the
protocol's own format), then publishes it to its model's queue when some live worker consumes
that queue (a worker that has the model loaded), else to the default queue that every worker
consumes. Workers write progress, images and the final state into Redis; a single watcher per
replica polls the status of every task a client is waiting on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipelines.engine import Engine
from pipelines.handle import CANCELLED_BY_REQUEST
from pipelines.job_codec import JobCodecError, encode_job
from pipelines.jobs import ErrorCode, Job, JobError
from server.cluster.celery_app import make_celery
from server.cluster.config import DEFAULT_QUEUE, TASK_NAME, ClusterConfig, model_queue
from server.cluster.redis_client import connect, reply_text
from server.cluster.redis_results import RedisResultStore
from server.cluster.redis_tasks import RedisTaskStore
from server.cluster.registry import WorkerBeat, WorkerRegistry
from server.dispatch import Backend, ResumeDelivery
from server.metrics import ServerMetrics
from server.results import PNG, Encoding
from server.status import gathered
from server.taskstore import TaskStatus, TaskStore
from server.taskstore.observed import ObservedTaskStore

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.05  # how often a replica looks at the tasks its clients wait on
ROUTES_TTL_S = 1.0  # how long a replica trusts its view of which queues are consumed
_ENDED = {TaskStatus.FINISHED.value.encode(), TaskStatus.ERROR.value.encode()}


class RedisKeyedTaskStore(TaskStore, Protocol):
    """A TaskStore whose records are Redis hashes: RedisTaskStore, or a store wrapping one."""

    def key(self, task_id: str) -> str: ...


def encoding_fields(encoding: Encoding) -> dict[str, Any]:
    return {"format": encoding.format.value, "quality": encoding.quality}


class BrokerDispatcher:
    def __init__(
        self,
        engine: Engine,
        config: ClusterConfig,
        client: redis.Redis,
        store: RedisKeyedTaskStore,
    ) -> None:
        self.engine = engine
        self.config = config
        self.client = client
        self.store = store
        self.celery = make_celery(config)
        self.registry = WorkerRegistry(client, config)
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._publishers: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._watcher: asyncio.Task[None] | None = None
        self._routes: tuple[float, set[str]] = (0.0, set())
        self._metrics = CollectorRegistry()
        self._metrics.register(_ClusterMetrics(self))

    async def start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def on_recovered(self, protocol: str, resume: ResumeDelivery) -> None:
        """Nothing to do: tasks live on in Redis and in the queues across restarts; a
        replica's deliveries (Runware webhookURL / uploadEndpoint) are not resumed."""

    def drain(self) -> None:
        """Nothing to do: the workers run the queued tasks whether or not this replica stays
        (a task it accepts while closing is queued in Redis like any other)."""

    def waiting_request(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # nothing to hold: the workers keep running

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for done in self._waiting.values():
            done.cancel()
        self._waiting.clear()

    # --- submitting ---

    def submit(
        self,
        task_id: str,
        job: Job,
        encoding: Encoding = PNG,
        delivery: Mapping[str, Any] | None = None,
    ) -> asyncio.Task[None]:
        """delivery is not kept: a replica that restarts does not resume its deliveries."""
        model = self.engine.validate(job)
        try:
            payload = encode_job(job)
        except JobCodecError as error:
            raise JobError(ErrorCode.INVALID_INPUT, str(error)) from None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting[task_id] = done
        code = None if model is None else model.code
        task = loop.create_task(self._publish_and_wait(task_id, payload, encoding, code, done))
        self._publishers.add(task)
        task.add_done_callback(self._publishers.discard)
        return task

    async def _publish_and_wait(
        self,
        task_id: str,
        payload: dict[str, Any],
        encoding: Encoding,
        model: str | None,
        done: asyncio.Future[None],
    ) -> None:
        try:
            queue = await asyncio.to_thread(self._publish, task_id, payload, encoding, model)
            log.info("task %s queued on %s", task_id, queue)
        except Exception as error:  # the broker is unreachable: the record says so
            log.exception("task %s: cannot queue its job", task_id)
            self._waiting.pop(task_id, None)
            message = f"cannot queue the task: {error}"
            await asyncio.to_thread(self.store.fail, task_id, ErrorCode.INTERNAL.value, message)
            return
        await done

    def _publish(
        self, task_id: str, payload: dict[str, Any], encoding: Encoding, model: str | None
    ) -> str:
        queue = self._queue_for(model)
        if queue != DEFAULT_QUEUE:
            self.client.sadd(self.config.model_queues_key, queue)
        self.celery.send_task(
            TASK_NAME,
            args=[task_id, payload, encoding_fields(encoding)],
            queue=queue,
            task_id=task_id,
        )
        return queue

    def _queue_for(self, model: str | None) -> str:
        """The model's queue while a live worker consumes it, else the default queue."""
        if model is None:
            return DEFAULT_QUEUE
        checked_at, consumed = self._routes
        if time.monotonic() - checked_at > ROUTES_TTL_S:
            consumed = self.registry.consumed_queues()
            self._routes = (time.monotonic(), consumed)
        queue = model_queue(model)
        return queue if queue in consumed else DEFAULT_QUEUE

    # --- waiting ---

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if not self._waiting:
                continue
            task_ids = list(self._waiting)
            try:
                statuses = await asyncio.to_thread(self._statuses, task_ids)
            except redis.RedisError as error:
                log.warning("cannot read task states: %s", error)
                continue
            for task_id, status in zip(task_ids, statuses, strict=True):
                if status is None or status in _ENDED:  # ended, or expired meanwhile
                    done = self._waiting.pop(task_id, None)
                    if done is not None and not done.done():
                        done.set_result(None)

    def _statuses(self, task_ids: list[str]) -> list[bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hget(self.store.key(task_id), "status")
        return pipe.execute()

    # --- cancelling ---

    def cancel(self, task_id: str) -> bool:
        """Flag the task for every worker; a task still queued ends here at once."""
        record = self.store.get(task_id)
        if record is None or record.status.ended:
            return False
        ttl_s = max(1, int(self.config.retention_s))
        self.client.set(self.config.cancel_key(task_id), b"1", ex=ttl_s)
        if record.status is TaskStatus.QUEUED:
            reason = CANCELLED_BY_REQUEST
            self.store.fail(task_id, reason.code.value, reason.message)
        return True

    # --- statistics ---

    def stats(self) -> dict[str, Any]:
        workers = {
            beat.name: {
                "devices": beat.devices,
                "queues": beat.queues,
                "models": beat.models,
                "running": beat.running,
                "stats": beat.stats,
            }
            for beat in self.registry.live()
        }
        return {"cluster": True, "workers": workers}

    # --- what the cluster is doing (GET /engine/status, /readyz, /metrics) ---

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.cluster_status)

    def cluster_status(self) -> dict[str, Any]:
        """The workers' own status (their heartbeats: up to a heartbeat old) plus the jobs the
        broker's queues still hold."""
        return self.gather()[1]

    def gather(self) -> tuple[list[WorkerBeat], dict[str, Any]]:
        """The live workers' heartbeats, and the cluster's status from them."""
        beats = self.registry.live()
        return beats, gathered({beat.name: beat.status for beat in beats}, self._broker_jobs())

    async def readiness(self) -> str | None:
        try:
            beats = await asyncio.to_thread(self.registry.live)
        except redis.RedisError as error:
            return f"cannot reach the broker: {error}"
        if not beats:
            return "no live worker: start `easel worker`s on this broker"
        if not any(beat.models for beat in beats):
            return "no worker has a model loaded yet: the first job loads one"
        return None

    def metrics(self) -> list[Collector]:
        return [self._metrics]

    def _broker_jobs(self) -> int:
        """Jobs waiting in the broker: the default queue and every model queue."""
        queues = [DEFAULT_QUEUE]
        queues += sorted(reply_text(q) for q in self.client.smembers(self.config.model_queues_key))
        pipe = self.client.pipeline(transaction=False)
        for name in queues:
            pipe.llen(self.config.broker_key(name))
        return sum(int(length) for length in pipe.execute())


class _ClusterMetrics:
    """Queue depth, throughput and workers of the whole cluster, read at each scrape (each
    worker's own engine metrics are served by `easel worker --metrics-port`)."""

    def __init__(self, dispatcher: BrokerDispatcher) -> None:
        self.dispatcher = dispatcher

    def collect(self) -> list[Metric]:
        try:
            beats, status = self.dispatcher.gather()
        except redis.RedisError as error:
            log.warning("cannot read the cluster's status: %s", error)
            return []
        queue = status["queue"]
        return [
            GaugeMetricFamily(
                "easel_queue_jobs", "Jobs waiting (broker queues and workers)", value=queue["jobs"]
            ),
            GaugeMetricFamily(
                "easel_queue_images",
                "Images the waiting jobs ask for (a job still in the broker counts as one)",
                value=queue["images"],
            ),
            GaugeMetricFamily(
                "easel_images_per_second",
                "Images the live workers finished per second, recently",
                value=status["images_per_second"],
            ),
            GaugeMetricFamily(
                "easel_ready",
                "1 once some live worker has a model loaded",
                value=int(any(beat.models for beat in beats)),
            ),
            GaugeMetricFamily("easel_workers", "Live workers", value=len(beats)),
            GaugeMetricFamily(
                "easel_workers_ready",
                "Live workers with a model loaded",
                value=sum(1 for beat in beats if beat.models),
            ),
        ]


def broker_backend(engine: Engine, config: ClusterConfig) -> Backend:
    """Records and images in Redis, jobs on Celery: what an API replica runs on."""
    client = connect(config.broker_url)
    metrics = ServerMetrics()
    store = ObservedTaskStore(RedisTaskStore(client, config.retention_s, config.namespace), metrics)
    results = RedisResultStore(client, config.retention_s, config.namespace)
    return Backend(store, results, BrokerDispatcher(engine, config, client, store), metrics)
