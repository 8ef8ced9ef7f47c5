"""What a task record keeps of a job: every setting, no image data (JSON-ready)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum
from typing import Any

from PIL.Image import Image

from pipelines.jobs import Job


def job_summary(job: Job) -> dict[str, Any]:
    """What the task record keeps of a job: every setting, no image data (JSON-ready)."""
    return _plain(job)


def _plain(value: Any) -> Any:
    if isinstance(value, Image):
        return f"<image {value.width}x{value.height}>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
