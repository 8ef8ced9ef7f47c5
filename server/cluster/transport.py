"""kombu's Redis transport, made to survive a broker restart while jobs are running.

When the connection to Redis drops while a job runs (its message unacknowledged), kombu 5.7
puts the message back as it closes the dead channel, and that fails inside Celery's
connection-error handler (the dead channel has lost its connection: AttributeError). Celery
takes the error as unrecoverable and the whole worker exits, losing its running jobs.

The same happens when the job then finishes and its message is acknowledged through the dead
channel. The message is safe without either step: it stays in the broker's unacknowledged
index, and kombu's periodic restore_visible hands it out again after the visibility timeout,
where the job lease and "a task ends once" make the second delivery harmless (the worker drops
a delivery whose task has ended). So here the restore at close and the acknowledgement of a
message whose connection was lost are best effort.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

TRANSPORT = "server.cluster.transport:Transport"  # for Celery's broker_transport setting


_LOST = (AttributeError, OSError, redis.RedisError)  # what a dead channel raises


class QoS(kombu_redis.QoS):
    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        except _LOST as error:
            # Forget it here; Redis redelivers it later.
            self._quick_ack(delivery_tag)  # type: ignore[attr-defined]  # kombu-stubs omit it
            log.warning("could not acknowledge a message on a lost connection (%s)", error)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue)
        except _LOST as error:
            self._quick_ack(delivery_tag)  # type: ignore[attr-defined]  # kombu-stubs omit it
            log.warning("could not reject a message on a lost connection (%s)", error)

    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except _LOST as error:
            assert self._delivered is not None  # kombu's QoS.__init__ sets it
            count = len(self._delivered)
            self._delivered.clear()
            log.warning(
                "could not put back %d unacknowledged message(s) on a lost connection (%s); "
                "they return after the visibility timeout",
                count,
                error,
            )


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
