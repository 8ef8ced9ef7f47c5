"""Logging for `easel serve` and `easel worker`: text lines, or with --log-json one JSON object a
line for log collectors.

A JSON line holds ts (UTC, ISO 8601), level, logger and message, the `extra=` fields named in
EXTRA_FIELDS (task state lines carry task_id, state, protocol, action, and code or images),
uvicorn's access fields (client, method, path, http_version, status) and the traceback as exc.
Other `extra=` fields are left out: libraries attach what they like there (Celery attaches a
received task's arguments, prompts included), and prompts and keys stay out of the logs.

With JSON on, everything that would write to stderr by itself goes through the root logger
instead: Python warnings, and the loggers that libraries (transformers, diffusers...) gave a
handler of their own; uvicorn is started without its own logging config
(server.operator_routes.run_server), so its loggers reach the root logger too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# `extra=` fields a JSON line carries (server.taskstore.observed sets them on task lines)
EXTRA_FIELDS = ("task_id", "state", "protocol", "action", "code", "images")
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")  # uvicorn.access args


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            if len(record.args) == len(_ACCESS_FIELDS):
                entry.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        for key in EXTRA_FIELDS:
            if key in vars(record):
                entry[key] = vars(record)[key]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, json_lines: bool = False) -> None:
    """The root logger's one stderr handler (as logging.basicConfig: nothing changes when the
    root logger has handlers already, e.g. under pytest)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if json_lines:
        logging.captureWarnings(True)
        _through_root()


def _through_root() -> None:
    """Loggers that print to the console themselves (libraries' default handlers) propagate
    to the root logger instead, so their lines are JSON too."""
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        consoles = [h for h in logger.handlers if _is_console(h)]
        for handler in consoles:
            logger.removeHandler(handler)
        if consoles:
            logger.propagate = True


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
        sys.stderr,
        sys.stdout,
        sys.__stderr__,
        sys.__stdout__,
    )
