"""PICPIK's error codes: the public table was never published, so this is easel's own.

RetCode answers a request; TaskDetail.ErrorCode says why a task ended in Error. Both tables are
documented in docs/picpik.md and must stay stable: clients switch on them.
"""

from __future__ import annotations

from enum import IntEnum
from types import MappingProxyType

from pipelines.jobs import ErrorCode


class RetCode(IntEnum):
    OK = 0
    INTERNAL_ERROR = 10000
    BAD_REQUEST = 10001  # the body is not a JSON object with an Action
    UNKNOWN_ACTION = 10002
    UNSUPPORTED = 10003  # a PICPIK action or parameter this server does not serve yet
    INVALID_PARAMETER = 10010  # Message names the field
    INVALID_IMAGE = 10011  # bad base64, not an image, too large, empty slot
    AUTH_MISSING = 10020
    AUTH_UNKNOWN_KEY = 10021
    AUTH_BAD_SIGNATURE = 10022
    UNKNOWN_MODEL = 10030
    MODEL_NOT_INSTALLED = 10031  # the action needs a model the operator has not installed
    TASK_NOT_FOUND = 10040
    TASK_ALREADY_ENDED = 10041
    SERVER_BUSY = 10050
    RATE_LIMITED = 10051  # the key submits tasks faster than its rate allows: retry later
    TOO_MANY_TASKS = 10052  # the key has as many tasks queued or running as it may
    REQUEST_TOO_LARGE = 10004  # the body is larger than the server's limit (--max-body-mb)


class TaskErrorCode(IntEnum):
    NONE = 0
    INTERNAL = 20000
    CANCELLED = 20001  # TerminateTask
    OUT_OF_MEMORY = 20002
    MODEL_UNAVAILABLE = 20003  # the model's weights failed to load
    INVALID_INPUT = 20004
    INTERRUPTED = 20005  # the server stopped or restarted before the task finished
    UNKNOWN_MODEL = 20006


TASK_ERROR_CODES: MappingProxyType[str, TaskErrorCode] = MappingProxyType(
    {
        ErrorCode.INTERNAL.value: TaskErrorCode.INTERNAL,
        ErrorCode.CANCELLED.value: TaskErrorCode.CANCELLED,
        ErrorCode.OUT_OF_MEMORY.value: TaskErrorCode.OUT_OF_MEMORY,
        ErrorCode.MODEL_UNAVAILABLE.value: TaskErrorCode.MODEL_UNAVAILABLE,
        ErrorCode.INVALID_INPUT.value: TaskErrorCode.INVALID_INPUT,
        ErrorCode.INTERRUPTED.value: TaskErrorCode.INTERRUPTED,
        ErrorCode.UNKNOWN_MODEL.value: TaskErrorCode.UNKNOWN_MODEL,
    }
)

# Engine errors raised at submission time, as request RetCodes.
SUBMIT_RET_CODES: MappingProxyType[str, RetCode] = MappingProxyType(
    {
        ErrorCode.BUSY.value: RetCode.SERVER_BUSY,
        ErrorCode.UNKNOWN_MODEL.value: RetCode.UNKNOWN_MODEL,
        ErrorCode.INVALID_INPUT.value: RetCode.INVALID_PARAMETER,
        ErrorCode.MODEL_UNAVAILABLE.value: RetCode.MODEL_NOT_INSTALLED,
    }
)


class PicpikError(Exception):
    """A request that fails: answered with this RetCode and Message, HTTP 200 as clients expect."""

    def __init__(self, code: RetCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
