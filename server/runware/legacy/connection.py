"""The legacy (picfinder) protocol on a Runware socket: plain JSON objects in and out.

Each legacy message is translated (server/runware/legacy/translate.py) into the current task
that serves it and run by the same service; its items come back as the legacy frame
(newImages, newUploadedImageUUID...). Sessions, the outgoing queue and background tasks are the
socket's own (server/runware/router.py), shared with the current protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.limits import Limits
from server.runware.common import Reply
from server.runware.errors import RunwareError
from server.runware.legacy.translate import (
    ErrorId,
    Kind,
    LegacyError,
    LegacyTask,
    NewConnection,
    Ping,
    error_frame,
    error_frame_from_current,
    invalid_api_key_frame,
    legacy_reply,
    parse_message,
    pong_reply,
    session_reply,
)
from server.runware.throttle import named_tasks, over_rate_error, oversized_error

if TYPE_CHECKING:
    from server.runware.router import RunwareConnection


class LegacyProtocol:
    def __init__(self, connection: RunwareConnection) -> None:
        self.connection = connection

    def handle(self, message: dict[str, Any], admitted: bool = True) -> None:
        """Answer one legacy message; `admitted` False: it is over the socket's message rate,
        so anything but a ping is refused (errorId SERVER_BUSY, with its taskUUID)."""
        try:
            _check_prompt(message, self.connection.limits)
            parsed = parse_message(message)
        except LegacyError as error:
            self.connection.send(error.frame())
            return
        if isinstance(parsed, Ping):
            self.connection.send(pong_reply())
        elif not admitted:
            uuid = parsed.task_uuid if isinstance(parsed, LegacyTask) else None
            message_text = over_rate_error(self.connection.limits).message
            self.connection.send(error_frame(message_text, ErrorId.SERVER_BUSY, uuid))
        elif isinstance(parsed, NewConnection):
            try:
                self.connection.open_session(parsed.api_key, parsed.session_uuid, session_reply)
            except RunwareError:
                self.connection.send(invalid_api_key_frame())
        else:
            self.connection.start(parsed.task, _renderer(parsed))

    def refuse_oversized(self, text: str, size: int) -> None:
        """Answer a legacy frame over the size limit, unparsed: one error frame per taskUUID
        found in it (errorId INVALID_MESSAGE)."""
        error = oversized_error(size, self.connection.limits)
        uuids, _ = named_tasks(text)
        targets: list[str | None] = [*uuids] or [None]
        for uuid in targets:
            self.connection.send(error_frame(error.message, ErrorId.INVALID_MESSAGE, uuid))


def _check_prompt(message: dict[str, Any], limits: Limits) -> None:
    """A newTask's promptText within max_prompt_chars (LegacyError naming it otherwise). The
    prompt a style template makes of it is checked again as imageInference's positivePrompt."""
    body = message.get(Kind.NEW_TASK.value)
    if not isinstance(body, dict):
        return
    text = body.get("promptText")
    problem = limits.prompt_problem(text) if isinstance(text, str) else None
    if problem is not None:
        uuid = body.get("taskUUID")
        raise LegacyError(f"promptText {problem}", uuid if isinstance(uuid, str) else None)


def _renderer(task: LegacyTask) -> Callable[[Reply], list[dict[str, Any]]]:
    def render(reply: Reply) -> list[dict[str, Any]]:
        frames = [error_frame_from_current(item) for item in reply.errors]
        if reply.data:
            frames.append(legacy_reply(task, reply.data))
        return frames

    return render
