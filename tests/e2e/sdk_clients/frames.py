"""What both SDK driver scripts share (they run as scripts: this folder is on sys.path)."""

from __future__ import annotations

from typing import Any


def shorten(value: Any) -> Any:
    """The frame with long strings (data URIs, base64) cut, for a readable report."""
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:40]}...<{len(value)} chars>"
    if isinstance(value, list):
        return [shorten(item) for item in value]
    if isinstance(value, dict):
        return {key: shorten(item) for key, item in value.items()}
    return value
