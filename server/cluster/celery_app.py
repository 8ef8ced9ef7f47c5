"""The Celery application both roles build: API replicas only publish, workers consume.

Late acknowledgement with one prefetched message per thread: a message is acknowledged only
after its task record is final, so a worker that dies mid-job leaves it unacknowledged and
the broker hands it out again after the visibility timeout. JSON only: a message is data
(pipelines.job_codec), never pickled code.
"""

from __future__ import annotations

from celery import Celery

from server.cluster.config import DEFAULT_QUEUE, ClusterConfig
from server.cluster.transport import TRANSPORT


def make_celery(config: ClusterConfig) -> Celery:
    app = Celery("easel", broker=config.broker_url, set_as_current=False)
    app.conf.update(
        broker_transport=TRANSPORT,  # kombu's Redis transport, hardened for broker restarts
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the task records, not in a result backend
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for Redis to come back
        broker_transport_options={
            "visibility_timeout": config.visibility_timeout_s,
            "unacked_restore_interval": config.restore_interval_s,
            "unacked_restore_throttle": 1,
            "global_keyprefix": config.broker_prefix,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=True,  # `celery inspect` / `ping` for operators
    )
    return app
