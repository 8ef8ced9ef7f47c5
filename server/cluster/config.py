"""Cluster settings and the names everything shares in Redis and in the broker.

API replicas and workers must agree on these, so they live in one place. ClusterConfig's
defaults are the CLI's too: the option table (server/options.py) reads them, so after changing
one run `python scripts/readme_options.py` to update README.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TASK_NAME = "easel.run_job"  # the one Celery task: run an engine job for a task record
DEFAULT_QUEUE = "easel.default"  # jobs whose model no live worker holds, and preprocessing
MODEL_QUEUE_PREFIX = "easel.model."
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class ClusterConfig:
    broker_url: str  # redis://HOST:PORT/N: Celery's broker and the shared state
    retention_s: float = 24 * 3600.0  # task records and images expire after this
    # A job whose worker died is delivered again after this; keep it above the longest job.
    visibility_timeout_s: float = 2 * 3600.0
    # How often workers check for abandoned deliveries (seconds); low values cost a Redis scan.
    restore_interval_s: float = 10.0
    heartbeat_s: float = 2.0  # worker heartbeats and lease refreshes
    namespace: str = "easel"

    @property
    def lease_s(self) -> float:
        """A running job's lease outlives three missed heartbeats, then another worker may
        take the job over."""
        return 3 * self.heartbeat_s

    # --- Redis keys ---

    def cancel_key(self, task_id: str) -> str:
        return f"{self.namespace}:cancel:{task_id}"

    def lease_key(self, task_id: str) -> str:
        return f"{self.namespace}:lease:{task_id}"

    @property
    def workers_key(self) -> str:
        """A hash: worker name -> its latest heartbeat (server.cluster.registry)."""
        return f"{self.namespace}:workers"

    @property
    def model_queues_key(self) -> str:
        """A set of every model queue jobs were ever sent to (to find abandoned ones)."""
        return f"{self.namespace}:model-queues"

    def broker_key(self, queue: str) -> str:
        """The Redis list behind a Celery queue (kombu prefixes every broker key)."""
        return f"{self.broker_prefix}{queue}"

    @property
    def broker_prefix(self) -> str:
        return f"{self.namespace}:broker:"


def model_queue(code: str) -> str:
    """The queue of jobs for one checkpoint (codes are file stems: keep the name plain)."""
    return MODEL_QUEUE_PREFIX + _UNSAFE.sub("_", code)
