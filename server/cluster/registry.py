"""Worker heartbeats in Redis: who is alive, which queues each consumes, what it holds.

API replicas route a job to its model's queue only while some live worker consumes that queue,
and GET /engine/stats, /engine/status and /readyz gather the workers' engines' state from here.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import redis

from server.cluster.config import ClusterConfig

FORGET_AFTER_LEASES = 100  # a worker silent this long is dropped from the hash


@dataclass
class WorkerBeat:
    name: str
    devices: list[str]
    queues: list[str]  # queues it consumes
    models: list[str]  # checkpoint codes loaded on some device now
    running: list[str] = field(default_factory=list)  # task ids in hand
    stats: dict[str, Any] = field(default_factory=dict)  # its engine's EngineStats snapshot
    status: dict[str, Any] = field(default_factory=dict)  # its engine's server.status JSON
    at: float = 0.0

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerBeat:
        """A published beat; fields this version does not know (a newer worker's) are left
        out, missing ones take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})


class WorkerRegistry:
    """Heartbeats in one Redis hash (name -> beat): reading them never scans the keyspace,
    which holds every task record and image."""

    def __init__(self, client: redis.Redis, config: ClusterConfig) -> None:
        self.client = client
        self.config = config

    def publish(self, beat: WorkerBeat) -> None:
        """Announce the worker; it counts as alive for three heartbeats from now."""
        beat.at = time.time()
        self.client.hset(self.config.workers_key, beat.name, json.dumps(asdict(beat)))

    def withdraw(self, name: str) -> None:
        self.client.hdel(self.config.workers_key, name)

    def live(self) -> list[WorkerBeat]:
        """Workers whose last beat is recent. Long-dead ones are forgotten (not those just
        missed: a live worker may be writing its next beat right now)."""
        now = time.time()
        beats, forgotten = [], []
        for raw in self.client.hgetall(self.config.workers_key).values():
            beat = WorkerBeat.from_json(raw)
            if beat.at >= now - self.config.lease_s:
                beats.append(beat)
            elif beat.at < now - FORGET_AFTER_LEASES * self.config.lease_s:
                forgotten.append(beat.name)
        if forgotten:
            self.client.hdel(self.config.workers_key, *forgotten)
        return sorted(beats, key=lambda beat: beat.name)

    def consumed_queues(self) -> set[str]:
        return {queue for beat in self.live() for queue in beat.queues}
