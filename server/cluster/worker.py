"""The GPU worker's side of the cluster: Celery delivers jobs, one local engine batches them.

`easel worker` runs a Celery worker with a thread pool: each thread holds one delivered task and
submits its job to the same engine, so jobs from different API replicas and clients share
forward passes exactly as on one machine. The TaskTracker writes progress, images and the final
state into Redis.

Delivery is at least once (late acknowledgement); the client sees each task finish once:
- a delivery whose record has already ended is acknowledged and dropped;
- a lease (SET NX with expiry, refreshed by the heartbeat) lets one worker run a task at a
  time: a second delivery of a running task waits for the record to end, or for the lease to
  lapse because its holder died, and then takes over;
- a record ends once (RedisTaskStore), and a run that loses that race drops its images.
Cancellation is a flag in Redis that every worker checks while it runs a task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from pipelines.engine import Engine
from pipelines.handle import CANCELLED_BY_REQUEST, JobHandle
from pipelines.job_codec import JobCodecError, decode_job
from pipelines.jobs import ErrorCode, Job, JobError
from server.cluster.config import DEFAULT_QUEUE, ClusterConfig, model_queue
from server.cluster.redis_client import WORKER_PATIENCE_S, connect, reply_text
from server.cluster.redis_results import RedisResultStore
from server.cluster.redis_tasks import RedisTaskStore
from server.cluster.registry import WorkerBeat, WorkerRegistry
from server.metrics import ServerMetrics
from server.results import Encoding, ImageFormat
from server.status import status_json
from server.taskstore.observed import ObservedTaskStore
from server.tracking import TaskTracker

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.25  # how often a running task looks for a cancel request

# Extend the lease while this worker holds it, and take it back when it lapsed while Redis was
# away (an outage longer than lease_s) unless another worker has taken it over meanwhile.
# Release only its own.
_REFRESH = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class WorkerRuntime:
    """The engine, its event loop thread and the Redis stores behind one Celery worker."""

    def __init__(self, engine: Engine, config: ClusterConfig, name: str, celery: Celery) -> None:
        self.engine = engine
        self.config = config
        self.name = name  # the Celery node name (name@host), also its name in the registry
        self.celery = celery
        self.client = connect(config.broker_url, patience_s=WORKER_PATIENCE_S)
        # Task state changes are logged and counted here, where workers make them.
        self.metrics = ServerMetrics()
        self.store = ObservedTaskStore(
            RedisTaskStore(self.client, config.retention_s, config.namespace), self.metrics
        )
        self.results = RedisResultStore(self.client, config.retention_s, config.namespace)
        self.tracker = TaskTracker(
            self.store, self.results, engine.stats, record_interruptions=False
        )
        self.registry = WorkerRegistry(self.client, config)
        self.queues: set[str] = {DEFAULT_QUEUE}  # consumed (only the consumer thread adds)
        # Queues to consume, handed to Celery's consumer thread (see server.cluster.run).
        self.wanted_queues: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._requested: set[str] = set()
        self._refresh = self.client.register_script(_REFRESH)
        self._release = self.client.register_script(_RELEASE)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="easel-engine-loop", daemon=True
        )
        self._handles: dict[str, JobHandle] = {}  # only touched on the loop thread
        self._leases: set[str] = set()
        self._leases_lock = threading.Lock()
        self._stopping = threading.Event()
        self._beat_thread = threading.Thread(target=self._beat, name="easel-beat", daemon=True)

    # --- lifecycle ---

    def start(self) -> None:
        self._loop_thread.start()
        asyncio.run_coroutine_threadsafe(self.engine.start(), self._loop).result()
        self._beat_thread.start()

    def stop(self) -> None:
        self._stopping.set()

        async def shut_down() -> None:
            await self.engine.stop()
            await self.tracker.drain()

        asyncio.run_coroutine_threadsafe(shut_down(), self._loop).result(timeout=120)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._beat_thread.join(timeout=10)
        try:
            self.registry.withdraw(self.name)
        except Exception:  # Redis gone: the beat goes stale by itself
            log.warning("could not withdraw %s from the registry", self.name)

    # --- one delivered task (a Celery pool thread) ---

    def run(self, task_id: str, payload: dict[str, Any], encoding: dict[str, Any]) -> None:
        record = self.store.get(task_id)
        if record is None or record.status.ended:
            log.info("task %s: already ended or expired, delivery dropped", task_id)
            return
        if self.client.exists(self.config.cancel_key(task_id)):
            self.store.fail(task_id, CANCELLED_BY_REQUEST.code.value, CANCELLED_BY_REQUEST.message)
            return
        if not self._take_lease(task_id):
            log.info("task %s: ended while this delivery waited, delivery dropped", task_id)
            return
        try:
            attempt = self.store.count_attempt(task_id)
            log.info("task %s: running (delivery %d)", task_id, attempt)
            try:
                job = decode_job(payload)
                output = Encoding(ImageFormat(encoding["format"]), int(encoding["quality"]))
            except (JobCodecError, KeyError, TypeError, ValueError) as error:
                message = f"the worker cannot read this job: {error}"
                self.store.fail(task_id, ErrorCode.INVALID_INPUT.value, message)
                return
            self._run_to_the_end(task_id, job, output)
        finally:
            with self._leases_lock:
                self._leases.discard(task_id)
            self._release(keys=[self.config.lease_key(task_id)], args=[self.name])

    def _take_lease(self, task_id: str) -> bool:
        """Hold the task's lease while its record is unfinished; False (lease not held) when
        the record ended while another run held it, or just before this one took it. A run of
        the task on this worker holds it too, even if its Redis key lapsed: after a broker
        outage longer than the lease, the broker hands the message out again at reconnection
        while the first run goes on."""
        key, ttl_ms = self.config.lease_key(task_id), int(self.config.lease_s * 1000)
        while not self._stopping.is_set():
            with self._leases_lock:
                ours = task_id in self._leases
            taken = not ours and self.client.set(key, self.name, nx=True, px=ttl_ms)
            record = self.store.get(task_id)  # read after the try: it may have just ended
            if record is None or record.status.ended:
                if taken:
                    self._release(keys=[key], args=[self.name])
                return False
            if taken:
                with self._leases_lock:
                    self._leases.add(task_id)
                return True
            time.sleep(self.config.heartbeat_s / 2)
        raise Reject("the worker is stopping", requeue=True)

    def _run_to_the_end(self, task_id: str, job: Job, encoding: Encoding) -> None:
        running = asyncio.run_coroutine_threadsafe(self._follow(task_id, job, encoding), self._loop)
        cancel_key = self.config.cancel_key(task_id)
        cancelled = False
        while True:
            try:
                running.result(timeout=CANCEL_POLL_S)
                break
            except concurrent.futures.TimeoutError:
                pass
            if not cancelled and self.client.exists(cancel_key):
                cancelled = True
                self._loop.call_soon_threadsafe(self._cancel, task_id)
        record = self.store.get(task_id)
        if record is not None and not record.status.ended:  # interrupted by a shutdown
            raise Reject("the worker stopped before the job finished", requeue=True)

    async def _follow(self, task_id: str, job: Job, encoding: Encoding) -> None:
        try:
            handle = self.engine.submit(job, job_id=task_id)
        except JobError as error:
            self.store.fail(task_id, error.code.value, error.message)
            return
        self._handles[task_id] = handle
        try:
            await self.tracker.follow(task_id, handle, encoding)
        finally:
            self._handles.pop(task_id, None)

    def _cancel(self, task_id: str) -> None:
        handle = self._handles.get(task_id)
        if handle is not None:
            handle.cancel()

    # --- heartbeat ---

    def _beat(self) -> None:
        while not self._stopping.wait(self.config.heartbeat_s):
            try:
                self._beat_once()
            except Exception:
                log.exception("heartbeat failed (will retry)")

    def _beat_once(self) -> None:
        with self._leases_lock:
            leases = sorted(self._leases)
        ttl_ms = int(self.config.lease_s * 1000)
        for task_id in leases:
            self._refresh(keys=[self.config.lease_key(task_id)], args=[self.name, ttl_ms])
        models = self.engine.loaded_models()
        self.registry.publish(
            WorkerBeat(
                name=self.name,
                devices=list(self.engine.devices),
                queues=sorted(self.queues),
                models=models,
                running=leases,
                stats=self.engine.stats.snapshot(),
                status=status_json(self.engine.status()),
            )
        )
        wanted = {model_queue(code) for code in models} | self._orphaned_queues()
        for name in sorted(wanted - self.queues - self._requested):
            self._requested.add(name)
            self.wanted_queues.put(name)

    def _orphaned_queues(self) -> set[str]:
        """Model queues holding jobs that no live worker consumes (their worker died)."""
        queues = [reply_text(q) for q in self.client.smembers(self.config.model_queues_key)]
        pipe = self.client.pipeline(transaction=False)
        for name in queues:
            pipe.llen(self.config.broker_key(name))
        pending = {name for name, length in zip(queues, pipe.execute(), strict=True) if length}
        return pending - self.registry.consumed_queues() if pending else set()
