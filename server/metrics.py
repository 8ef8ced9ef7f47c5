"""The server's Prometheus metrics: tasks (from their state changes) and error replies.

Task metrics are recorded by the task store wrapper (server.taskstore.observed), wherever task
states change: on one machine in the server, in a cluster on the API replica (tasks created,
cancelled while queued) and on the GPU workers (running, finished, failed; `easel worker
--metrics-port` serves them there). Error replies are counted where each protocol builds them
(count_error_reply), for the app whose request is being served: a context variable that the
MetricsScope middleware sets, so many apps in one process (tests) keep separate counts.

Each app has its own registries (the global default registry would refuse a second app);
GET /metrics renders this one with the dispatcher's (the engine's, or the cluster's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.registry import Collector

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Seconds from a task's creation to its end (generation on a GPU: about a second to minutes).
TASK_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks = Counter(
            "easel_tasks",
            "Task state changes: queued, running, finished, failed, cancelled, requeued",
            ["protocol", "action", "state"],
            registry=self.registry,
        )
        self.task_seconds = Histogram(
            "easel_task_duration_seconds",
            "From a task's creation to its end, by how it ended (finished, failed, cancelled)",
            ["protocol", "action", "outcome"],
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "easel_task_queue_seconds",
            "From a task's creation until a device starts it",
            ["protocol", "action"],
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.task_failures = Counter(
            "easel_task_failures",
            "Tasks that ended in error, by the engine's error code",
            ["protocol", "action", "code"],
            registry=self.registry,
        )
        self.error_replies = Counter(
            "easel_error_replies",
            "Error replies sent to clients, by the protocol's own code (PICPIK RetCode, "
            "Runware error code)",
            ["protocol", "code"],
            registry=self.registry,
        )


_CURRENT: ContextVar[ServerMetrics | None] = ContextVar("easel_server_metrics", default=None)


def count_error_reply(protocol: str, code: str) -> None:
    """Count an error reply of the app serving the current request (no-op outside one)."""
    metrics = _CURRENT.get()
    if metrics is not None:
        metrics.error_replies.labels(protocol, code).inc()


class MetricsScope:
    """ASGI middleware: what runs for a request or socket of this app counts into its metrics
    (tasks it spawns inherit the context)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _CURRENT.set(self.metrics)
        try:
            await self.app(scope, receive, send)
        finally:
            _CURRENT.reset(token)


def combined(registries: Iterable[Collector]) -> CollectorRegistry:
    """Several registries as one (what one /metrics page shows)."""
    registry = CollectorRegistry()
    registry.register(_Together(tuple(registries)))
    return registry


class _Together:
    def __init__(self, registries: tuple[Collector, ...]) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Any]:
        for registry in self.registries:
            yield from registry.collect()
