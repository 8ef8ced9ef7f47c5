"""What the engine measures about itself: batch sizes, images, and its own overhead per job.

Workers and the engine record into one EngineStats (thread-safe); `snapshot()` is what
GET /engine/stats returns and what scripts/bench_engine.py reads. Overhead is the wall time the
engine spends per job outside model compute: admission (validation, keying, queueing), batch
forming and joining, handing results back, and the server's encoding and storing of images.
Each stage is measured twice: wall time, and the CPU time of the thread that ran it. On a
machine whose cores the model keeps busy, a thread's wall time includes waiting for a core;
its CPU time is the work the stage itself costs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EngineStats:
    jobs_submitted: int = 0
    jobs_finished: int = 0
    jobs_failed: int = 0
    images: int = 0
    forward_passes: int = 0  # UNet calls (a CFG pair counts once)
    forward_images: int = 0  # images summed over those calls: / forward_passes = mean batch
    batch_sizes: Counter[int] = field(default_factory=Counter)  # images per forward -> count
    joins: int = 0  # jobs that joined a running loop mid-flight
    oom_splits: int = 0  # forwards retried in smaller pieces after running out of memory
    # stage -> wall seconds, CPU seconds
    overhead_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    overhead_cpu_seconds: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def record_forward(self, images: int) -> None:
        with self._lock:
            self.forward_passes += 1
            self.forward_images += images
            self.batch_sizes[images] += 1

    def record_overhead(self, stage: str, seconds: float, cpu_seconds: float = 0.0) -> None:
        with self._lock:
            self.overhead_seconds[stage] += seconds
            self.overhead_cpu_seconds[stage] += cpu_seconds

    @contextmanager
    def overhead(self, stage: str) -> Iterator[None]:
        """Count the block's wall and thread CPU time as engine overhead of `stage`."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.record_overhead(stage, time.perf_counter() - wall, time.thread_time() - cpu)

    def reset(self) -> None:
        """Start a fresh measurement (benchmarks reset between runs)."""
        with self._lock:
            for name in ("jobs_submitted", "jobs_finished", "jobs_failed", "images"):
                setattr(self, name, 0)
            self.forward_passes = self.forward_images = self.joins = self.oom_splits = 0
            self.batch_sizes.clear()
            self.overhead_seconds.clear()
            self.overhead_cpu_seconds.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            jobs = self.jobs_finished + self.jobs_failed
            overhead = sum(self.overhead_seconds.values())
            overhead_cpu = sum(self.overhead_cpu_seconds.values())
            return {
                "jobs_submitted": self.jobs_submitted,
                "jobs_finished": self.jobs_finished,
                "jobs_failed": self.jobs_failed,
                "images": self.images,
                "forward_passes": self.forward_passes,
                "forward_images": self.forward_images,
                "mean_batch_images": (
                    self.forward_images / self.forward_passes if self.forward_passes else 0.0
                ),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "joins": self.joins,
                "oom_splits": self.oom_splits,
                "overhead_seconds": dict(sorted(self.overhead_seconds.items())),
                "overhead_ms_per_job": {
                    stage: 1000 * seconds / jobs if jobs else 0.0
                    for stage, seconds in sorted(self.overhead_seconds.items())
                },
                "overhead_ms_per_job_total": 1000 * overhead / jobs if jobs else 0.0,
                "overhead_cpu_seconds": dict(sorted(self.overhead_cpu_seconds.items())),
                "overhead_cpu_ms_per_job_total": 1000 * overhead_cpu / jobs if jobs else 0.0,
            }
