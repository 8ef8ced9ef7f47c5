"""What one Runware WebSocket may send: a message rate (a token bucket per socket) and a frame
size, with the answers for what goes over them.

Rate: each task of a current-protocol array, and each legacy message, is one message; a frame
with no task in it (an empty array, something that is not JSON) is one too. Over the rate a task
is refused with a `tooManyMessages` error item carrying its taskUUID, never dropped; a ping is
always answered (it takes a token when there is one, so it counts towards the rate, but it is
never refused). A pong costs the server no more than the error that would refuse it, and a client
whose pings go unanswered takes the connection for dead and reconnects, which only adds load.

Size: a frame over Limits.ws_max_frame_bytes (and up to uvicorn's hard cap,
Limits.ws_hard_cap_bytes) is not parsed; it is answered with a `payloadTooLarge` error for each
taskUUID found in its text, so the SDKs can route it to the task that sent it (an error without a
taskUUID when none is found). Above the hard cap uvicorn closes the socket with 1009.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from server.limits import Limits, describe_bytes
from server.runware.errors import Code, RunwareError

# Found in an oversized frame's text without parsing it (the answer names these tasks).
_TASK_UUID = re.compile(r'"taskUUID"\s*:\s*"([^"\\]{1,128})"')
_TASK_TYPE = re.compile(r'"taskType"\s*:\s*"([^"\\]{1,64})"')
MAX_NAMED_TASKS = 100  # taskUUIDs named in the answer to one oversized frame, at most


class MessageBucket:
    """A token bucket: `rate` tokens per second, holding at most `burst`; starts full."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> bool:
        """Take one token; False when the bucket is empty (the message is over the rate)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def frame_size(text: str | None, data: bytes | None) -> int:
    """A received frame's size in bytes (a text frame's UTF-8 length, without encoding an
    ASCII one: JSON usually is)."""
    if text is not None:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return len(data or b"")


def over_rate_error(limits: Limits) -> RunwareError:
    return RunwareError(
        Code.TOO_MANY_MESSAGES,
        f"this socket sends more than {limits.ws_messages_per_s:g} messages per second "
        f"(bursts of {limits.ws_burst}): the task was not run, send it again later",
    )


def oversized_error(size: int, limits: Limits) -> RunwareError:
    return RunwareError(
        Code.PAYLOAD_TOO_LARGE,
        f"the message is {size} bytes, more than this server's limit of "
        f"{describe_bytes(limits.ws_max_frame_bytes)} per WebSocket message: it was not read "
        "(send large images as URLs, or upload them one per message)",
    )


def _values(text: str, key: str, pattern: re.Pattern[str], most: int) -> list[str]:
    """The distinct string values of `key` in JSON text, in order, at most `most`. str.find
    skips through the text (base64 images are most of it) far faster than a regex scan."""
    found: dict[str, None] = {}
    position = text.find(key)
    while position >= 0 and len(found) < most:
        match = pattern.match(text, position)
        if match is not None:
            found[match.group(1)] = None
        position = text.find(key, position + len(key))
    return list(found)


def named_tasks(text: str) -> tuple[list[str], str | None]:
    """The taskUUIDs an unparsed frame names (at most MAX_NAMED_TASKS, in order), and its
    taskType when it names exactly one."""
    uuids = _values(text, '"taskUUID"', _TASK_UUID, MAX_NAMED_TASKS)
    types = _values(text, '"taskType"', _TASK_TYPE, 2)
    return uuids, types[0] if len(types) == 1 else None


def oversized_items(text: str, size: int, limits: Limits) -> list[dict[str, Any]]:
    """The error items answering an oversized frame: one per taskUUID it names, else one."""
    error = oversized_error(size, limits)
    uuids, task_type = named_tasks(text)
    if not uuids:
        return [error.item(None, None)]
    return [error.item(task_type, uuid) for uuid in uuids]
