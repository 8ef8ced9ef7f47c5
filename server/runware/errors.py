"""Runware error items, and the codes easel answers with.

Every task error carries the task's taskUUID and taskType (the SDKs route errors by taskUUID).
The codes the SDKs know by name (invalidApiKey, missingApiKey, conflictTaskUUID) are Runware's
own; the rest are easel's, one per cause, listed in docs/runware.md.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pipelines.jobs import ErrorCode
from server.metrics import count_error_reply
from server.runware.common import PROTOCOL


class Code(StrEnum):
    INVALID_API_KEY = "invalidApiKey"
    MISSING_API_KEY = "missingApiKey"  # a task arrived before authentication
    CONFLICT_TASK_UUID = "conflictTaskUUID"  # the taskUUID is in use already
    INVALID_MESSAGE = "invalidMessage"  # not JSON, or not an array of task objects
    UNKNOWN_TASK_TYPE = "unknownTaskType"
    UNSUPPORTED_TASK_TYPE = "unsupportedTaskType"  # a real Runware task easel does not serve yet
    MISSING_PARAMETER = "missingParameter"
    INVALID_PARAMETER = "invalidParameter"
    INVALID_IMAGE = "invalidImage"  # an image input that cannot be fetched or decoded
    UNKNOWN_MODEL = "unknownModel"
    MODEL_UNAVAILABLE = "modelUnavailable"  # installed but its weights cannot be loaded
    TASK_NOT_FOUND = "taskNotFound"  # getResponse for a taskUUID this key never sent
    SERVER_BUSY = "serverBusy"  # the queue is full: retry later
    RATE_LIMITED = "rateLimitExceeded"  # the key submits tasks faster than its rate allows
    TOO_MANY_TASKS = "concurrentTaskLimitExceeded"  # the key has all the tasks it may have running
    OUT_OF_MEMORY = "outOfMemory"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the server stopped before the task finished
    DELIVERY_FAILED = "deliveryFailed"  # uploadEndpoint refused the image
    INTERNAL_ERROR = "internalError"
    PAYLOAD_TOO_LARGE = "payloadTooLarge"  # a body or WebSocket message over the server's limit
    TOO_MANY_MESSAGES = "tooManyMessages"  # the socket sends faster than its message rate


# The engine's reasons -> Runware codes.
ENGINE_CODES: dict[str, Code] = {
    ErrorCode.BUSY.value: Code.SERVER_BUSY,
    ErrorCode.UNKNOWN_MODEL.value: Code.UNKNOWN_MODEL,
    ErrorCode.INVALID_INPUT.value: Code.INVALID_PARAMETER,
    ErrorCode.MODEL_UNAVAILABLE.value: Code.MODEL_UNAVAILABLE,
    ErrorCode.CANCELLED.value: Code.CANCELLED,
    ErrorCode.OUT_OF_MEMORY.value: Code.OUT_OF_MEMORY,
    ErrorCode.INTERRUPTED.value: Code.INTERRUPTED,
    ErrorCode.INTERNAL.value: Code.INTERNAL_ERROR,
}


class RunwareError(Exception):
    """A task failed; becomes one item of an `errors` frame."""

    def __init__(self, code: Code, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.parameter = parameter

    @classmethod
    def from_engine(cls, code: str, message: str, parameter: str | None = None) -> RunwareError:
        return cls(ENGINE_CODES.get(code, Code.INTERNAL_ERROR), message, parameter)

    def item(self, task_type: str | None, task_uuid: str | None) -> dict[str, Any]:
        count_error_reply(PROTOCOL, self.code.value)  # GET /metrics: easel_error_replies_total
        item: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.parameter is not None:
            item["parameter"] = self.parameter
        if task_type is not None:
            item["taskType"] = task_type
        if task_uuid is not None:
            item["taskUUID"] = task_uuid
        return item
