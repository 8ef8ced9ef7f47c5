"""What the engine is doing now: its queue, and per device the checkpoints it holds and the batch
it runs.

Engine.status() builds it for operators (GET /engine/status and its event stream, /readyz, the
cluster heartbeats). Plain data: no task ids, prompts or owners, since anyone may read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchStatus:
    model: str  # the checkpoint code (a utility model's file name; "preprocess" for annotators)
    jobs: int
    images: int
    progress: float  # the mean of its jobs' progress, 0..1


@dataclass(frozen=True)
class DeviceStatus:
    device: str
    models: tuple[str, ...]  # checkpoint codes loaded, least recently used first
    batch: BatchStatus | None = None
    loading: str | None = None  # the checkpoint being preloaded now


@dataclass(frozen=True)
class EngineStatus:
    queue_jobs: int  # jobs waiting for a worker
    queue_images: int  # images those jobs ask for
    devices: tuple[DeviceStatus, ...]  # empty while the engine is not started
    images_per_second: float  # over the last RATE_WINDOW_S (pipelines.metrics)

    @property
    def ready(self) -> bool:
        """Some device holds a checkpoint: a job can start without waiting for a load."""
        return any(device.models for device in self.devices)

    def unready_reason(self) -> str | None:
        """None when ready; else why not, in words for the operator."""
        if self.ready:
            return None
        if not self.devices:
            return "the engine is not running"
        loading = sorted({d.loading for d in self.devices if d.loading})
        if loading:
            return f"loading {', '.join(loading)}"
        return "no model is loaded yet: the first job loads one (or start with --preload)"
