"""Per-key admission: the token bucket and the concurrent-task count, without a server."""

from __future__ import annotations

import pytest

from server.access import Admission, QuotaExceeded, QuotaKind, RateLimiter
from server.keys import ApiKey, KeyPolicy, KeyProtocol, KeySet, KeyStore
from server.taskstore import TaskRecord, TaskStatus


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class Store:
    """The one TaskStore method admission reads."""

    def __init__(self) -> None:
        self.records: list[TaskRecord] = []

    def unfinished(self, owner: str | None = None) -> list[TaskRecord]:
        return [r for r in self.records if not r.status.ended and owner in (None, r.owner)]


def test_bucket_grants_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    policy = KeyPolicy(rate_per_s=2.0, burst=3)
    assert [limiter.take("a", policy) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", policy) == pytest.approx(0.5)
    assert limiter.take("b", policy) == 0.0  # buckets are per owner
    clock.now += 0.5
    assert limiter.take("a", policy) == 0.0
    assert limiter.take("a", policy) > 0
    clock.now += 100  # the bucket refills up to its size, no more
    assert [limiter.take("a", policy) for _ in range(4)].count(0.0) == 3


def test_no_rate_means_unlimited_and_the_default_bucket_is_a_second() -> None:
    limiter = RateLimiter(Clock())
    assert all(limiter.take("a", KeyPolicy()) == 0.0 for _ in range(1000))
    assert KeyPolicy(rate_per_s=5.0).bucket_size == 5.0
    assert KeyPolicy(rate_per_s=0.1).bucket_size == 1.0


def _admission(policy: KeyPolicy) -> tuple[Admission, Store, str, Clock]:
    key = ApiKey(KeyProtocol.RUNWARE, "k", "0" * 64, policy=policy)
    clock, store = Clock(), Store()
    admission = Admission(KeyStore(KeySet((key,), configured=True)), store, clock=clock)  # type: ignore[arg-type]
    return admission, store, key.owner, clock


def test_concurrency_counts_the_keys_unfinished_tasks() -> None:
    admission, store, owner, _ = _admission(KeyPolicy(max_concurrent=2))
    store.records = [
        TaskRecord("t1", "runware", "imageInference", owner),
        TaskRecord("t2", "runware", "imageInference", owner, status=TaskStatus.RUNNING),
        TaskRecord("t3", "runware", "imageInference", "someone else"),
    ]
    with pytest.raises(QuotaExceeded) as refused:
        admission.admit(owner)
    assert refused.value.kind is QuotaKind.CONCURRENCY
    assert "2 tasks queued or running" in refused.value.message
    store.records[1].status = TaskStatus.FINISHED
    admission.admit(owner)
    admission.admit("someone else")  # an unknown owner gets the default: unlimited


def test_rate_refusal_says_when_to_retry() -> None:
    admission, _, owner, clock = _admission(KeyPolicy(rate_per_s=1.0, burst=1))
    admission.admit(owner)
    with pytest.raises(QuotaExceeded) as refused:
        admission.admit(owner)
    assert refused.value.kind is QuotaKind.RATE
    assert refused.value.retry_after_s == pytest.approx(1.0)
    assert "1 tasks per second" in refused.value.message and "retry in 1 s" in refused.value.message
    clock.now += 1.0
    admission.admit(owner)
