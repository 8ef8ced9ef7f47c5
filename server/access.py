"""Per-key admission: how many tasks a key may submit per second, and how many it may have
queued or running at once. Both protocols ask the same Admission before they queue work, and
turn its QuotaExceeded into their own error (PICPIK RetCode, Runware errors[] item).

The rate is a token bucket per key in this process: with several API replicas each replica
enforces it, so a cluster admits up to replicas x rate. The concurrency count comes from the task
store, which every replica shares, so it holds cluster-wide (two submissions racing on two
replicas can both pass the check; the next one is refused).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from server.keys import KeyPolicy, KeyStore
from server.taskstore import TaskStore


class QuotaKind(StrEnum):
    RATE = "rate"  # too many submissions per second
    CONCURRENCY = "concurrency"  # too many tasks queued or running


class QuotaExceeded(Exception):
    def __init__(self, kind: QuotaKind, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by owner; thread-safe, clock injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, owner: str, policy: KeyPolicy, count: int = 1) -> float:
        """Take `count` tokens; 0.0 when granted, else the seconds until they would be."""
        if policy.rate_per_s is None:
            return 0.0
        capacity = policy.bucket_size
        now = self._clock()
        with self._lock:
            bucket = self._buckets.setdefault(owner, _Bucket(capacity, now))
            bucket.tokens = min(
                capacity, bucket.tokens + (now - bucket.updated) * policy.rate_per_s
            )
            bucket.updated = now
            if bucket.tokens >= count:
                bucket.tokens -= count
                return 0.0
            return (count - bucket.tokens) / policy.rate_per_s


class Admission:
    """The checks a front end runs before it queues a key's task."""

    def __init__(
        self,
        keys: KeyStore,
        store: TaskStore,
        default_policy: KeyPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self.store = store
        self.default_policy = default_policy or KeyPolicy()  # the open server's owner ""
        self.limiter = RateLimiter(clock)

    def policy(self, owner: str) -> KeyPolicy:
        return self.keys.policy(owner, self.default_policy)

    def admit(self, owner: str) -> None:
        """QuotaExceeded unless `owner` may queue one more task now (counts it against the
        rate when admitted)."""
        policy = self.policy(owner)
        if policy.max_concurrent is not None:
            active = len(self.store.unfinished(owner))
            if active >= policy.max_concurrent:
                raise QuotaExceeded(
                    QuotaKind.CONCURRENCY,
                    f"this key has {active} tasks queued or running, its limit is "
                    f"{policy.max_concurrent}: wait for one to finish",
                    1.0,
                )
        wait = self.limiter.take(owner, policy)
        if wait > 0:
            raise QuotaExceeded(
                QuotaKind.RATE,
                f"this key may submit {policy.rate_per_s:g} tasks per second (burst "
                f"{policy.bucket_size:g}): retry in {math.ceil(wait * 10) / 10:g} s",
                wait,
            )
