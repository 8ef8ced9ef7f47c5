"""A TaskStore that logs every task state change and records it as metrics.

It wraps the real store (SQLite, or Redis in a cluster) wherever stores are built, so every
state change is seen once, where it happens: one INFO line per change on the logger
`server.taskstore.observed`, with the task id, its protocol and action, and the new state
(`extra=` fields, JSON keys with --log-json); never prompts, owners or keys. Latency is measured
from the record's created_at, so it is right on whichever process ends the task (a cluster
worker ends tasks an API replica created).

finish, fail and requeue say whether they changed anything (a task ends once, whichever worker
gets there first): only real changes are logged and counted. mark_running does not say; the
tracker calls it once per run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.jobs import ErrorCode
from server.metrics import ServerMetrics
from server.taskstore.base import TaskRecord, TaskStore

log = logging.getLogger(__name__)

KNOWN_TASKS = 10_000  # tasks whose protocol, action and creation time are kept at hand


@dataclass(frozen=True)
class _Task:
    protocol: str
    action: str
    created_at: float


class ObservedTaskStore:
    def __init__(
        self, inner: TaskStore, metrics: ServerMetrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.inner = inner
        self.metrics = metrics
        self._clock = clock
        self._known: OrderedDict[str, _Task] = OrderedDict()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        """What the inner store has besides the TaskStore interface (RedisTaskStore.key...)."""
        return getattr(self.inner, name)

    # --- state changes ---

    def create(self, record: TaskRecord) -> None:
        self.inner.create(record)  # it sets created_at
        task = self._remember(record)
        self._changed(record.task_id, task, "queued")

    def mark_running(self, task_id: str) -> None:
        self.inner.mark_running(task_id)
        task = self._task(task_id)
        self._changed(task_id, task, "running")
        if task is not None:
            waited = max(0.0, self._clock() - task.created_at)
            self.metrics.queue_seconds.labels(task.protocol, task.action).observe(waited)

    def finish(
        self,
        task_id: str,
        image_ids: list[str],
        texts: list[str],
        outputs: dict[str, Any] | None = None,
    ) -> bool:
        changed = self.inner.finish(task_id, image_ids, texts, outputs)
        if changed:
            self._ended(task_id, "finished", images=len(image_ids))
        return changed

    def fail(self, task_id: str, error_code: str, error_message: str) -> bool:
        changed = self.inner.fail(task_id, error_code, error_message)
        if changed:
            state = "cancelled" if error_code == ErrorCode.CANCELLED.value else "failed"
            self._ended(task_id, state, code=error_code)
        return changed

    def requeue(self, task_id: str) -> bool:
        changed = self.inner.requeue(task_id)
        if changed:
            self._changed(task_id, self._task(task_id), "requeued")
        return changed

    def fail_delivery(self, task_id: str, error_code: str, error_message: str) -> None:
        """A finished task whose result could not be delivered: logged and counted as a
        failure (its duration was counted when it finished)."""
        self.inner.fail_delivery(task_id, error_code, error_message)
        task = self._task(task_id)
        self._changed(task_id, task, "failed", code=error_code)
        self._forget(task_id)
        if task is not None:
            self.metrics.task_failures.labels(task.protocol, task.action, error_code).inc()

    # --- the rest of the interface, as is ---

    def get(self, task_id: str) -> TaskRecord | None:
        record = self.inner.get(task_id)
        if record is not None and not record.status.ended:
            self._remember(record)  # a cluster worker learns of the task here
        return record

    def set_progress(self, task_id: str, progress: float) -> None:
        self.inner.set_progress(task_id, progress)

    def delete(self, task_id: str) -> None:
        self.inner.delete(task_id)
        self._forget(task_id)

    def unfinished(self, owner: str | None = None) -> list[TaskRecord]:
        return self.inner.unfinished(owner)

    def expired(self, before: float) -> list[TaskRecord]:
        return self.inner.expired(before)

    def add_usage(self, owner: str, points: int) -> None:
        self.inner.add_usage(owner, points)

    def usage(self, owner: str) -> int:
        return self.inner.usage(owner)

    def close(self) -> None:
        self.inner.close()

    # --- bookkeeping ---

    def _ended(self, task_id: str, state: str, *, code: str = "", images: int = 0) -> None:
        task = self._task(task_id)
        self._forget(task_id)
        self._changed(task_id, task, state, code=code, images=images)
        if task is None:
            return
        took = max(0.0, self._clock() - task.created_at)
        self.metrics.task_seconds.labels(task.protocol, task.action, state).observe(took)
        if state == "failed":
            self.metrics.task_failures.labels(task.protocol, task.action, code).inc()

    def _changed(
        self, task_id: str, task: _Task | None, state: str, *, code: str = "", images: int = 0
    ) -> None:
        protocol, action = (task.protocol, task.action) if task else ("", "")
        extra: dict[str, Any] = {
            "task_id": task_id,
            "state": state,
            "protocol": protocol,
            "action": action,
        }
        detail = f" ({protocol} {action})" if task else ""
        if code:
            extra["code"] = code
            detail += f": {code}"
        if images:
            extra["images"] = images
            detail += f", {images} image(s)"
        log.info("task %s %s%s", task_id, state, detail, extra=extra)
        if task is not None:
            self.metrics.tasks.labels(protocol, action, state).inc()

    def _remember(self, record: TaskRecord) -> _Task:
        task = _Task(record.protocol, record.action, record.created_at)
        with self._lock:
            self._known[record.task_id] = task
            self._known.move_to_end(record.task_id)
            while len(self._known) > KNOWN_TASKS:
                self._known.popitem(last=False)
        return task

    def _task(self, task_id: str) -> _Task | None:
        """The task's protocol, action and creation time; read from the store when this
        process has not seen it yet (None: the record is gone)."""
        with self._lock:
            task = self._known.get(task_id)
        if task is not None:
            return task
        record = self.inner.get(task_id)
        return None if record is None else _Task(record.protocol, record.action, record.created_at)

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._known.pop(task_id, None)
