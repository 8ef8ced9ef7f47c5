"""The SQLite task store: lifecycle, persistence across reopen, interruption, usage."""

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


def test_progress_never_moves_an_ended_task(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "t.sqlite3")
    store.create(_record("t"))
    store.fail("t", "cancelled", "stop")
    store.mark_running("t")
    store.set_progress("t", 0.3)
    record = store.get("t")
    assert (record.status, record.progress, record.error_code) == (
        TaskStatus.ERROR,
        0.0,
        "cancelled",
    )


def test_unfinished_and_interrupt(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "t.sqlite3")
    for task_id, owner in (("a", "x"), ("b", "y"), ("c", "x")):
        store.create(_record(task_id, owner))
    store.mark_running("b")
    store.finish("c", [], [])
    assert [r.task_id for r in store.unfinished()] == ["a", "b"]
    assert [r.task_id for r in store.unfinished("x")] == ["a"]
    assert sorted(store.interrupt_unfinished("interrupted", "restart")) == ["a", "b"]
    assert store.unfinished() == []
    assert store.get("b").error_message == "restart"


def test_usage_accumulates_per_owner(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "t.sqlite3")
    store.add_usage("x", 3)
    store.add_usage("x", 4)
    store.add_usage("y", 1)
    assert (store.usage("x"), store.usage("y"), store.usage("z")) == (7, 1, 0)
