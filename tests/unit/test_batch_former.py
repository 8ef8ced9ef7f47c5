"""The batch former's policy, one rule per test: priority, fairness across owners, batch grouping,
the collection window, joining, affinity, and the admission-queue basics. A fake clock and
timeout=0 takes keep these instant; two small tests use real threads for the blocking paths."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Hashable

import pytest

from pipelines.batching.former import Batch, BatchFormer, BatchPolicy, QueueFull


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(
    max_images: int = 4,
    *,
    capacity: int = 64,
    window: float = 0.0,
    starvation: float = 2.0,
    clock: FakeClock | None = None,
) -> BatchFormer[str]:
    policy = BatchPolicy(capacity=capacity, window=window, starvation=starvation)
    return BatchFormer(policy, lambda key: max_images, clock=clock or FakeClock())


def take(former: BatchFormer[str], **kwargs: object) -> Batch[str]:
    batch = former.take(0, **kwargs)  # type: ignore[arg-type]
    assert batch is not None
    return batch


def drain(former: BatchFormer[str]) -> list[tuple[str, ...]]:
    batches = []
    while (batch := former.take(0)) is not None:
        batches.append(batch.items)
    return batches


def put(former: BatchFormer[str], name: str, key: Hashable = "k", **kwargs: object) -> None:
    former.put(name, name, batch_key=key, **kwargs)  # type: ignore[arg-type]


# -- priority and fairness --------------------------------------------------------------------


def test_higher_priority_goes_first() -> None:
    former = make()
    put(former, "low", "a")
    put(former, "high", "b", priority=5)
    put(former, "mid", "c", priority=1)
    assert former.keys() == ["high", "mid", "low"]
    assert drain(former) == [("high",), ("mid",), ("low",)]


def test_fifo_within_an_owner() -> None:
    former = make()
    for i in range(5):
        put(former, f"j{i}", f"key{i}", owner="alice")
    assert drain(former) == [(f"j{i}",) for i in range(5)]


def test_a_burst_does_not_crowd_a_single_image_out_of_the_next_batch() -> None:
    former = make(max_images=4)
    for i in range(16):
        put(former, f"a{i}", owner="A")
    put(former, "b0", owner="B")
    # A's head opens the batch, then the fill interleaves owners by images served so far.
    assert take(former).items == ("a0", "b0", "a1", "a2")


def test_a_burst_on_another_key_lets_the_other_owner_in_second() -> None:
    former = make(max_images=4)
    for i in range(16):
        put(former, f"a{i}", "k", owner="A")
    put(former, "b0", "other", owner="B")
    batches = drain(former)
    assert batches[0] == ("a0", "a1", "a2", "a3")
    assert batches[1] == ("b0",)


def test_an_owner_back_from_idle_does_not_get_many_turns_in_a_row() -> None:
    former = make(max_images=1)
    put(former, "b-early", "x", owner="B")
    take(former)
    for i in range(30):  # A is served alone for a long while; B is idle
        put(former, f"a{i}", "x", owner="A")
        take(former)
    for i in range(5):
        put(former, f"a-late{i}", "x", owner="A")
    for i in range(5):
        put(former, f"b{i}", "x", owner="B")
    owners = [items[0][0].upper() for items in drain(former)]
    longest_run = max(len(list(run)) for _, run in itertools.groupby(owners))
    assert longest_run <= 2, owners
    assert owners[:4].count("A") >= 1 and owners[:4].count("B") >= 1


def test_an_owner_briefly_idle_keeps_its_lead() -> None:
    former = make(max_images=1)
    for i in range(5):  # A's requests arrive one at a time: A is idle between them
        put(former, f"a{i}", "x", owner="A")
        take(former)
    put(former, "a-next", "x", owner="A")
    put(former, "b0", "x", owner="B")  # B starts at the virtual time, below A's count
    assert take(former).items == ("b0",)


def test_images_count_not_jobs() -> None:
    former = make(max_images=4)
    put(former, "a-big", "x", owner="A", images=4)
    take(former)
    put(former, "a1", "y", owner="A")
    put(former, "b1", "z", owner="B")
    put(former, "b2", "z2", owner="B")
    # A got 4 images, B (starting at A's start tag, 0) is served twice before A again.
    assert [items[0] for items in drain(former)] == ["b1", "b2", "a1"]


# -- forming batches ----------------------------------------------------------------------------


def test_batches_group_equal_keys_up_to_max_images() -> None:
    former = make(max_images=2)
    for name, key in [("k1", "k"), ("l1", "l"), ("k2", "k"), ("k3", "k"), ("l2", "l")]:
        put(former, name, key)
    assert former.waiting("k") == 3 and former.waiting("l") == 2 and former.waiting("m") == 0
    assert drain(former) == [("k1", "k2"), ("l1", "l2"), ("k3",)]


def test_batch_counts_images_and_a_job_that_does_not_fit_waits() -> None:
    former = make(max_images=4)
    put(former, "a0", owner="A", images=2)
    put(former, "a1", owner="A", images=3)
    put(former, "a2", owner="A", images=1)
    put(former, "b0", owner="B", images=1)
    # a1 does not fit after a0 + b0; a2 would, but does not overtake a1 (FIFO within A).
    assert take(former).items == ("a0", "b0")
    assert take(former).items == ("a1", "a2")


def test_a_job_bigger_than_max_images_runs_alone_and_whole() -> None:
    former = make(max_images=4)
    put(former, "big", images=6)
    put(former, "small")
    assert take(former).items == ("big",)
    assert take(former).items == ("small",)


def test_max_images_is_asked_per_key() -> None:
    limits = {"wide": 1, "narrow": 3}
    former: BatchFormer[str] = BatchFormer(
        BatchPolicy(window=0), lambda key: limits[key], clock=FakeClock()
    )
    for i in range(3):
        put(former, f"w{i}", "wide")
        put(former, f"n{i}", "narrow")
    assert drain(former) == [("w0",), ("n0", "n1", "n2"), ("w1",), ("w2",)]


def test_lower_priority_jobs_of_the_key_do_not_ride_ahead_of_a_higher_other_key() -> None:
    former = make(max_images=4)
    put(former, "k-high", "k", priority=1)
    put(former, "k-low", "k", priority=0)
    put(former, "l-high", "l", priority=1)
    assert drain(former) == [("k-high",), ("l-high",), ("k-low",)]
    former = make(max_images=4)
    put(former, "k-high", "k", priority=1)
    put(former, "k-low", "k", priority=0)
    assert drain(former) == [("k-high", "k-low")]  # nothing else waits: it rides along


# -- collection window --------------------------------------------------------------------------


def test_window_holds_a_partial_batch_until_it_fills() -> None:
    clock = FakeClock()
    former = make(max_images=3, window=0.5, clock=clock)
    put(former, "k1")
    put(former, "l1", "l")
    assert former.take(0) is None  # k1's batch could grow and its window is open
    clock.advance(0.25)
    put(former, "k2")
    assert former.take(0) is None
    put(former, "k3")  # full: goes at once
    assert take(former).items == ("k1", "k2", "k3")


def test_window_releases_a_partial_batch_when_it_closes() -> None:
    clock = FakeClock()
    former = make(max_images=3, window=0.5, clock=clock)
    put(former, "k1")
    clock.advance(0.25)
    put(former, "k2")
    assert former.take(0) is None
    clock.advance(0.25)  # the oldest job's window has closed; the younger one's has not
    assert take(former).items == ("k1", "k2")


def test_window_does_not_hold_when_the_queue_is_full() -> None:
    former = make(max_images=4, capacity=2, window=0.01)
    put(former, "k1")
    put(former, "k2")  # no put can come in to grow it
    assert take(former).items == ("k1", "k2")


def test_window_zero_never_waits() -> None:
    former = make(max_images=4, window=0.0)
    put(former, "k1")
    assert take(former).items == ("k1",)


# -- joining a running batch --------------------------------------------------------------------


def test_join_hands_over_same_key_jobs_that_fit_in_fair_order() -> None:
    former = make(max_images=8)
    put(former, "a0", owner="A")
    put(former, "a1", owner="A")
    put(former, "a2", owner="A", images=2)
    put(former, "b0", owner="B")
    put(former, "l0", "l")
    assert former.join("k", 0) == []
    assert former.join("missing", 4) == []
    assert former.join("k", 2) == ["a0", "b0"]
    assert former.join("k", 2) == ["a1"]  # a2 (2 images) does not fit in what is left
    assert former.keys() == ["l0", "a2"]  # l0's owner has been served less than A
    assert former.join("k", 2) == ["a2"]
    assert former.waiting("k") == 0


def test_join_yields_to_a_higher_priority_group() -> None:
    former = make()
    put(former, "k0", "k")
    put(former, "l0", "l", priority=1)
    assert former.join("k", 4) == []
    put(former, "k1", "k", priority=1)
    assert former.join("k", 4) == ["k1"]  # k0 is outranked by l0: it does not ride along
    assert former.keys() == ["l0", "k0"]


def test_join_yields_to_a_starving_group() -> None:
    clock = FakeClock()
    former = make(starvation=2.0, clock=clock)
    put(former, "l0", "l")
    clock.advance(1.5)
    put(former, "k0", "k")
    assert former.join("k", 4) == ["k0"]
    put(former, "k1", "k")
    clock.advance(0.5)  # l0 has now waited 2 s
    assert former.join("k", 4) == []
    assert former.waiting("k") == 1


def test_a_starving_lower_priority_job_does_not_stop_joins() -> None:
    clock = FakeClock()
    former = make(starvation=2.0, clock=clock)
    put(former, "l0", "l", priority=0)
    clock.advance(5)
    put(former, "k0", "k", priority=1)
    assert former.join("k", 4) == ["k0"]  # draining would not serve l0 sooner


def test_joined_images_count_for_fairness() -> None:
    former = make(max_images=1)
    put(former, "a0", "k", owner="A")
    put(former, "a1", "k", owner="A")
    assert former.join("k", 2) == ["a0", "a1"]
    put(former, "a2", "l", owner="A")
    put(former, "b0", "m", owner="B")  # B starts at the virtual time, 2 below A
    assert [items[0] for items in drain(former)] == ["b0", "a2"]


# -- affinity -----------------------------------------------------------------------------------


def test_take_prefers_the_held_key_among_equal_priorities() -> None:
    former = make()
    put(former, "k0", "k")
    put(former, "l0", "l")
    assert take(former, prefer=lambda key: key == "l").items == ("l0",)
    put(former, "l1", "l")
    put(former, "m0", "m", priority=1)
    assert take(former, prefer=lambda key: key == "l").items == ("m0",)  # priority still first


def test_a_starving_group_overrides_affinity() -> None:
    clock = FakeClock()
    former = make(starvation=2.0, clock=clock)
    put(former, "k0", "k")
    clock.advance(2.0)
    put(former, "l0", "l")
    assert take(former, prefer=lambda key: key == "l").items == ("k0",)


# -- admission queue basics ---------------------------------------------------------------------


def test_capacity_duplicates_and_remove() -> None:
    former = make(capacity=2)
    put(former, "a")
    with pytest.raises(ValueError):
        put(former, "a")
    put(former, "b", "other")
    with pytest.raises(QueueFull):
        put(former, "c")
    assert former.remove("a") == "a"
    assert former.remove("a") is None
    assert len(former) == 1 and former.waiting("k") == 0
    put(former, "c")  # the slot is free again
    assert former.keys() == ["b", "c"]
    assert drain(former) == [("b",), ("c",)]


def test_close_returns_what_waited_and_refuses_puts() -> None:
    former = make()
    put(former, "a", priority=0)
    put(former, "b", "other", priority=3)
    assert former.close() == ["b", "a"]
    assert len(former) == 0
    assert former.take(0) is None
    with pytest.raises(QueueFull):
        put(former, "c")


# -- blocking takes (real threads) --------------------------------------------------------------


Results = list[tuple[Batch[str] | None, float]]


def _take_in_thread(former: BatchFormer[str], results: Results) -> threading.Thread:
    def run() -> None:
        started = time.monotonic()
        batch = former.take(5)
        results.append((batch, time.monotonic() - started))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_blocked_take_wakes_on_put_and_on_window_expiry() -> None:
    former: BatchFormer[str] = BatchFormer(BatchPolicy(window=0.0), lambda key: 4)
    results: Results = []
    thread = _take_in_thread(former, results)
    time.sleep(0.02)
    put(former, "k0")
    thread.join(2)
    assert not thread.is_alive()
    assert results[0][0] == Batch("k", ("k0",))

    window = 0.05
    former = BatchFormer(BatchPolicy(window=window), lambda key: 4)
    put(former, "k1")
    started = time.monotonic()
    batch = former.take(5)  # held for the window, then goes partly filled
    assert batch == Batch("k", ("k1",))
    assert window * 0.9 <= time.monotonic() - started < 2


def test_close_wakes_a_blocked_take() -> None:
    former: BatchFormer[str] = BatchFormer(BatchPolicy(), lambda key: 4)
    results: Results = []
    thread = _take_in_thread(former, results)
    time.sleep(0.02)
    assert former.close() == []
    thread.join(2)
    assert not thread.is_alive()
    batch, elapsed = results[0]
    assert batch is None and elapsed < 2
