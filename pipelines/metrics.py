"""The engine's Prometheus metrics, in a registry of its own: one per engine (tests build many
engines in one process, and the global default registry would refuse the second).

Two sources:
- read at scrape time: the EngineStats counters the engine keeps anyway (images, jobs, forward
  passes by batch size), the engine's status (queue, running batches, loaded checkpoints),
  images per second over a recent window, and each CUDA device's memory (torch imported only
  then: an engine on the CPU has no GPU series);
- recorded by small hooks: the time of each batched denoising step (the worker and the
  denoising loop) and checkpoint loads and evictions (the PipelineCache listener).

Step times are wall time on the worker thread, measured without synchronising the device (the
loop never waits on the GPU mid-step): one step may read short and the next long, but their
average is the device's pace.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from models.cache import CacheEvent, CacheListener
from pipelines.batching.stats import EngineStats
from pipelines.status import EngineStatus

RATE_WINDOW_S = 30.0  # easel_images_per_second and the status' images_per_second
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # images per forward pass
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

StepTimer = Callable[[float], None]  # seconds one batched step took


class ImageRate:
    """Images finished per second over the last `window` seconds (thread-safe)."""

    def __init__(
        self, window: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self._clock = clock
        self._started = clock()
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, images: int) -> None:
        now = self._clock()
        with self._lock:
            self._events.append((now, images))
            self._drop_older(now)  # bounded even when nobody reads the rate

    def per_second(self) -> float:
        now = self._clock()
        with self._lock:
            self._drop_older(now)
            images = sum(count for _at, count in self._events)
        # A young engine divides by its age, not the whole window (at least a second).
        return images / max(1.0, min(self.window, now - self._started))

    def _drop_older(self, now: float) -> None:
        """Forget the events that left the window (the lock is held)."""
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()


class EngineMetrics:
    def __init__(
        self,
        stats: EngineStats,
        status: Callable[[], EngineStatus],
        devices: Sequence[str],
        rate: ImageRate | None = None,
    ) -> None:
        self.stats = stats
        self.status = status
        self.devices = tuple(devices)
        self.rate = rate or ImageRate()
        self.registry = CollectorRegistry()
        self.step_seconds = Histogram(
            "easel_step_seconds",
            "Wall time of one batched denoising step (every running image advances one step)",
            ["device"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.model_loads = Counter(
            "easel_model_loads",
            "Checkpoints loaded onto a device",
            ["device"],
            registry=self.registry,
        )
        self.model_evictions = Counter(
            "easel_model_evictions",
            "Checkpoints unloaded from a device to make room for another",
            ["device"],
            registry=self.registry,
        )
        self.model_load_seconds = Histogram(
            "easel_model_load_seconds",
            "Time to load a checkpoint onto a device",
            ["device"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ScrapeTime(self))

    # --- hooks ---

    def record_images(self, images: int) -> None:
        """A job finished with this many images (images per second)."""
        self.rate.add(images)

    def images_per_second(self) -> float:
        return self.rate.per_second()

    def step_timer(self, device: str) -> StepTimer:
        return self.step_seconds.labels(device).observe

    def cache_listener(self, device: str) -> CacheListener:
        """What a device's PipelineCache calls when it loads or evicts a checkpoint."""
        loads = self.model_loads.labels(device)
        evictions = self.model_evictions.labels(device)
        load_seconds = self.model_load_seconds.labels(device)

        def listener(event: CacheEvent, _code: str, seconds: float) -> None:
            if event is CacheEvent.LOAD:
                loads.inc()
                load_seconds.observe(seconds)
            else:
                evictions.inc()

        return listener


class _ScrapeTime:
    """The metrics read from the engine at each scrape."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from stats_metrics(self.metrics.stats)
        yield from status_metrics(self.metrics.status())
        yield GaugeMetricFamily(
            "easel_images_per_second",
            f"Images finished per second over the last {RATE_WINDOW_S:.0f} s",
            value=self.metrics.images_per_second(),
        )
        yield from gpu_memory_metrics(self.metrics.devices)


def stats_metrics(stats: EngineStats) -> Iterator[Metric]:
    """EngineStats' counters as Prometheus counters, batch sizes as a histogram."""
    snapshot = stats.snapshot()
    yield CounterMetricFamily(
        "easel_images", "Images the engine finished (rate() is images/s)", value=snapshot["images"]
    )
    jobs = CounterMetricFamily(
        "easel_jobs", "Engine jobs that ended, by outcome", labels=["outcome"]
    )
    jobs.add_metric(["finished"], snapshot["jobs_finished"])
    jobs.add_metric(["failed"], snapshot["jobs_failed"])
    yield jobs
    yield CounterMetricFamily(
        "easel_loop_joins",
        "Jobs that joined a running denoising loop between two steps",
        value=snapshot["joins"],
    )
    yield CounterMetricFamily(
        "easel_oom_splits",
        "Batches retried in smaller pieces after the device ran out of memory",
        value=snapshot["oom_splits"],
    )
    sizes = {int(size): count for size, count in snapshot["batch_sizes"].items()}
    buckets = [
        (str(float(bound)), sum(count for size, count in sizes.items() if size <= bound))
        for bound in BATCH_BUCKETS
    ]
    buckets.append(("+Inf", snapshot["forward_passes"]))
    yield HistogramMetricFamily(
        "easel_batch_images",
        "Images in each batched forward pass (UNet call, or one utility model call)",
        buckets=buckets,
        sum_value=snapshot["forward_images"],
    )


def status_metrics(status: EngineStatus) -> Iterator[Metric]:
    """Queue depth, running batches and loaded checkpoints, from the engine's status."""
    yield GaugeMetricFamily(
        "easel_queue_jobs", "Jobs waiting for a device", value=status.queue_jobs
    )
    yield GaugeMetricFamily(
        "easel_queue_images", "Images the waiting jobs ask for", value=status.queue_images
    )
    yield GaugeMetricFamily(
        "easel_ready", "1 once some device has a checkpoint loaded", value=int(status.ready)
    )
    running = GaugeMetricFamily(
        "easel_running_images", "Images in the batch a device runs now", labels=["device"]
    )
    loaded = GaugeMetricFamily(
        "easel_models_loaded", "Checkpoints loaded on a device", labels=["device"]
    )
    for device in status.devices:
        running.add_metric([device.device], device.batch.images if device.batch else 0)
        loaded.add_metric([device.device], len(device.models))
    yield running
    yield loaded


def gpu_memory_metrics(devices: Sequence[str]) -> Iterator[Metric]:
    """Allocated / reserved / total bytes of each CUDA device (none on the CPU)."""
    cuda = [device for device in devices if device.startswith("cuda")]
    if not cuda:
        return
    import torch

    families = {
        "allocated": GaugeMetricFamily(
            "easel_gpu_memory_allocated_bytes",
            "GPU memory held by tensors (torch.cuda.memory_allocated)",
            labels=["device"],
        ),
        "reserved": GaugeMetricFamily(
            "easel_gpu_memory_reserved_bytes",
            "GPU memory held by torch's caching allocator (torch.cuda.memory_reserved)",
            labels=["device"],
        ),
        "total": GaugeMetricFamily(
            "easel_gpu_memory_total_bytes", "The device's memory", labels=["device"]
        ),
    }
    for device in cuda:
        families["allocated"].add_metric([device], torch.cuda.memory_allocated(device))
        families["reserved"].add_metric([device], torch.cuda.memory_reserved(device))
        total = torch.cuda.get_device_properties(device).total_memory
        families["total"].add_metric([device], total)
    yield from families.values()
