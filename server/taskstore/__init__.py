"""Task records behind one interface: SQLite in the data directory by default."""

from server.taskstore.base import (
    TaskExists,
    TaskRecord,
    TaskStatus,
    TaskStore,
    interrupt_unfinished,
)
from server.taskstore.sqlite import SqliteTaskStore

__all__ = [
    "SqliteTaskStore",
    "TaskExists",
    "TaskRecord",
    "TaskStatus",
    "TaskStore",
    "interrupt_unfinished",
]
