"""The admission queue: bounded, priority then FIFO, removable, closable. No GPU needed."""

from __future__ import annotations

import threading

import pytest

from pipelines.queue import JobQueue, QueueFull


def test_fifo_within_priority_and_priority_first() -> None:
    q: JobQueue[str] = JobQueue(10)
    q.put("a", "a")
    q.put("b", "b")
    q.put("urgent", "urgent", priority=5)
    q.put("c", "c")
    assert q.keys() == ["urgent", "a", "b", "c"]
    assert [q.take(0) for _ in range(4)] == ["urgent", "a", "b", "c"]
    assert q.take(0) is None


def test_full_queue_refuses_at_once() -> None:
    q: JobQueue[int] = JobQueue(2)
    q.put("1", 1)
    q.put("2", 2)
    with pytest.raises(QueueFull):
        q.put("3", 3)
    assert q.take(0) == 1
    q.put("3", 3)  # room again
    assert len(q) == 2


def test_duplicate_key_is_refused() -> None:
    q: JobQueue[int] = JobQueue(2)
    q.put("1", 1)
    with pytest.raises(ValueError):
        q.put("1", 1)


def test_remove_skips_the_item_and_frees_its_slot() -> None:
    q: JobQueue[str] = JobQueue(2)
    q.put("a", "a")
    q.put("b", "b")
    assert q.remove("a") == "a"
    assert q.remove("a") is None
    q.put("c", "c")
    assert [q.take(0), q.take(0), q.take(0)] == ["b", "c", None]


def test_take_waits_for_a_put_from_another_thread() -> None:
    q: JobQueue[str] = JobQueue(1)
    timer = threading.Timer(0.05, q.put, args=("x", "x"))
    timer.start()
    assert q.take(timeout=5) == "x"


def test_close_returns_pending_wakes_takers_and_refuses_puts() -> None:
    q: JobQueue[str] = JobQueue(3)
    q.put("a", "a")
    q.put("b", "b", priority=1)
    got: list[str | None] = []
    assert q.close() == ["b", "a"]
    worker = threading.Thread(target=lambda: got.append(q.take(timeout=5)))
    worker.start()
    worker.join(2)
    assert got == [None]
    with pytest.raises(QueueFull):
        q.put("c", "c")
