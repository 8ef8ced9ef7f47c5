"""The task record and the store interface both protocols use.

A record is protocol-neutral: the protocol and action it came from are plain strings, status and
error code are the engine's vocabulary, and each front end renders them in its own wire format.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    ERROR = "error"

    @property
    def ended(self) -> bool:
        return self in (TaskStatus.FINISHED, TaskStatus.ERROR)


@dataclass
class TaskRecord:
    task_id: str
    protocol: str  # "picpik", "runware", ...
    action: str  # the protocol's own name of what was asked, e.g. "GenerateImages"
    owner: str  # the key that created it; "" when the server runs open
    status: TaskStatus = TaskStatus.QUEUED
    progress: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    seeds: list[int] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    # What the job reported besides images and texts: per-image NSFW flags ("nsfw"), the prompt
    # as translated for the job ("translation").
    outputs: dict[str, Any] = field(default_factory=dict)
    cost: int = 0
    error_code: str = ""  # a pipelines.jobs.ErrorCode value when status is ERROR
    error_message: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # what was asked, for the record


class TaskExists(ValueError):
    """create() was given a task id the store already holds."""


class TaskStore(Protocol):
    def create(self, record: TaskRecord) -> None: ...  # TaskExists for a known task id

    def get(self, task_id: str) -> TaskRecord | None: ...

    def mark_running(self, task_id: str) -> None: ...

    def set_progress(self, task_id: str, progress: float) -> None: ...

    # finish and fail end a queued or running task only, and say whether they did: a task ends
    # once, whichever replica or worker gets there first.
    def finish(
        self,
        task_id: str,
        image_ids: list[str],
        texts: list[str],
        outputs: dict[str, Any] | None = None,
    ) -> bool: ...

    def fail(self, task_id: str, error_code: str, error_message: str) -> bool: ...

    # Back to queued (progress 0) for a job that runs again after a restart; a queued or
    # running task only, and whether it was one.
    def requeue(self, task_id: str) -> bool: ...

    # A finished task whose delivery failed (Runware uploadEndpoint) becomes an error.
    def fail_delivery(self, task_id: str, error_code: str, error_message: str) -> None: ...

    def delete(self, task_id: str) -> None: ...

    def unfinished(self, owner: str | None = None) -> list[TaskRecord]: ...

    def expired(self, before: float) -> list[TaskRecord]: ...

    def add_usage(self, owner: str, points: int) -> None: ...

    def usage(self, owner: str) -> int: ...

    def close(self) -> None: ...


def interrupt_unfinished(
    store: TaskStore,
    error_code: str,
    error_message: str,
    keep: Collection[str] = (),
) -> list[str]:
    """End every task a previous process left queued or running (any store), except those in
    `keep` (tasks that will run again); their ids."""
    ids = [record.task_id for record in store.unfinished() if record.task_id not in keep]
    for task_id in ids:
        store.fail(task_id, error_code, error_message)
    return ids
