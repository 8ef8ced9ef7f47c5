"""How front ends hand a task's job to whatever runs it: this process's engine, or the cluster.

Both protocols' services create the task record, then call Dispatcher.submit; what comes back
is an asyncio task that ends once the record is final (images stored, or the error), so a
synchronous Runware request can await it. On one machine the job goes to the local engine and
the TaskTracker writes the record (LocalDispatcher); with --broker the job goes to a Celery queue,
a GPU worker writes the record in Redis, and the replica that accepted the task waits for it
(server.cluster.dispatch.BrokerDispatcher).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.engine import Engine
from pipelines.jobs import Job
from server.results import PNG, Encoding, FileResultStore, ResultStore
from server.settings import Settings
from server.taskstore import SqliteTaskStore, TaskStore
from server.tracking import TaskTracker


class Dispatcher(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, task_id: str, job: Job, encoding: Encoding = PNG) -> asyncio.Task[None]:
        """Queue the job of an existing task record; JobError at once if it cannot run."""
        ...

    def cancel(self, task_id: str) -> bool:
        """Ask the task's job to stop; False when nothing holds it any more."""
        ...

    def stats(self) -> dict[str, Any]:
        """What GET /engine/stats shows."""
        ...

    @property
    def resumes_unfinished(self) -> bool:
        """True when unfinished tasks live on after this process stops (the cluster)."""
        ...


class LocalDispatcher:
    def __init__(self, engine: Engine, tracker: TaskTracker) -> None:
        self.engine = engine
        self.tracker = tracker

    resumes_unfinished = False

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()
        await self.tracker.drain()

    def submit(self, task_id: str, job: Job, encoding: Encoding = PNG) -> asyncio.Task[None]:
        return self.tracker.follow(task_id, self.engine.submit(job, job_id=task_id), encoding)

    def cancel(self, task_id: str) -> bool:
        return self.engine.cancel(task_id)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats.snapshot()


@dataclass
class Backend:
    """What differs between one machine and the cluster: where records and images live, and
    who runs the jobs."""

    store: TaskStore
    results: ResultStore
    dispatcher: Dispatcher


def local_backend(settings: Settings, engine: Engine) -> Backend:
    """SQLite records and image files in the data directory; jobs run on this process's engine."""
    store = SqliteTaskStore(settings.data_dir / "tasks.sqlite3")
    results = FileResultStore(settings.data_dir / "results")
    tracker = TaskTracker(store, results, engine.stats)
    return Backend(store, results, LocalDispatcher(engine, tracker))
