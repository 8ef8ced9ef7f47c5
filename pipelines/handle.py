"""A submitted job's handle: progress, result and cancellation across threads.

The GPU worker thread reports into it; the event loop awaits it. Every state change is delivered
to subscribers on the event loop thread, so front ends can update their task store without
locks and without blocking the worker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from pipelines.jobs import (
    ErrorCode,
    Job,
    JobError,
    JobProgress,
    JobResult,
    JobState,
    Translation,
)

ProgressListener = Callable[[JobProgress], None]

CANCELLED_BY_REQUEST = JobError(ErrorCode.CANCELLED, "the task was terminated by request")


class JobHandle:
    def __init__(
        self,
        job_id: str,
        job: Job,
        loop: asyncio.AbstractEventLoop,
        on_cancel: Callable[[JobHandle], None],
    ) -> None:
        self.job_id = job_id
        self.job = job
        self._loop = loop
        self._on_cancel = on_cancel
        self._lock = threading.Lock()
        self._progress = JobProgress(JobState.QUEUED)
        self._cancel_requested = threading.Event()
        self._outcome: asyncio.Future[JobResult] = loop.create_future()
        self._listeners: list[ProgressListener] = []
        self._cancel_reason = CANCELLED_BY_REQUEST
        # Set by the worker when it translated the job's prompt (job is then the translated one).
        self.translation: Translation | None = None

    # --- front-end side (event loop thread) ---

    @property
    def progress(self) -> JobProgress:
        with self._lock:
            return self._progress

    @property
    def done(self) -> bool:
        return self.progress.state in (JobState.FINISHED, JobState.FAILED)

    def subscribe(self, listener: ProgressListener) -> None:
        """Call listener (on the event loop) at every state or step change from now on."""
        self._listeners.append(listener)

    async def result(self) -> JobResult:
        """The images, or JobError (cancelled, out of memory, ...)."""
        return await asyncio.shield(self._outcome)

    def cancel(self, reason: JobError | None = None) -> None:
        """Ask the job to stop: a queued job is dropped, a running one stops at its next step.

        It then fails with reason (default: cancelled by request).
        """
        with self._lock:
            self._cancel_reason = reason or CANCELLED_BY_REQUEST
        self._cancel_requested.set()
        self._on_cancel(self)

    # --- worker side (any thread) ---

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested.is_set()

    def report(self, progress: JobProgress) -> None:
        with self._lock:
            if self._progress.state in (JobState.FINISHED, JobState.FAILED):
                return
            self._progress = progress
        self._loop.call_soon_threadsafe(self._notify, progress)

    def finish(self, result: JobResult) -> None:
        self.report(
            JobProgress(JobState.FINISHED, self.progress.total_steps, self.progress.total_steps)
        )
        self._loop.call_soon_threadsafe(self._settle, result, None)

    def fail(self, error: JobError) -> None:
        progress = self.progress
        self.report(JobProgress(JobState.FAILED, progress.step, progress.total_steps))
        self._loop.call_soon_threadsafe(self._settle, None, error)

    @property
    def cancel_reason(self) -> JobError:
        with self._lock:
            return self._cancel_reason

    def fail_cancelled(self) -> None:
        self.fail(self.cancel_reason)

    # --- event loop internals ---

    def _notify(self, progress: JobProgress) -> None:
        for listener in list(self._listeners):
            listener(progress)

    def _settle(self, result: JobResult | None, error: JobError | None) -> None:
        if self._outcome.done():
            return
        if error is not None:
            self._outcome.set_exception(error)
        else:
            assert result is not None
            self._outcome.set_result(result)
