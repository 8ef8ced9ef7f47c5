"""Worker heartbeats in Redis: who is alive, which queues each consumes, what it holds.

API replicas route a job to its model's queue only while some live worker consumes that queue,
and GET /engine/stats gathers the workers' engine statistics from here.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from server.cluster.config import ClusterConfig


@dataclass
class WorkerBeat:
    name: str
    devices: list[str]
    queues: list[str]  # queues it consumes
    models: list[str]  # checkpoint codes loaded on some device now
    running: list[str] = field(default_factory=list)  # task ids in hand
    stats: dict[str, Any] = field(default_factory=dict)  # its engine's EngineStats snapshot
    at: float = 0.0


class WorkerRegistry:
    def __init__(self, client: redis.Redis, config: ClusterConfig) -> None:
        self.client = client
        self.config = config

    def publish(self, beat: WorkerBeat) -> None:
        """Announce the worker for three heartbeats; it must beat again before they pass."""
        beat.at = time.time()
        ttl_ms = int(self.config.lease_s * 1000)
        self.client.set(self.config.worker_key(beat.name), json.dumps(asdict(beat)), px=ttl_ms)

    def withdraw(self, name: str) -> None:
        self.client.delete(self.config.worker_key(name))

    def live(self) -> list[WorkerBeat]:
        keys = sorted(self.client.scan_iter(match=self.config.worker_pattern, count=100))
        if not keys:
            return []
        beats = []
        for raw in self.client.mget(keys):
            if raw is not None:  # expired between the scan and the read
                beats.append(WorkerBeat(**json.loads(raw)))
        return beats

    def consumed_queues(self) -> set[str]:
        return {queue for beat in self.live() for queue in beat.queues}
