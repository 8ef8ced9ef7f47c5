"""The batch former: the engine's admission queue, grouping waiting jobs into batches.

Pure Python and thread-safe: the event loop puts, GPU worker threads take. It replaces the plain
priority queue of the foundation behind the same admission rule: when `capacity` jobs wait, put
fails at once (QueueFull) so front ends answer "busy".

Policy (each rule has a unit test in tests/unit/test_batch_former.py):
- Priority first: a higher-priority job is served before any lower one.
- Fairness across owners (API keys): among equal priorities, the owner that has been served the
  fewest images goes first (start-time fair queueing: an owner that becomes active starts at the
  current minimum of the active owners, so an idle owner cannot bank credit). One client's
  16-image burst does not starve another's single image, in choosing the next batch and in
  filling it.
- A batch is the chosen head job plus waiting jobs with an equal batch key, in the same fair
  order, up to `max_images(key)` images (a job bigger than that runs alone, whole).
- Collection window: a partly filled batch whose oldest job has waited less than `window`
  seconds is held back while it could still grow (take waits until the window closes or the
  batch fills); a full batch, or one whose window has closed, goes at once.
- Joining (continuous batching): `join(key, room)` hands a running batch the waiting jobs with
  its key that fit, unless another group should get the worker first (a higher priority, or a
  job that has waited `starvation` seconds); then it returns nothing and the running batch
  drains.
- Affinity: `take(prefer=...)` prefers groups whose key the caller already holds (its loaded
  model) among equal priorities, unless another group's oldest job has waited `starvation`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class QueueFull(Exception):
    """No room: the front end answers "busy" instead of letting a request wait unbounded."""


_OWNER_MEMORY = 1024  # owners remembered before idle ones at or below the virtual time are pruned

__all__ = ["Batch", "BatchFormer", "BatchPolicy", "QueueFull"]


@dataclass(frozen=True)
class BatchPolicy:
    capacity: int = 64  # waiting jobs beyond this are refused (QueueFull)
    window: float = 0.01  # seconds a partly filled batch may wait to grow
    starvation: float = 2.0  # seconds after which a waiting job outranks joins and affinity


@dataclass(frozen=True)
class Batch(Generic[T]):
    key: Hashable
    items: tuple[T, ...]


@dataclass(eq=False)
class _Entry(Generic[T]):
    key: str
    item: T
    batch_key: Hashable
    owner: str
    priority: int
    images: int
    arrival: float  # the injected clock's time at put
    seq: int  # arrival order, the tie-break everywhere (FIFO)


@dataclass
class _Plan(Generic[T]):
    """The batch take would hand out now, and until when its collection window holds it."""

    key: Hashable
    members: list[_Entry[T]]
    hold_until: float | None  # None: it goes now


class BatchFormer(Generic[T]):
    """Waiting jobs, grouped into batches by batch key (see the module docstring for the policy).

    One threading.Condition guards everything. `max_images` and `prefer` are called with that
    lock held: they must be quick and must not call back into the former. `max_images(key)`
    should be 1 for keys no other job can share (BatchMode.SINGLE), or the collection window
    would hold such a job for nothing. Each operation scans the waiting jobs a few times
    (O(n log n) for n waiting jobs, n <= capacity: about 0.1 ms for a take with 256 waiting)."""

    def __init__(
        self,
        policy: BatchPolicy,
        max_images: Callable[[Hashable], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy.capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.policy = policy
        self._max_images = max_images
        self._clock = clock
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry[T]] = {}  # insertion order is arrival order
        self._per_key: dict[Hashable, int] = {}  # waiting jobs per batch key
        self._per_owner: dict[str, int] = {}  # waiting jobs per owner: the active owners
        self._served: dict[str, int] = {}  # fair-queueing counter (images) per owner
        self._vtime = 0  # virtual time: where an owner that becomes active starts
        self._order = itertools.count()
        self._closed = False

    # -- public API ------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    def images(self) -> int:
        """Images the waiting jobs ask for (the queue depth in images)."""
        with self._cond:
            return sum(entry.images for entry in self._entries.values())

    def waiting(self, batch_key: Hashable) -> int:
        """Waiting jobs with this batch key."""
        with self._cond:
            return self._per_key.get(batch_key, 0)

    def put(
        self,
        key: str,
        item: T,
        *,
        batch_key: Hashable,
        owner: str = "",
        priority: int = 0,
        images: int = 1,
    ) -> None:
        """Enqueue item under a unique key; QueueFull at once when at capacity or closed."""
        if images < 1:
            raise ValueError(f"a job makes at least one image, not {images}")
        with self._cond:
            if self._closed:
                raise QueueFull("the queue is closed")
            if key in self._entries:
                raise ValueError(f"{key!r} is already queued")
            if len(self._entries) >= self.policy.capacity:
                raise QueueFull(
                    f"{len(self._entries)} jobs are waiting (capacity {self.policy.capacity})"
                )
            if owner not in self._per_owner:
                # Start-time fair queueing: a newly active owner starts no lower than the virtual
                # time, so time spent idle is not credit; one served more keeps its lead.
                self._served[owner] = max(self._served.get(owner, 0), self._vtime)
            entry = _Entry(
                key, item, batch_key, owner, priority, images, self._clock(), next(self._order)
            )
            self._entries[key] = entry
            self._per_key[batch_key] = self._per_key.get(batch_key, 0) + 1
            self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
            self._cond.notify_all()  # a held batch may now be full: every taker re-plans

    def take(
        self,
        timeout: float | None = None,
        *,
        prefer: Callable[[Hashable], bool] | None = None,
    ) -> Batch[T] | None:
        """The next batch, waiting up to timeout (None: forever); None on timeout or once closed
        and empty. A partly filled batch is held while its collection window is open; this
        wakes when a put fills it, when the window closes, or on close(). Only the head group
        is held back: other groups do not jump it meanwhile (that costs at most `window`)."""
        with self._cond:
            deadline = None if timeout is None else self._clock() + timeout
            expired = False
            while True:
                plan = self._plan(prefer)
                if plan is not None and (plan.hold_until is None or self._closed):
                    return self._commit(plan.key, plan.members)
                if (plan is None and self._closed) or expired:
                    return None
                now = self._clock()
                wait: float | None = None
                by_deadline = False
                if deadline is not None:
                    wait, by_deadline = deadline - now, True
                    if wait <= 0:
                        return None
                if plan is not None and plan.hold_until is not None:
                    window_left = plan.hold_until - now
                    if wait is None or window_left < wait:
                        wait, by_deadline = window_left, False
                if not self._cond.wait(wait) and by_deadline:
                    # Timed out on the caller's deadline: one last look, then give up (this
                    # also ends the wait when the injected clock does not follow real time).
                    expired = True

    def join(self, batch_key: Hashable, room: int) -> list[T]:
        """Waiting jobs with this batch key that fit in `room` images, in fair order, for a
        running batch to take in; [] when another group should get the worker first: a waiting
        job of another key with a higher priority than every waiting job of this key, or one
        that has waited `starvation` seconds and is not outranked by this key's jobs."""
        with self._cond:
            if room <= 0 or not self._per_key.get(batch_key):
                return []
            now = self._clock()
            own_top = max(e.priority for e in self._entries.values() if e.batch_key == batch_key)
            floor: int | None = None  # the highest priority among other keys' jobs
            for e in self._entries.values():
                if e.batch_key == batch_key:
                    continue
                if e.priority >= own_top and now - e.arrival >= self.policy.starvation:
                    return []  # let the running batch drain so the worker can turn to it
                if floor is None or e.priority > floor:
                    floor = e.priority
            candidates = [
                e
                for e in self._entries.values()
                if e.batch_key == batch_key and (floor is None or e.priority >= floor)
            ]
            members = self._fill(candidates, room, {})
            if not members:
                return []
            return list(self._commit(batch_key, members).items)

    def remove(self, key: str) -> T | None:
        """Take a waiting job out (e.g. cancelled); None if it is not waiting."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._drop(entry)
            self._refresh_vtime()
            self._cond.notify_all()  # the head may have changed
            return entry.item

    def keys(self) -> list[str]:
        """Waiting keys, roughly in serving order (priority, then fair share, then arrival)."""
        with self._cond:
            return [e.key for e in self._ranked()]

    def close(self) -> list[T]:
        """Refuse new jobs, wake every taker, and hand back what was still waiting."""
        with self._cond:
            self._closed = True
            pending = [e.item for e in self._ranked()]
            self._entries.clear()
            self._per_key.clear()
            self._per_owner.clear()
            self._cond.notify_all()
            return pending

    # -- policy ----------------------------------------------------------------------------------

    def _ranked(self) -> list[_Entry[T]]:
        served = self._served
        return sorted(self._entries.values(), key=lambda e: (-e.priority, served[e.owner], e.seq))

    def _plan(self, prefer: Callable[[Hashable], bool] | None) -> _Plan[T] | None:
        """Choose the head job (priority, affinity, fairness) and the batch around it."""
        if not self._entries:
            return None
        now = self._clock()
        entries = list(self._entries.values())
        top = max(e.priority for e in entries)
        pool = [e for e in entries if e.priority == top]
        if prefer is not None:
            verdicts: dict[Hashable, bool] = {}
            for e in pool:
                if e.batch_key not in verdicts:
                    verdicts[e.batch_key] = bool(prefer(e.batch_key))
            preferred = [e for e in pool if verdicts[e.batch_key]]
            starving = any(
                not verdicts[e.batch_key] and now - e.arrival >= self.policy.starvation
                for e in pool
            )
            if preferred and not starving:
                pool = preferred
        served = self._served
        head = min(pool, key=lambda e: (served[e.owner], e.seq))
        key = head.batch_key
        limit = max(1, self._max_images(key))
        if head.images >= limit:
            return _Plan(key, [head], None)  # full on its own (or too big: alone, never split)
        # Other keys' best priority: lower-priority jobs of this key do not ride along ahead of it.
        floor = max((e.priority for e in entries if e.batch_key != key), default=None)
        candidates = [
            e
            for e in entries
            if e.batch_key == key and e is not head and (floor is None or e.priority >= floor)
        ]
        members = [head, *self._fill(candidates, limit - head.images, {head.owner: head.images})]
        total = sum(e.images for e in members)
        can_grow = (
            total < limit
            and self.policy.window > 0
            and len(self._entries) < self.policy.capacity
            and not self._closed
        )
        if can_grow:
            oldest = min(e.arrival for e in members)
            if now - oldest < self.policy.window:
                return _Plan(key, members, oldest + self.policy.window)
        return _Plan(key, members, None)

    def _fill(
        self, candidates: list[_Entry[T]], room: int, charged: dict[str, int]
    ) -> list[_Entry[T]]:
        """Candidates (all one batch key, in arrival order) that fit in `room` images: higher
        priority first; within a priority the owner served least so far goes next, counting
        what this batch already gave it (`charged`), so a batch interleaves owners. Each owner's
        jobs go in arrival order: an owner whose next job does not fit is done for this batch."""
        by_level: dict[int, dict[str, deque[_Entry[T]]]] = {}
        for e in candidates:
            by_level.setdefault(e.priority, {}).setdefault(e.owner, deque()).append(e)
        charged = dict(charged)
        chosen: list[_Entry[T]] = []
        for priority in sorted(by_level, reverse=True):
            queues = by_level[priority]
            heap = [(self._served[o] + charged.get(o, 0), q[0].seq, o) for o, q in queues.items()]
            heapq.heapify(heap)
            while heap and room > 0:
                _, _, owner = heapq.heappop(heap)
                queue = queues[owner]
                entry = queue[0]
                if entry.images > room:
                    continue  # FIFO within an owner: skip this owner, not just this job
                queue.popleft()
                chosen.append(entry)
                room -= entry.images
                charged[owner] = charged.get(owner, 0) + entry.images
                if queue:
                    heapq.heappush(
                        heap, (self._served[owner] + charged[owner], queue[0].seq, owner)
                    )
            if room <= 0:
                break
        return chosen

    # -- bookkeeping -----------------------------------------------------------------------------

    def _commit(self, key: Hashable, members: list[_Entry[T]]) -> Batch[T]:
        """Hand members out: they leave the queue and their owners are charged their images."""
        head = members[0]
        # SFQ virtual time follows the start tag of what is being served.
        self._vtime = max(self._vtime, self._served[head.owner])
        for entry in members:
            self._drop(entry)
            self._served[entry.owner] += entry.images
        self._refresh_vtime()
        return Batch(key, tuple(e.item for e in members))

    def _drop(self, entry: _Entry[T]) -> None:
        del self._entries[entry.key]
        _decrement(self._per_key, entry.batch_key)
        _decrement(self._per_owner, entry.owner)

    def _refresh_vtime(self) -> None:
        """Virtual time never falls behind the least-served active owner; owners that are idle
        and at or below it are forgotten (they would restart at the virtual time anyway)."""
        if self._per_owner:
            self._vtime = max(self._vtime, min(self._served[o] for o in self._per_owner))
        if len(self._served) > _OWNER_MEMORY:
            self._served = {
                o: s for o, s in self._served.items() if o in self._per_owner or s > self._vtime
            }


def _decrement(counts: dict[K, int], key: K) -> None:
    """One fewer waiting job under `key`; a count that reaches zero is removed."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
