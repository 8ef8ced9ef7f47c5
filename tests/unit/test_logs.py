"""--log-json's formatter: one JSON object a line with ts, level, logger, message, the record's
`extra=` fields, uvicorn's access fields and the traceback."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

from server.logs import JsonFormatter


def record(name: str, message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(
        name, logging.INFO, __file__, 1, message, args, None, extra=extra
    )
    made.created = 1_700_000_000.25
    return made


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    line = JsonFormatter().format(
        record(
            "server.taskstore.observed",
            "task %s %s",
            "t1",
            "queued",
            task_id="t1",
            state="queued",
            protocol="picpik",
            action="GenerateImages",
        )
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2023-11-14T22:13:20.250+00:00",
        "level": "INFO",
        "logger": "server.taskstore.observed",
        "message": "task t1 queued",
        "task_id": "t1",
        "state": "queued",
        "protocol": "picpik",
        "action": "GenerateImages",
    }
    assert datetime.fromisoformat(json.loads(line)["ts"]).timestamp() == 1_700_000_000.25


def test_uvicorn_access_fields_and_no_colour_copy() -> None:
    access = record(
        "uvicorn.access", '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/readyz", "1.1", 503
    )
    entry = json.loads(JsonFormatter().format(access))
    assert entry["message"] == '127.0.0.1:5000 - "GET /readyz HTTP/1.1" 503'
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/readyz", 503)
    started = record("uvicorn.error", "Started", color_message="\x1b[1mStarted\x1b[0m")
    assert "color_message" not in json.loads(JsonFormatter().format(started))


def test_other_extra_fields_stay_out_and_tracebacks_go_in() -> None:
    """Celery attaches a received task's arguments (the job, its prompt) as `data`."""
    try:
        raise ValueError("broken")
    except ValueError:
        failed = record("celery.worker.strategy", "received", data={"args": "a prompt"})
        failed.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(failed))
    assert "ValueError: broken" in entry["exc"]
    assert "data" not in entry and "a prompt" not in json.dumps(entry)
