"""The engine's status as GET /engine/status and /engine/events show it (the JSON contract the
playground reads), on one machine and gathered from a cluster's workers.

```
{"ready": bool, "queue": {"jobs": int, "images": int},
 "devices": [{"device": "cpu", "models": ["easel-demo"],
              "batch": null | {"model": str, "jobs": int, "images": int, "progress": 0..1}}],
 "images_per_second": float}
```
Open to anyone: no task ids, prompts or owners.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.status import BatchStatus, EngineStatus


def status_json(status: EngineStatus) -> dict[str, Any]:
    return {
        "ready": status.ready,
        "queue": {"jobs": status.queue_jobs, "images": status.queue_images},
        "devices": [
            {"device": d.device, "models": list(d.models), "batch": _batch_json(d.batch)}
            for d in status.devices
        ],
        "images_per_second": round(status.images_per_second, 3),
    }


def _batch_json(batch: BatchStatus | None) -> dict[str, Any] | None:
    if batch is None:
        return None
    return {
        "model": batch.model,
        "jobs": batch.jobs,
        "images": batch.images,
        "progress": round(batch.progress, 4),
    }


def gathered(workers: Mapping[str, Mapping[str, Any]], broker_jobs: int) -> dict[str, Any]:
    """A cluster's status from its live workers' own (name -> status_json, from their
    heartbeats) and the jobs still in the broker's queues. Devices are named WORKER/DEVICE.
    A job in the broker counts as one image: its image count is inside the message."""
    devices: list[dict[str, Any]] = []
    jobs = images = broker_jobs
    rate = 0.0
    for name, status in sorted(workers.items()):
        queue = status.get("queue", {})
        jobs += int(queue.get("jobs", 0))
        images += int(queue.get("images", 0))
        rate += float(status.get("images_per_second", 0.0))
        for device in status.get("devices", []):
            devices.append({**device, "device": f"{name}/{device['device']}"})
    return {
        "ready": any(device["models"] for device in devices),
        "queue": {"jobs": jobs, "images": images},
        "devices": devices,
        "images_per_second": round(rate, 3),
    }
