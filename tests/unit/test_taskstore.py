"""The SQLite task store keeps its records across a reopen.

The contract every store shares (transitions, interruption, usage) is tested on SQLite and
Redis alike in tests/cluster/test_redis_stores.py.
"""

from __future__ import annotations

from pathlib import Path

from server.taskstore import SqliteTaskStore, TaskRecord, TaskStatus


def _record(task_id: str, owner: str = "k") -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        protocol="picpik",
        action="GenerateImages",
        owner=owner,
        seeds=[5, 6],
        cost=3,
        params={"width": 64},
    )


def test_lifecycle_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    store = SqliteTaskStore(path)
    store.create(_record("t1"))
    store.mark_running("t1")
    store.set_progress("t1", 0.5)
    assert (store.get("t1").status, store.get("t1").progress) == (TaskStatus.RUNNING, 0.5)
    store.finish("t1", ["img-a", "img-b"], ["caption"])
    store.close()

    reopened = SqliteTaskStore(path)
    record = reopened.get("t1")
    assert record is not None
    assert record.status is TaskStatus.FINISHED
    assert record.image_ids == ["img-a", "img-b"]
    assert record.texts == ["caption"]
    assert record.seeds == [5, 6]
    assert record.params == {"width": 64}
    assert record.progress == 1.0
    assert reopened.get("missing") is None


def test_an_older_database_gains_the_outputs_column(tmp_path: Path) -> None:
    """A data directory written before task outputs existed opens, and its records read back
    with empty outputs; new finishes store them."""
    import sqlite3

    path = tmp_path / "tasks.sqlite3"
    store = SqliteTaskStore(path)
    store.create(_record("old"))
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE tasks DROP COLUMN outputs")
        assert "outputs" not in {row[1] for row in db.execute("PRAGMA table_info(tasks)")}

    reopened = SqliteTaskStore(path)
    assert reopened.get("old").outputs == {}
    assert reopened.finish("old", ["img"], [], {"nsfw": [True]})
    assert reopened.get("old").outputs == {"nsfw": [True]}
