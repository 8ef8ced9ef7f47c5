"""The job journal: every accepted task's job, kept on disk until its record is final.

A single server runs jobs in its own process, so a crash (kill -9, the out-of-memory killer, a
killed container) or a shutdown would otherwise lose every job that was queued or running: the task
record says "queued" forever, or the next start fails it as interrupted. The journal keeps what
is needed to run the job again: the job itself (pipelines.job_codec, the same JSON the cluster
sends its workers), how its images are stored (server.results.Encoding) and, for a front end
that delivers results itself (Runware webhookURL / uploadEndpoint), an opaque delivery dict.

LocalDispatcher.submit writes the entry, committed, before the client learns the task id, and
removes it once the record is final; at the next start every entry whose record is still queued
or running is re-run under the same task id with the same seeds, so the client polls the same
task and gets the images it would have got. SQLite in WAL mode with synchronous=NORMAL: a
committed entry survives the process dying at any point (a power loss of the machine may lose
the last few, exactly like the task store next to it).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.results import Encoding, ImageFormat

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    task_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    format TEXT NOT NULL,
    quality INTEGER NOT NULL,
    delivery TEXT,
    accepted_at REAL NOT NULL,
    cut_short INTEGER NOT NULL DEFAULT 0
);
"""


class JournalError(ValueError):
    """A journal entry that cannot be read back (written by another version, or damaged)."""


@dataclass(frozen=True)
class JournalEntry:
    task_id: str
    job: dict[str, Any]  # pipelines.job_codec.encode_job's output
    encoding: Encoding
    delivery: dict[str, Any] | None  # what a front end needs to deliver the result itself
    accepted_at: float


class JobJournal:
    """The journal table in its own SQLite file (calls are short: fine on the event loop)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def add(
        self,
        task_id: str,
        job: Mapping[str, Any],
        encoding: Encoding,
        delivery: Mapping[str, Any] | None = None,
    ) -> None:
        """Record an accepted task's job (replacing an older entry of the same task: a re-run
        after a restart writes its entry again). Committed when this returns."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO journal"
                " (task_id, job, format, quality, delivery, accepted_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    json.dumps(job, separators=(",", ":")),
                    encoding.format.value,
                    encoding.quality,
                    None if delivery is None else json.dumps(dict(delivery)),
                    time.time(),
                ),
            )

    def cut_short(self, task_id: str) -> int:
        """Count one more run of the task that the process did not survive (or that a shutdown
        cut); the new count, 0 for an unknown task. A job that kills the server every time it
        runs is given up after a few, instead of crashing every restart."""
        with self._lock:
            self._db.execute(
                "UPDATE journal SET cut_short = cut_short + 1 WHERE task_id = ?", (task_id,)
            )
            row = self._db.execute(
                "SELECT cut_short FROM journal WHERE task_id = ?", (task_id,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM journal WHERE task_id = ?", (task_id,))

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM journal WHERE task_id = ?", (task_id,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM journal").fetchone()[0])

    def task_ids(self) -> list[str]:
        """Every journaled task id, oldest entry first."""
        with self._lock:
            rows = self._db.execute("SELECT task_id FROM journal ORDER BY accepted_at").fetchall()
        return [row[0] for row in rows]

    def get(self, task_id: str) -> JournalEntry | None:
        """The task's entry; JournalError when it cannot be read back."""
        with self._lock:
            row = self._db.execute(
                "SELECT task_id, job, format, quality, delivery, accepted_at FROM journal"
                " WHERE task_id = ?",
                (task_id,),
            ).fetchone()
        return None if row is None else _entry(row)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    task_id, job, image_format, quality, delivery, accepted_at = row
    try:
        decoded_job = json.loads(job)
        decoded_delivery = None if delivery is None else json.loads(delivery)
        encoding = Encoding(ImageFormat(image_format), int(quality))
    except (ValueError, TypeError) as error:
        raise JournalError(f"journal entry of task {task_id}: {error}") from None
    if not isinstance(decoded_job, dict) or not isinstance(decoded_delivery, dict | None):
        raise JournalError(f"journal entry of task {task_id}: not a job")
    return JournalEntry(task_id, decoded_job, encoding, decoded_delivery, float(accepted_at))
