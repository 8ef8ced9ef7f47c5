"""`easel worker`: a Celery worker (thread pool) in front of one local engine."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import bootsteps
from prometheus_client import start_http_server

from pipelines.engine import Engine
from server.cluster.celery_app import make_celery
from server.cluster.config import DEFAULT_QUEUE, TASK_NAME, ClusterConfig
from server.cluster.worker import WorkerRuntime
from server.metrics import combined

log = logging.getLogger(__name__)

SUBSCRIBE_POLL_S = 0.5  # how soon a worker starts consuming a queue its heartbeat asked for


def node_name(name: str | None) -> str:
    """Celery node names are name@host; the registry and the job leases use the same name."""
    name = name or f"easel-{os.getpid()}"
    return name if "@" in name else f"{name}@{socket.gethostname()}"


def queue_subscriber(runtime: WorkerRuntime) -> type[bootsteps.StartStopStep]:
    """A consumer boot step that subscribes to the queues the runtime asks for.

    Celery's consumer is not thread-safe: the step polls the runtime's request queue from a
    timer that runs in the consumer's own event loop.
    """

    class QueueSubscriber(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c: Any) -> None:
            self._timer = c.timer.call_repeatedly(SUBSCRIBE_POLL_S, self.subscribe, (c,))

        def stop(self, c: Any) -> None:
            timer = getattr(self, "_timer", None)
            if timer is not None:
                timer.cancel()

        def subscribe(self, c: Any) -> None:
            while not runtime.wanted_queues.empty():
                name = runtime.wanted_queues.get()
                if name not in runtime.queues:
                    c.add_task_queue(name)
                    runtime.queues.add(name)
                    log.info("now consuming %s", name)

    return QueueSubscriber


def run_worker(
    engine: Engine,
    config: ClusterConfig,
    name: str | None,
    concurrency: int,
    log_level: str,
    metrics_port: int = 0,
    quiet: bool = False,
) -> int:
    """metrics_port: serve the worker's engine and task metrics (Prometheus text) at
    http://0.0.0.0:PORT/metrics; 0: not at all. quiet: no Celery banner (--log-json: every
    line the worker writes is a log line)."""
    celery = make_celery(config)
    node = node_name(name)
    runtime = WorkerRuntime(engine, config, node, celery)

    @celery.task(name=TASK_NAME)
    def run_job(task_id: str, payload: dict[str, Any], encoding: dict[str, Any]) -> None:
        runtime.run(task_id, payload, encoding)

    celery.steps["consumer"].add(queue_subscriber(runtime))
    runtime.start()
    if metrics_port:
        start_http_server(
            metrics_port, registry=combined([runtime.metrics.registry, engine.metrics.registry])
        )
        log.info("metrics on port %d", metrics_port)
    log.info("worker %s on %s, %d task(s) at once", node, ", ".join(engine.devices), concurrency)
    worker = celery.Worker(
        hostname=node,
        pool="threads",
        concurrency=concurrency,
        queues=[DEFAULT_QUEUE],
        loglevel=log_level.upper(),
        without_gossip=True,
        without_mingle=True,
        optimization="fair",
        quiet=quiet,
    )
    try:
        worker.start()
    finally:
        runtime.stop()
    return int(worker.exitcode or 0)
