"""The engine's admission queue: bounded, priority-ordered, FIFO within a priority.

Pure Python and thread-safe: the event loop puts, GPU worker threads take. When it is full, put
fails at once so the front end can answer "busy" instead of letting a request wait unbounded.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    pass


@dataclass(order=True)
class _Entry(Generic[T]):
    sort_key: tuple[int, int]
    key: str = field(compare=False)
    item: T = field(compare=False)
    removed: bool = field(default=False, compare=False)


class JobQueue(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self._heap: list[_Entry[T]] = []
        self._by_key: dict[str, _Entry[T]] = {}
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._by_key)

    def put(self, key: str, item: T, *, priority: int = 0) -> None:
        """Enqueue item under a unique key; QueueFull at once when at capacity or closed."""
        with self._cond:
            if self._closed:
                raise QueueFull("the queue is closed")
            if key in self._by_key:
                raise ValueError(f"{key!r} is already queued")
            if len(self._by_key) >= self.capacity:
                raise QueueFull(f"{len(self._by_key)} jobs are waiting (capacity {self.capacity})")
            entry = _Entry((-priority, next(self._order)), key, item)
            heapq.heappush(self._heap, entry)
            self._by_key[key] = entry
            self._cond.notify()

    def take(self, timeout: float | None = None) -> T | None:
        """The next item, waiting up to timeout; None on timeout or once closed and empty."""
        with self._cond:
            while True:
                while self._heap and self._heap[0].removed:
                    heapq.heappop(self._heap)
                if self._heap:
                    entry = heapq.heappop(self._heap)
                    del self._by_key[entry.key]
                    return entry.item
                if self._closed or not self._cond.wait(timeout):
                    return None

    def remove(self, key: str) -> T | None:
        """Take a waiting item out of the queue (e.g. cancelled); None if it is not waiting."""
        with self._cond:
            entry = self._by_key.pop(key, None)
            if entry is None:
                return None
            entry.removed = True  # lazily dropped from the heap by take()
            return entry.item

    def keys(self) -> list[str]:
        """Waiting keys in the order they will be taken."""
        with self._cond:
            return [e.key for e in sorted(self._by_key.values())]

    def close(self) -> list[T]:
        """Refuse new items, wake every taker, and hand back what was still waiting."""
        with self._cond:
            self._closed = True
            pending = [e.item for e in sorted(self._by_key.values())]
            self._heap.clear()
            self._by_key.clear()
            self._cond.notify_all()
            return pending
