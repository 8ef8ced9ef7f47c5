"""How front ends hand a task's job to whatever runs it: this process's engine, or the cluster.

Both protocols' services create the task record, then call Dispatcher.submit; what comes back
is an asyncio task that ends once the record is final (images stored, or the error), so a
synchronous Runware request can await it. On one machine the job goes to the local engine and
the TaskTracker writes the record (LocalDispatcher); with --broker the job goes to a Celery queue,
a GPU worker writes the record in Redis, and the replica that accepted the task waits for it
(server.cluster.dispatch.BrokerDispatcher).

On one machine every accepted job is also journaled (server.journal) until its record is final:
after a crash or a shutdown, the next start runs it again under the same task id. A job that a
shutdown cuts short leaves its record unfinished, and its follower ends cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.registry import Collector

from pipelines.engine import Engine
from pipelines.handle import CANCELLED_BY_REQUEST, JobHandle
from pipelines.job_codec import JobCodecError, decode_job, encode_job
from pipelines.jobs import ErrorCode, Job, JobError
from server.journal import JobJournal, JournalError
from server.metrics import ServerMetrics
from server.results import PNG, Encoding, FileResultStore, ResultStore
from server.settings import Settings
from server.status import status_json
from server.taskstore import SqliteTaskStore, TaskStatus, TaskStore, interrupt_unfinished
from server.taskstore.observed import ObservedTaskStore
from server.tracking import TaskTracker

log = logging.getLogger(__name__)

# How a front end delivers the result of a task that runs again after a restart: called with
# the task id, the delivery dict it gave submit, and the new follower (ends with the record).
ResumeDelivery = Callable[[str, dict[str, Any], asyncio.Task[None]], None]

JOURNAL_FILE = "journal.sqlite3"
BACKLOG_POLL_S = 0.2  # how often re-queued jobs that found the queue full try again
MAX_CUT_SHORT = 3  # runs cut by a crash or shutdown before a task is failed (a crash loop)
DRAIN_S = 10.0  # at shutdown, how long finished jobs may take to store their images
UNRECORDED = "the server stopped before the task was recorded for a re-run: submit it again"


class Dispatcher(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def drain(self) -> None:
        """A shutdown signal came: uvicorn stops accepting, and stop() follows once the
        requests under way end. Meanwhile start no batch that no open request waits for, so
        that queued tasks stay queued for the next start instead of being started late and cut
        (see waiting_request)."""
        ...

    def waiting_request(self) -> contextlib.AbstractContextManager[None]:
        """Held while an open request waits for its task's result (a synchronous Runware
        task): after a shutdown signal the engine goes on starting batches until no request
        waits, so that such a request still gets its answer within the grace period."""
        ...

    def submit(
        self,
        task_id: str,
        job: Job,
        encoding: Encoding = PNG,
        delivery: Mapping[str, Any] | None = None,
    ) -> asyncio.Task[None]:
        """Queue the job of an existing task record; JobError at once if it cannot run.

        delivery: what the front end needs to deliver the result itself (JSON-ready, with the
        "protocol" key naming whose on_recovered hook resumes it), kept with the job where the
        dispatcher runs it again after a restart."""
        ...

    def cancel(self, task_id: str) -> bool:
        """Ask the task's job to stop; False when nothing holds it any more."""
        ...

    def stats(self) -> dict[str, Any]:
        """What GET /engine/stats shows."""
        ...

    async def status(self) -> dict[str, Any]:
        """What GET /engine/status shows (server.status: queue, devices, images/s)."""
        ...

    async def readiness(self) -> str | None:
        """None when a job can start without waiting for a model to load; else why not."""
        ...

    def metrics(self) -> list[Collector]:
        """The metrics GET /metrics shows besides the server's own (server.metrics)."""
        ...

    def on_recovered(self, protocol: str, resume: ResumeDelivery) -> None:
        """How the protocol's deliveries resume for tasks run again after a restart (register
        before start)."""
        ...


@dataclass(frozen=True)
class _Requeued:
    """A journaled job waiting for room in the engine's queue after a restart."""

    task_id: str
    job: Job
    encoding: Encoding
    delivery: dict[str, Any] | None


class LocalDispatcher:
    """Jobs on this process's engine, each journaled until its record is final.

    Crash or shutdown, a task the client was told about is never lost: at the next start its
    job runs again (same task id, same seeds), and a front end's delivery resumes through its
    on_recovered hook. A SIGTERM lets the running batch finish within shutdown_grace_s; jobs
    still waiting then (or cut at its end) stay journaled instead of failing.
    """

    def __init__(
        self,
        engine: Engine,
        tracker: TaskTracker,
        journal: JobJournal,
        shutdown_grace_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.tracker = tracker
        self.store = tracker.store
        self.journal = journal
        self.shutdown_grace_s = shutdown_grace_s
        self._resumers: dict[str, ResumeDelivery] = {}
        self._followers: set[asyncio.Task[None]] = set()
        self._backlog: deque[_Requeued] = deque()
        self._feeder: asyncio.Task[None] | None = None
        self._stopping = False
        self._waiting_requests = 0  # open requests waiting for a result (waiting_request)

    # --- lifecycle ---

    def on_recovered(self, protocol: str, resume: ResumeDelivery) -> None:
        self._resumers[protocol] = resume

    async def start(self) -> None:
        await self.engine.start()
        self._recover()

    def drain(self) -> None:
        self._stopping = True  # new tasks are refused, the re-queue feeder stops
        self._drain_unless_waited_on()

    @contextlib.contextmanager
    def waiting_request(self) -> Iterator[None]:
        self._waiting_requests += 1
        try:
            yield
        finally:
            self._waiting_requests -= 1
            self._drain_unless_waited_on()

    def _drain_unless_waited_on(self) -> None:
        if self._stopping and not self._waiting_requests:
            self.engine.drain()  # the batch running now is the last (give or take one)

    async def stop(self) -> None:
        """Let the running batch finish within the grace period; whatever has not ended then
        keeps its journal entry and runs again at the next start."""
        self._stopping = True
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        await self.engine.stop(self.shutdown_grace_s)
        if self._followers:  # they end after the tracker has written the records
            await asyncio.wait(set(self._followers), timeout=DRAIN_S)
        left = self.journal.task_ids()
        if left:
            log.warning(
                "%d unfinished task(s) stay queued and run again at the next start: %s",
                len(left),
                ", ".join(left),
            )
        self.journal.close()

    # --- jobs ---

    def submit(
        self,
        task_id: str,
        job: Job,
        encoding: Encoding = PNG,
        delivery: Mapping[str, Any] | None = None,
    ) -> asyncio.Task[None]:
        if self._stopping:
            raise JobError(ErrorCode.BUSY, "the server is shutting down: retry in a moment")
        if self._backlog:
            raise JobError(
                ErrorCode.BUSY,
                f"the server is re-queueing {len(self._backlog)} task(s) accepted before its "
                "restart: retry in a moment",
            )
        handle = self.engine.submit(job, job_id=task_id)  # a full queue refuses here, at once
        try:
            payload = encode_job(job)
            self.journal.add(task_id, payload, encoding, delivery)
        except (JobCodecError, sqlite3.Error, OSError) as error:
            handle.cancel()  # not journaled: it must not run
            if isinstance(error, JobCodecError):
                raise JobError(ErrorCode.INVALID_INPUT, str(error)) from None
            log.exception("task %s: cannot write its journal entry", task_id)
            raise JobError(ErrorCode.INTERNAL, f"cannot record the task: {error}") from None
        return self._follow(task_id, handle, encoding)

    def _follow(self, task_id: str, handle: JobHandle, encoding: Encoding) -> asyncio.Task[None]:
        """A task the front end may await (and cancel: a request given up) without cutting
        the bookkeeping, which goes on to the end in tasks of its own."""
        loop = asyncio.get_running_loop()
        tracked = self.tracker.follow(task_id, handle, encoding)
        settled = loop.create_task(self._settle(task_id, tracked))
        self._followers.add(settled)
        settled.add_done_callback(self._followers.discard)
        return loop.create_task(_shielded(settled))

    async def _settle(self, task_id: str, tracked: asyncio.Task[None]) -> None:
        """Drop the journal entry once the record is final. A job cut short by a shutdown
        leaves the record unfinished: the entry stays, and this follower ends cancelled (there
        is no answer to deliver in this process)."""
        try:
            await tracked
        except Exception:
            log.exception("task %s: following its job failed", task_id)
            self.store.fail(task_id, ErrorCode.INTERNAL.value, "the task's result was lost")
        record = self.store.get(task_id)
        if record is not None and not record.status.ended:
            raise asyncio.CancelledError(f"task {task_id} runs again at the next start")
        self.journal.remove(task_id)

    def cancel(self, task_id: str) -> bool:
        for requeued in self._backlog:  # re-queued after a restart, still waiting for room
            if requeued.task_id == task_id:
                self._backlog.remove(requeued)
                self._give_up(task_id, CANCELLED_BY_REQUEST)
                return True
        return self.engine.cancel(task_id)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats.snapshot()

    async def status(self) -> dict[str, Any]:
        return status_json(self.engine.status())

    async def readiness(self) -> str | None:
        return self.engine.status().unready_reason()

    def metrics(self) -> list[Collector]:
        return [self.engine.metrics.registry]

    # --- recovery after a restart ---

    def _recover(self) -> None:
        """Queue again every journaled task whose record is unfinished (oldest first); fail
        unfinished records without an entry as interrupted; drop entries of ended tasks."""
        journaled = self.journal.task_ids()
        interrupted = interrupt_unfinished(
            self.store, ErrorCode.INTERRUPTED.value, UNRECORDED, keep=set(journaled)
        )
        if interrupted:
            log.warning("%d unfinished task(s) had no journal entry: failed", len(interrupted))
        for task_id in journaled:
            requeued = self._requeued(task_id)
            if requeued is not None:
                self._backlog.append(requeued)
        if not self._backlog:
            return
        log.warning(
            "re-running %d task(s) left unfinished by the last shutdown or crash",
            len(self._backlog),
        )
        self._feed()
        if self._backlog:
            self._feeder = asyncio.get_running_loop().create_task(self._feed_forever())

    def _requeued(self, task_id: str) -> _Requeued | None:
        """The journaled job to run again, its record back to queued; None (entry dropped)
        when the task has ended, is gone, or cannot run again (the record says why)."""
        record = self.store.get(task_id)
        if record is None or record.status.ended:
            self.journal.remove(task_id)
            return None
        if record.status is TaskStatus.RUNNING:  # it was running when the process stopped
            runs = self.journal.cut_short(task_id)
            if runs >= MAX_CUT_SHORT:
                message = f"the server stopped {runs} times while running this task: giving up"
                self._give_up(task_id, JobError(ErrorCode.INTERNAL, message))
                return None
        try:
            entry = self.journal.get(task_id)
            if entry is None:
                return None
            job = decode_job(entry.job)
        except (JournalError, JobCodecError) as error:
            self._give_up(task_id, JobError(ErrorCode.INTERNAL, f"cannot run it again: {error}"))
            return None
        self.store.requeue(task_id)
        return _Requeued(task_id, job, entry.encoding, entry.delivery)

    def _feed(self) -> None:
        """Submit re-queued jobs while the engine's queue has room (a full queue: later)."""
        while self._backlog and not self._stopping:
            requeued = self._backlog[0]
            try:
                handle = self.engine.submit(requeued.job, job_id=requeued.task_id)
            except JobError as error:
                if error.code is ErrorCode.BUSY:
                    return
                self._backlog.popleft()
                self._give_up(requeued.task_id, error)
                continue
            self._backlog.popleft()
            follower = self._follow(requeued.task_id, handle, requeued.encoding)
            log.info("task %s queued again", requeued.task_id)
            self._resume_delivery(requeued, follower)

    async def _feed_forever(self) -> None:
        while self._backlog:
            await asyncio.sleep(BACKLOG_POLL_S)
            self._feed()
        self._feeder = None

    def _resume_delivery(self, requeued: _Requeued, follower: asyncio.Task[None]) -> None:
        delivery = requeued.delivery
        if delivery is None:
            return
        resume = self._resumers.get(str(delivery.get("protocol")))
        if resume is None:
            log.warning("task %s: nothing resumes its delivery %s", requeued.task_id, delivery)
            return
        try:
            resume(requeued.task_id, delivery, follower)
        except Exception:
            log.exception("task %s: cannot resume its delivery", requeued.task_id)

    def _give_up(self, task_id: str, error: JobError) -> None:
        log.warning("task %s does not run again after the restart: %s", task_id, error.message)
        self.store.fail(task_id, error.code.value, error.message)
        self.journal.remove(task_id)


async def _shielded(work: asyncio.Task[None]) -> None:
    await asyncio.shield(work)


@dataclass
class Backend:
    """What differs between one machine and the cluster: where records and images live, and
    who runs the jobs."""

    store: TaskStore
    results: ResultStore
    dispatcher: Dispatcher
    metrics: ServerMetrics = field(default_factory=ServerMetrics)  # what `store` records


def local_backend(settings: Settings, engine: Engine) -> Backend:
    """SQLite records and image files in the data directory; jobs run on this process's engine."""
    metrics = ServerMetrics()
    store = ObservedTaskStore(SqliteTaskStore(settings.data_dir / "tasks.sqlite3"), metrics)
    results = FileResultStore(settings.data_dir / "results")
    # An interrupted job stays journaled and runs again: its record must not end here.
    tracker = TaskTracker(store, results, engine.stats, record_interruptions=False)
    journal = JobJournal(settings.data_dir / JOURNAL_FILE)
    dispatcher = LocalDispatcher(engine, tracker, journal, settings.shutdown_grace_s)
    return Backend(store, results, dispatcher, metrics)
