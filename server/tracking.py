"""Follow engine jobs to their end and keep the task store in step, for every protocol.

Progress and state arrive on the event loop (the handle delivers them there); images are encoded
and written in a helper thread so the loop never blocks on PNG encoding or the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from PIL.Image import Image

from pipelines.batching.stats import EngineStats
from pipelines.handle import JobHandle
from pipelines.jobs import ErrorCode, JobError, JobProgress, JobResult, JobState
from server.results import PNG, Encoding, ResultStore
from server.taskstore import TaskStore

log = logging.getLogger(__name__)

_PROGRESS_STEP = 0.01  # store progress changes of at least 1%


class TaskTracker:
    def __init__(
        self,
        store: TaskStore,
        results: ResultStore,
        stats: EngineStats | None = None,
        *,
        record_interruptions: bool = True,
    ) -> None:
        self.store = store
        self.results = results
        self.stats = stats  # encoding + storing time counts as engine overhead per job
        # False on cluster workers: a job cut short by the worker's shutdown goes back to the
        # queue for another worker, so its task must not end here.
        self.record_interruptions = record_interruptions
        self._followers: set[asyncio.Task[None]] = set()

    def follow(
        self, task_id: str, handle: JobHandle, encoding: Encoding = PNG
    ) -> asyncio.Task[None]:
        """Keep the task's record in step with the job; the returned task ends once the record
        is final (images written, or the error stored)."""
        started, stored = False, 0.0

        def on_progress(progress: JobProgress) -> None:
            nonlocal started, stored
            if progress.state is not JobState.RUNNING:
                return
            if not started:
                started = True
                self.store.mark_running(task_id)
            if progress.fraction - stored >= _PROGRESS_STEP or progress.fraction == 1.0:
                stored = progress.fraction
                self.store.set_progress(task_id, progress.fraction)
                log.debug("task %s at %.0f%%", task_id, 100 * progress.fraction)

        handle.subscribe(on_progress)
        follower = asyncio.get_running_loop().create_task(self._settle(task_id, handle, encoding))
        self._followers.add(follower)
        follower.add_done_callback(self._followers.discard)
        return follower

    async def _settle(self, task_id: str, handle: JobHandle, encoding: Encoding) -> None:
        try:
            result = await handle.result()
        except JobError as error:
            if error.code is ErrorCode.INTERRUPTED and not self.record_interruptions:
                log.info("task %s interrupted: left to run again", task_id)
                return
            log.debug("task %s ended in error: %s (%s)", task_id, error.code.value, error.message)
            self.store.fail(task_id, error.code.value, error.message)
            return
        try:
            image_ids = await asyncio.to_thread(
                self._save, result.images, encoding, handle.job.owner
            )
        except OSError as error:
            log.exception("task %s: cannot write its images", task_id)
            self.store.fail(task_id, ErrorCode.INTERNAL.value, f"cannot store images: {error}")
            return
        if not self.store.finish(task_id, image_ids, list(result.texts), job_outputs(result)):
            # Another worker ended the task first (a redelivered job): keep one set of images.
            await asyncio.to_thread(self._drop, image_ids)
            log.info("task %s had already ended: dropped this run's images", task_id)
            return
        log.debug("task %s finished with %d image(s)", task_id, len(image_ids))

    def _drop(self, image_ids: list[str]) -> None:
        for image_id in image_ids:
            self.results.delete(image_id)

    def _save(self, images: tuple[Image, ...], encoding: Encoding, owner: str) -> list[str]:
        timing = self.stats.overhead("encode_store") if self.stats else contextlib.nullcontext()
        with timing:
            return [self.results.save(image, encoding, owner) for image in images]

    async def drain(self, timeout: float = 10.0) -> None:
        """Let followers write what their jobs produced (at shutdown, after the engine stops)."""
        if self._followers:
            await asyncio.wait(set(self._followers), timeout=timeout)


def job_outputs(result: JobResult) -> dict[str, Any]:
    """What a task record keeps of a result besides images and texts (TaskRecord.outputs)."""
    outputs: dict[str, Any] = {}
    if result.nsfw:
        outputs["nsfw"] = list(result.nsfw)
    if result.translation is not None:
        outputs["translation"] = dataclasses.asdict(result.translation)
    return outputs
