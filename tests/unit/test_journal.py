"""The job journal, and how the single server's dispatcher uses it to lose no accepted task.

The journal itself is a SQLite file; the dispatcher is driven over a scripted engine that holds
jobs until the test ends them, so every path (finish, cancel, shutdown, restart, a full queue on
restart, a job that can no longer run) is exercised in milliseconds. The real engine and real
processes (kill -9, SIGTERM) are in tests/e2e/test_crash_recovery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.batching.stats import EngineStats
from pipelines.handle import JobHandle
from pipelines.job_codec import decode_job, encode_job
from pipelines.jobs import ErrorCode, GenerationJob, Job, JobError, JobKind, JobResult
from server.dispatch import LocalDispatcher
from server.journal import JobJournal, JournalError
from server.results import PNG, Encoding, FileResultStore, ImageFormat
from server.taskstore import SqliteTaskStore, TaskRecord, TaskStatus
from server.tracking import TaskTracker

WEBP = Encoding(ImageFormat.WEBP, 80)


def _job(seed: int = 7, model: str = "demo", init: bool = False) -> GenerationJob:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return GenerationJob(
        kind=JobKind.IMG2IMG if init else JobKind.TXT2IMG,
        model=model,
        prompt=f"prompt {seed}",
        width=64,
        height=64,
        steps=3,
        guidance_scale=7.0,
        seeds=(seed, seed + 1),
        init_image=Image.fromarray(pixels) if init else None,
        owner="key-1",
    )


# --- the journal ---


def test_entries_survive_a_reopen_with_job_encoding_and_delivery(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = JobJournal(path)
    job = _job(init=True)
    delivery = {"protocol": "runware", "webhookURL": "https://hooks.example/x"}
    journal.add("a", encode_job(job), WEBP, delivery)
    journal.add("b", encode_job(_job(9)), PNG)
    journal.close()  # a crash leaves the file as a close does: every add was committed

    reopened = JobJournal(path)
    assert reopened.task_ids() == ["a", "b"]  # oldest first: re-runs keep the order
    entry = reopened.get("a")
    assert entry is not None
    assert entry.encoding == WEBP
    assert entry.delivery == delivery
    back = decode_job(entry.job)
    assert isinstance(back, GenerationJob)
    assert back.seeds == job.seeds and back.prompt == job.prompt and back.owner == "key-1"
    assert back.init_image is not None and job.init_image is not None
    assert np.array_equal(np.asarray(back.init_image), np.asarray(job.init_image))
    second = reopened.get("b")
    assert second is not None and second.delivery is None and second.encoding == PNG


def test_add_replaces_remove_forgets_and_unknown_ids_are_none(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path / "journal.sqlite3")
    journal.add("a", encode_job(_job(1)), PNG)
    journal.add("a", encode_job(_job(2)), WEBP)
    assert len(journal) == 1 and "a" in journal
    entry = journal.get("a")
    assert entry is not None and entry.encoding == WEBP
    assert decode_job(entry.job).seeds == (2, 3)  # type: ignore[union-attr]
    journal.remove("a")
    journal.remove("a")  # removing twice is harmless
    assert len(journal) == 0 and "a" not in journal
    assert journal.get("a") is None


def test_a_damaged_entry_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    JobJournal(path).add("a", encode_job(_job()), PNG)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE journal SET job = '{not json', format = 'bmp'")
    with pytest.raises(JournalError, match="task a"):
        JobJournal(path).get("a")


# --- the dispatcher over a scripted engine ---


class ScriptedEngine:
    """Holds every job until the test finishes or fails it; refuses like the real engine."""

    def __init__(self, capacity: int = 16, models: tuple[str, ...] = ("demo",)) -> None:
        self.capacity = capacity
        self.models = models
        self.stats = EngineStats()
        self.handles: dict[str, JobHandle] = {}
        self.submitted: list[tuple[str, Job]] = []
        self.stopped_with: float | None = None
        self.drained = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def drain(self) -> None:
        self.drained = True

    async def stop(self, grace: float = 0.0) -> None:
        self.stopped_with = grace
        shutdown = JobError(ErrorCode.INTERRUPTED, "the server shut down")
        for handle in self.handles.values():
            handle.fail(shutdown)

    def submit(self, job: Job, *, job_id: str) -> JobHandle:
        assert self._loop is not None
        assert isinstance(job, GenerationJob)
        if job.model not in self.models:
            raise JobError(ErrorCode.UNKNOWN_MODEL, f"no model {job.model!r}")
        if len(self.handles) >= self.capacity:
            raise JobError(ErrorCode.BUSY, "the server is busy")
        handle = JobHandle(job_id, job, self._loop, self._cancelled)
        self._loop.create_task(_outcome(handle))  # as the engine does: every outcome is read
        self.handles[job_id] = handle
        self.submitted.append((job_id, job))
        return handle

    def _cancelled(self, handle: JobHandle) -> None:
        self.handles.pop(handle.job_id, None)
        handle.fail_cancelled()

    def cancel(self, job_id: str) -> bool:
        handle = self.handles.get(job_id)
        if handle is None:
            return False
        handle.cancel()
        return True

    def finish(self, job_id: str) -> None:
        handle = self.handles.pop(job_id)
        job = handle.job
        assert isinstance(job, GenerationJob)
        images = tuple(Image.new("RGB", (8, 8), (seed % 256, 0, 0)) for seed in job.seeds)
        handle.finish(JobResult(images, job.seeds))


async def _outcome(handle: JobHandle) -> None:
    with contextlib.suppress(JobError):
        await handle.result()


class Server:
    """One 'process': a store, a journal and a dispatcher over the same data directory."""

    def __init__(self, data_dir: Path, engine: ScriptedEngine) -> None:
        self.engine = engine
        self.store = SqliteTaskStore(data_dir / "tasks.sqlite3")
        self.journal = JobJournal(data_dir / "journal.sqlite3")
        tracker = TaskTracker(
            self.store, FileResultStore(data_dir / "results"), record_interruptions=False
        )
        scripted: Any = engine  # stands in for pipelines.engine.Engine
        self.dispatcher = LocalDispatcher(scripted, tracker, self.journal, shutdown_grace_s=5.0)

    def accept(
        self, task_id: str, job: Job, encoding: Encoding = PNG, delivery: dict | None = None
    ) -> asyncio.Task[None]:
        """What the front ends do: create the record, then submit (delete it if refused)."""
        self.store.create(TaskRecord(task_id, "picpik", "GenerateImages", ""))
        try:
            return self.dispatcher.submit(task_id, job, encoding, delivery)
        except JobError:
            self.store.delete(task_id)
            raise

    def status(self, task_id: str) -> TaskStatus | None:
        record = self.store.get(task_id)
        return None if record is None else record.status


def _run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())


async def _settled(*tasks: asyncio.Task[None]) -> None:
    await asyncio.wait(tasks, timeout=5)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not come true")


def test_an_accepted_task_is_journaled_until_its_record_is_final(tmp_path: Path) -> None:
    async def main() -> None:
        server = Server(tmp_path, ScriptedEngine())
        await server.dispatcher.start()
        done = server.accept("done", _job(1), WEBP)
        cancelled = server.accept("cancelled", _job(2))
        assert server.journal.task_ids() == ["done", "cancelled"]  # before submit returned
        server.engine.finish("done")
        server.dispatcher.cancel("cancelled")
        await _settled(done, cancelled)
        assert server.status("done") is TaskStatus.FINISHED
        assert server.status("cancelled") is TaskStatus.ERROR
        assert len(server.journal) == 0
        await server.dispatcher.stop()

    _run(main)


def test_a_caller_giving_up_its_wait_does_not_stop_the_bookkeeping(tmp_path: Path) -> None:
    """A synchronous request cancelled (client gone, shutdown timeout) while its job runs on:
    the images are still stored and the entry dropped when the job ends."""

    async def main() -> None:
        server = Server(tmp_path, ScriptedEngine())
        await server.dispatcher.start()
        follower = server.accept("sync", _job(1))
        waiting = asyncio.get_running_loop().create_task(_await(follower))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.sleep(0.01)
        server.engine.finish("sync")
        await _until(lambda: len(server.journal) == 0)
        record = server.store.get("sync")
        assert record is not None and record.status is TaskStatus.FINISHED
        assert len(record.image_ids) == 2
        await server.dispatcher.stop()

    _run(main)


async def _await(task: asyncio.Task[None]) -> None:
    await task


def test_shutdown_leaves_unfinished_tasks_queued_and_journaled(tmp_path: Path) -> None:
    async def main() -> None:
        server = Server(tmp_path, ScriptedEngine())
        await server.dispatcher.start()
        waiting = server.accept("waiting", _job(1))
        await server.dispatcher.stop()
        assert server.engine.stopped_with == 5.0  # the batch running now gets the grace period
        await asyncio.wait([waiting], timeout=1)
        assert waiting.cancelled()  # no answer in this process: the next one runs it
        assert server.status("waiting") is TaskStatus.QUEUED
        with pytest.raises(JobError) as refused:
            server.accept("late", _job(3))
        assert refused.value.code is ErrorCode.BUSY

    _run(main)
    assert JobJournal(tmp_path / "journal.sqlite3").task_ids() == ["waiting"]


def test_a_restart_reruns_journaled_tasks_and_fails_the_rest(tmp_path: Path) -> None:
    async def first_process() -> None:
        server = Server(tmp_path, ScriptedEngine(models=("demo", "old-model")))
        await server.dispatcher.start()
        for task_id, job in [
            ("running", _job(1, init=True)),
            ("queued", _job(2)),
            ("finished-unjournaled", _job(3)),
            ("model-gone", _job(4, model="old-model")),
            ("damaged", _job(5)),
        ]:
            server.accept(task_id, job, WEBP if task_id == "running" else PNG)
        server.store.mark_running("running")
        server.store.set_progress("running", 0.4)
        # A crash between the record ending and the journal entry going: the entry stays.
        server.store.finish("finished-unjournaled", ["img"], [])
        # A record created, but the process died before the journal entry (never acked).
        server.store.create(TaskRecord("unjournaled", "picpik", "GenerateImages", ""))
        # An entry whose record was swept meanwhile.
        server.journal.add("swept", encode_job(_job(6)), PNG)
        # kill -9: nothing else runs. The connections are simply dropped.

    _run(first_process)
    with sqlite3.connect(tmp_path / "journal.sqlite3") as db:
        damaged = '{"type": "Nope", "fields": {}}'
        db.execute("UPDATE journal SET job = ? WHERE task_id = 'damaged'", (damaged,))

    async def second_process() -> None:
        engine = ScriptedEngine()  # old-model is no longer installed
        server = Server(tmp_path, engine)
        await server.dispatcher.start()
        assert [task_id for task_id, _ in engine.submitted] == ["running", "queued"]
        rerun = dict(engine.submitted)["running"]
        assert isinstance(rerun, GenerationJob) and rerun.seeds == (1, 2)
        assert rerun.init_image is not None
        running = server.store.get("running")
        assert running is not None and running.status is TaskStatus.QUEUED
        assert running.progress == 0
        assert server.status("finished-unjournaled") is TaskStatus.FINISHED
        unjournaled = server.store.get("unjournaled")
        assert unjournaled is not None and unjournaled.error_code == ErrorCode.INTERRUPTED.value
        gone = server.store.get("model-gone")
        assert gone is not None and gone.error_code == ErrorCode.UNKNOWN_MODEL.value
        damaged = server.store.get("damaged")
        assert damaged is not None and damaged.status is TaskStatus.ERROR
        assert "cannot run it again" in damaged.error_message
        assert server.journal.task_ids() == ["running", "queued"]
        engine.finish("running")
        engine.finish("queued")
        await _until(lambda: len(server.journal) == 0)
        record = server.store.get("running")
        assert record is not None and record.status is TaskStatus.FINISHED
        assert len(record.image_ids) == 2  # one set of images: the re-run's
        assert len(server.journal) == 0
        await server.dispatcher.stop()

    _run(second_process)


def test_a_full_queue_on_restart_feeds_the_backlog_first(tmp_path: Path) -> None:
    async def first_process() -> None:
        server = Server(tmp_path, ScriptedEngine(capacity=8))
        await server.dispatcher.start()
        for i in range(4):
            server.accept(f"t{i}", _job(i))
        await server.dispatcher.stop()

    _run(first_process)

    async def second_process() -> None:
        engine = ScriptedEngine(capacity=2)  # restarted with a smaller --max-queue
        server = Server(tmp_path, engine)
        await server.dispatcher.start()
        assert [task_id for task_id, _ in engine.submitted] == ["t0", "t1"]
        with pytest.raises(JobError) as refused:  # the tasks accepted earlier go first
            server.accept("new", _job(9))
        assert refused.value.code is ErrorCode.BUSY and "re-queueing 2" in refused.value.message
        assert server.dispatcher.cancel("t3")  # TerminateTask reaches a task still waiting
        assert server.status("t3") is TaskStatus.ERROR
        engine.finish("t0")
        engine.finish("t1")
        await _until(lambda: len(engine.submitted) == 3)
        assert [task_id for task_id, _ in engine.submitted] == ["t0", "t1", "t2"]
        server.accept("new", _job(9))  # the backlog is gone: new work is welcome again
        await server.dispatcher.stop()

    _run(second_process)
    assert JobJournal(tmp_path / "journal.sqlite3").task_ids() == ["t2", "new"]


def test_a_rerun_resumes_its_delivery_through_the_protocols_hook(tmp_path: Path) -> None:
    delivery = {"protocol": "runware", "webhookURL": "https://hooks.example/x", "owner": "k"}

    async def first_process() -> None:
        server = Server(tmp_path, ScriptedEngine())
        await server.dispatcher.start()
        server.accept("hooked", _job(1), WEBP, delivery)
        server.accept("plain", _job(2))

    _run(first_process)
    resumed: list[tuple[str, dict[str, Any], asyncio.Task[None]]] = []

    async def second_process() -> None:
        engine = ScriptedEngine()
        server = Server(tmp_path, engine)
        server.dispatcher.on_recovered("runware", lambda *args: resumed.append(args))
        await server.dispatcher.start()
        assert [(task_id, d) for task_id, d, _ in resumed] == [("hooked", delivery)]
        engine.finish("hooked")
        await _settled(resumed[0][2])
        assert resumed[0][2].done() and not resumed[0][2].cancelled()
        assert server.status("hooked") is TaskStatus.FINISHED
        await server.dispatcher.stop()

    _run(second_process)


def test_a_task_that_keeps_taking_the_server_down_is_given_up(tmp_path: Path) -> None:
    """A job running each time the process died three times is failed, not run a fourth time
    (a crash loop); one that only waited in the queue through the restarts runs on."""

    async def restart(first: bool) -> ScriptedEngine:
        engine = ScriptedEngine()
        server = Server(tmp_path, engine)
        await server.dispatcher.start()
        if first:
            server.accept("poison", _job(1))
            server.accept("bystander", _job(2))
        if "poison" in engine.handles:
            server.store.mark_running("poison")  # it was running when the process died
        return engine

    for i in range(4):  # it runs in the first three processes; the fourth gives it up
        engine = _run(lambda i=i: restart(i == 0))
        expected = ["poison", "bystander"] if i < 3 else ["bystander"]
        assert [task_id for task_id, _ in engine.submitted] == expected
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    poison = store.get("poison")
    assert poison is not None and poison.error_code == ErrorCode.INTERNAL.value
    assert "stopped 3 times" in poison.error_message
    bystander = store.get("bystander")
    assert bystander is not None and bystander.status is TaskStatus.QUEUED


def test_a_journal_that_cannot_be_written_refuses_the_task(tmp_path: Path) -> None:
    async def main() -> None:
        engine = ScriptedEngine()
        server = Server(tmp_path, engine)
        await server.dispatcher.start()
        server.journal.close()  # every write now fails (sqlite3.ProgrammingError)
        with pytest.raises(JobError) as refused:
            server.accept("a", _job(1))
        assert refused.value.code is ErrorCode.INTERNAL
        assert "a" not in engine.handles  # queued, then taken back: it must not run

    _run(main)


def test_a_shutdown_signal_drains_the_engine_and_refuses_new_tasks(tmp_path: Path) -> None:
    """No request waits: the engine starts no more batches at once; queued tasks stay queued."""

    async def main() -> None:
        server = Server(tmp_path, ScriptedEngine())
        await server.dispatcher.start()
        queued = server.accept("queued", _job(1))
        server.dispatcher.drain()
        assert server.engine.drained
        with pytest.raises(JobError) as refused:
            server.accept("late", _job(2))
        assert refused.value.code is ErrorCode.BUSY
        assert server.journal.task_ids() == ["queued"]
        await server.dispatcher.stop()
        await asyncio.wait([queued], timeout=1)
        assert server.status("queued") is TaskStatus.QUEUED

    _run(main)


def test_a_shutdown_signal_lets_the_engine_run_until_no_request_waits(tmp_path: Path) -> None:
    """A synchronous request under way at the signal still gets its answer: the engine drains
    only once it has it (and at once if the request gives up)."""

    async def main() -> None:
        server = Server(tmp_path, ScriptedEngine())
        await server.dispatcher.start()

        async def sync_request(task_id: str) -> None:
            follower = server.accept(task_id, _job(1))
            with server.dispatcher.waiting_request():
                await follower

        loop = asyncio.get_running_loop()
        answered = loop.create_task(sync_request("answered"))
        given_up = loop.create_task(sync_request("given up"))
        await _until(lambda: len(server.engine.handles) == 2)
        server.dispatcher.drain()
        assert not server.engine.drained  # two requests wait
        server.engine.finish("answered")
        await answered
        assert server.status("answered") is TaskStatus.FINISHED
        assert not server.engine.drained  # one still does
        given_up.cancel()  # uvicorn's grace ran out, or the client went away
        await asyncio.wait([given_up], timeout=1)
        assert server.engine.drained
        await server.dispatcher.stop()
        assert server.status("given up") is TaskStatus.QUEUED  # it runs at the next start

    _run(main)
