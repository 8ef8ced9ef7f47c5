"""Live progress for async tasks sent over the WebSocket: pushed status items, then the result.

A Runware client that sends `deliveryMethod: "async"` gets its acknowledgement at once and would
poll getResponse. On a WebSocket the server can do better at no cost to such clients: while the
task runs it pushes `{"status": "processing", "progress": P}` items (P: 0..100, runware-sdk 1.x
hands them to its on_progress callback; the 0.5 SDK ignores items without an imageUUID), and when
the task ends the same items getResponse would return, or its error. The record in the task store
is the source (the tracker writes progress there, on one machine or from cluster workers), so the
same code serves both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from server.runware.common import Push, Reply
from server.taskstore import TaskStore

POLL_INTERVAL_S = 0.25  # how often a running task's record is read for a change of progress


def progress_item(task_type: str, task_uuid: str, progress: float) -> dict[str, Any]:
    """The status item of a task still running; progress is a whole percentage, as in
    getResponse."""
    return {
        "taskType": task_type,
        "taskUUID": task_uuid,
        "status": "processing",
        "progress": round(100 * progress),
    }


async def push_progress(
    store: TaskStore, task_type: str, task_uuid: str, push: Push, done: Awaitable[Any]
) -> None:
    """Push a status item each time the task's whole-percent progress changes, until `done`
    (the task's delivery) completes; the caller pushes the final items."""
    finished = asyncio.ensure_future(done)
    sent: int | None = None
    while not finished.done():
        record = store.get(task_uuid)
        if record is not None and not record.status.ended:
            item = progress_item(task_type, task_uuid, record.progress)
            if item["progress"] != sent:
                sent = item["progress"]
                push(Reply(data=[item]))
        await asyncio.wait([finished], timeout=POLL_INTERVAL_S)
