"""What both protocols' request parsers share when pydantic refuses a field."""

from __future__ import annotations

from typing import Any


def error_location(parts: tuple[Any, ...]) -> str:
    """A pydantic error location as the client wrote it: ("controlNet", 0, "model") ->
    "controlNet[0].model"."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
