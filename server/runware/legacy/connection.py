"""The legacy (picfinder) protocol on a Runware socket: plain JSON objects in and out.

Each legacy message is translated (server/runware/legacy/translate.py) into the current task
that serves it and run by the same service; its items come back as the legacy frame
(newImages, newUploadedImageUUID...). Sessions, the outgoing queue and background tasks are the
socket's own (server/runware/router.py), shared with the current protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.runware.common import Reply
from server.runware.errors import RunwareError
from server.runware.legacy.translate import (
    LegacyError,
    LegacyTask,
    NewConnection,
    Ping,
    error_frame_from_current,
    invalid_api_key_frame,
    legacy_reply,
    parse_message,
    pong_reply,
    session_reply,
)

if TYPE_CHECKING:
    from server.runware.router import RunwareConnection


class LegacyProtocol:
    def __init__(self, connection: RunwareConnection) -> None:
        self.connection = connection

    def handle(self, message: dict[str, Any]) -> None:
        try:
            parsed = parse_message(message)
        except LegacyError as error:
            self.connection.send(error.frame())
            return
        if isinstance(parsed, Ping):
            self.connection.send(pong_reply())
        elif isinstance(parsed, NewConnection):
            try:
                self.connection.open_session(parsed.api_key, parsed.session_uuid, session_reply)
            except RunwareError:
                self.connection.send(invalid_api_key_frame())
        else:
            self.connection.start(parsed.task, _renderer(parsed))


def _renderer(task: LegacyTask) -> Callable[[Reply], list[dict[str, Any]]]:
    def render(reply: Reply) -> list[dict[str, Any]]:
        frames = [error_frame_from_current(item) for item in reply.errors]
        if reply.data:
            frames.append(legacy_reply(task, reply.data))
        return frames

    return render
