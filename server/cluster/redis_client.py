"""Redis connections that ride out a broker restart instead of failing the work in hand."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# An API replica answers a client: it waits a few seconds at most. A worker holding finished
# images keeps retrying for minutes, so a Redis restart does not lose them.
API_PATIENCE_S = 5.0
WORKER_PATIENCE_S = 300.0


def connect(url: str, *, patience_s: float = API_PATIENCE_S) -> redis.Redis:
    """A client for url that retries commands on connection errors for about patience_s."""
    backoff = ExponentialBackoff(cap=2.0, base=0.05)
    # Exponential up to the 2 s cap: the first few retries take well under a second each.
    retries = max(3, int(patience_s / 2.0) + 5)
    return redis.Redis.from_url(
        url,
        retry=Retry(backoff, retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=2.0,
        socket_timeout=30.0,
        health_check_interval=10,
    )


def ttl_ms(ttl_s: float) -> int:
    """A retention time as a Redis expiry in milliseconds (fractions of a second count)."""
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, not {ttl_s}")
    return max(1, round(ttl_s * 1000))


def reply_bytes(reply: object) -> bytes:
    """One Redis reply, which is bytes: easel's clients keep redis-py's default (no
    decode_responses). redis-py's types allow more (str for decoding clients, tuples for
    ZRANGE WITHSCORES), so this is where the stores say which it is."""
    if not isinstance(reply, bytes):
        raise TypeError(f"expected a bytes reply from Redis, not {type(reply).__name__}")
    return reply


def reply_text(reply: object) -> str:
    """One Redis reply (bytes, see reply_bytes) decoded as UTF-8 text."""
    return reply_bytes(reply).decode()
