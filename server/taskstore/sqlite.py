"""SQLite task store: durable, zero set-up, one file in the data directory.

Each call is one short transaction on a single connection (WAL mode), fast enough to run on the
event loop; a lock makes it safe from the helper threads too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from server.taskstore.base import TaskExists, TaskRecord, TaskStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    action TEXT NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    seeds TEXT NOT NULL,
    image_ids TEXT NOT NULL,
    texts TEXT NOT NULL,
    outputs TEXT NOT NULL DEFAULT '{}',
    cost INTEGER NOT NULL,
    error_code TEXT NOT NULL,
    error_message TEXT NOT NULL,
    params TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, owner);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at);
CREATE TABLE IF NOT EXISTS usage (
    owner TEXT PRIMARY KEY,
    points INTEGER NOT NULL
);
"""

_JSON_FIELDS = ("seeds", "image_ids", "texts", "outputs", "params")
# Columns added after the first release: ALTER TABLE brings an older data directory up to date.
_ADDED_COLUMNS = {"outputs": "TEXT NOT NULL DEFAULT '{}'"}
_UNFINISHED = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)


class SqliteTaskStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            present = {row["name"] for row in self._db.execute("PRAGMA table_info(tasks)")}
            for name, declaration in _ADDED_COLUMNS.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {declaration}")

    def _execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _query(self, sql: str, args: tuple = ()) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_record(row) for row in rows]

    def create(self, record: TaskRecord) -> None:
        now = time.time()
        record.created_at = record.created_at or now
        record.updated_at = now
        values = {
            **{name: getattr(record, name) for name in _COLUMNS},
            **{name: json.dumps(getattr(record, name)) for name in _JSON_FIELDS},
            "status": record.status.value,
        }
        placeholders = ", ".join("?" for _ in _COLUMNS)
        try:
            self._execute(
                f"INSERT INTO tasks ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                tuple(values[name] for name in _COLUMNS),
            )
        except sqlite3.IntegrityError:
            raise TaskExists(f"task {record.task_id!r} exists already") from None

    def get(self, task_id: str) -> TaskRecord | None:
        found = self._query("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return found[0] if found else None

    def mark_running(self, task_id: str) -> None:
        self._execute(
            "UPDATE tasks SET status = ?, updated_at = ? WHERE task_id = ? AND status = ?",
            (TaskStatus.RUNNING.value, time.time(), task_id, TaskStatus.QUEUED.value),
        )

    def set_progress(self, task_id: str, progress: float) -> None:
        self._execute(
            "UPDATE tasks SET progress = ?, updated_at = ? WHERE task_id = ? AND status = ?",
            (progress, time.time(), task_id, TaskStatus.RUNNING.value),
        )

    def finish(
        self,
        task_id: str,
        image_ids: list[str],
        texts: list[str],
        outputs: dict[str, Any] | None = None,
    ) -> bool:
        cursor = self._execute(
            "UPDATE tasks SET status = ?, progress = 1, image_ids = ?, texts = ?, outputs = ?,"
            " updated_at = ? WHERE task_id = ? AND status IN (?, ?)",
            (
                TaskStatus.FINISHED.value,
                json.dumps(image_ids),
                json.dumps(texts),
                json.dumps(outputs or {}),
                time.time(),
                task_id,
                *_UNFINISHED,
            ),
        )
        return cursor.rowcount > 0

    def fail(self, task_id: str, error_code: str, error_message: str) -> bool:
        cursor = self._execute(
            "UPDATE tasks SET status = ?, error_code = ?, error_message = ?, updated_at = ?"
            " WHERE task_id = ? AND status IN (?, ?)",
            (TaskStatus.ERROR.value, error_code, error_message, time.time(), task_id, *_UNFINISHED),
        )
        return cursor.rowcount > 0

    def requeue(self, task_id: str) -> bool:
        cursor = self._execute(
            "UPDATE tasks SET status = ?, progress = 0, updated_at = ?"
            " WHERE task_id = ? AND status IN (?, ?)",
            (TaskStatus.QUEUED.value, time.time(), task_id, *_UNFINISHED),
        )
        return cursor.rowcount > 0

    def fail_delivery(self, task_id: str, error_code: str, error_message: str) -> None:
        self._execute(
            "UPDATE tasks SET status = ?, error_code = ?, error_message = ?, updated_at = ?"
            " WHERE task_id = ?",
            (TaskStatus.ERROR.value, error_code, error_message, time.time(), task_id),
        )

    def delete(self, task_id: str) -> None:
        self._execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))

    def unfinished(self, owner: str | None = None) -> list[TaskRecord]:
        sql = "SELECT * FROM tasks WHERE status IN (?, ?)"
        args: tuple = _UNFINISHED
        if owner is not None:
            sql, args = sql + " AND owner = ?", (*args, owner)
        return self._query(sql + " ORDER BY created_at", args)

    def expired(self, before: float) -> list[TaskRecord]:
        return self._query("SELECT * FROM tasks WHERE created_at < ?", (before,))

    def add_usage(self, owner: str, points: int) -> None:
        self._execute(
            "INSERT INTO usage (owner, points) VALUES (?, ?)"
            " ON CONFLICT(owner) DO UPDATE SET points = points + excluded.points",
            (owner, points),
        )

    def usage(self, owner: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT points FROM usage WHERE owner = ?", (owner,)).fetchone()
        return int(row["points"]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


_COLUMNS = (
    "task_id",
    "protocol",
    "action",
    "owner",
    "status",
    "progress",
    "created_at",
    "updated_at",
    "seeds",
    "image_ids",
    "texts",
    "outputs",
    "cost",
    "error_code",
    "error_message",
    "params",
)


def _record(row: sqlite3.Row) -> TaskRecord:
    values = {name: row[name] for name in _COLUMNS}
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name])
    values["status"] = TaskStatus(values["status"])
    return TaskRecord(**values)
