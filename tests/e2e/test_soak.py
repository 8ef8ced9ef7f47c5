"""The soak (scripts/soak.py) at a small scale against a real `easel serve`: every accepted task
ends exactly once with its expected outcome, every invalid request gets its own error code, no
5xx, no stray frame. Memory is a measurement of the full-size script run, not asserted here.
Plus the soak's pure helpers (plan, ledger, memory verdict)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
MIB = 1024 * 1024


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


soak = _load()


def test_small_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    config = soak.SoakConfig(tasks=120, clients=8, seed=1, task_timeout_s=120)
    env = soak.server_env(threads=1)  # see server_env: a busy machine
    with soak.local_server(tmp_path / "data", env) as target:
        result = soak.run(config, target)
    summary = soak.summary_table(result)
    assert result["problems"] == [], summary
    assert (result["lost"], result["duplicated"], result["unexpected"]) == (0, 0, 0), summary
    assert result["http_5xx"] == 0 and not any(s.startswith("5") for s in result["http_status"])
    assert result["ops"] == 120
    # Every kind of operation ran, and the tasks that ran made images.
    assert all(row["ops"] >= 1 for row in result["kinds"].values()), summary
    assert result["images"] >= result["tasks_accepted"] - result["kinds"]["pp_cancel"]["tasks"]
    assert sum(result["expected_errors"].values()) >= 4, summary
    assert result["pings"]["sent"] == result["pings"]["pongs"] > 0
    assert result["rss"]["measured"]


# --- pure helpers ---


def test_plan_has_every_kind_then_follows_the_weights() -> None:
    small = soak.make_plan(len(soak.MIX), seed=3)
    assert sorted(small) == sorted(soak.MIX)
    big = Counter(soak.make_plan(20000, seed=3))
    assert set(big) == set(soak.MIX)
    total = sum(soak.MIX.values())
    for kind, weight in soak.MIX.items():
        assert big[kind] / 20000 == pytest.approx(weight / total, abs=0.01)
    assert soak.make_plan(100, seed=3) == soak.make_plan(100, seed=3)


def test_ledger_flags_lost_duplicated_and_wrong_outcomes() -> None:
    ledger = soak.Ledger()
    ledger.accept("ok", "k", 2)
    ledger.end("ok", ["a", "b"])
    ledger.accept("never", "k", 1)
    ledger.accept("twice", "k", 1)
    ledger.end("twice", ["c"])
    ledger.end("twice", ["c"])
    ledger.accept("reused", "k", 1)
    ledger.end("reused", ["a"])  # an image of another task
    ledger.accept("short", "k", 2)
    ledger.end("short", ["d"])
    ledger.accept("cancel", "k", 1)
    ledger.expect_error("cancel", "20001")
    ledger.end("cancel", ["e"])  # acknowledged, yet it finished
    ledger.refused("pp_invalid", "bad", "10010", "10010")
    ledger.refused("pp_invalid", "bad", "10010", "0")
    assert [t.task_id for t in ledger.lost()] == ["never"]
    found = Counter((p.category, p.task_id) for p in ledger.problems)
    assert found == {
        ("duplicated", "twice"): 1,
        ("duplicated", "reused"): 1,
        ("unexpected", "short"): 1,
        ("unexpected", "cancel"): 1,
        ("unexpected", None): 1,
    }
    assert ledger.expected_errors == {"pp:10010": 1}


def _samples(rss_of_done: list[float]) -> list:
    return [
        soak.Sample(float(i), done, int(rss * MIB), 1.0)
        for i, (done, rss) in enumerate((i * 10, rss) for i, rss in enumerate(rss_of_done))
    ]


def test_memory_is_flat_after_warm_up_and_a_leak_is_not() -> None:
    warming = [1000 + 40 * i for i in range(10)]  # the first 10 %: loads, caches fill
    flat = soak.rss_summary(_samples(warming + [1400 + (i % 3) for i in range(90)]), 1000)
    assert flat["flat"], flat
    assert flat["warmup_mib"] == pytest.approx(1400, abs=3)
    assert flat["max_mib"] == pytest.approx(1402, abs=1)
    leak = soak.rss_summary(_samples(warming + [1400 + 1.0 * i for i in range(90)]), 1000)
    assert not leak["flat"]  # 1 MiB per 10 operations
    assert leak["second_half_slope_mib_per_1000_ops"] == pytest.approx(100, rel=0.01)
    slow = soak.rss_summary(_samples(warming + [1400 + 0.15 * i for i in range(90)]), 1000)
    assert not slow["flat"]  # 15 MiB per 1000 operations: under the growth limit, over the slope
