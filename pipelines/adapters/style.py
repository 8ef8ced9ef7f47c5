"""TODO(style): filled in by its own change."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from diffusers import DiffusionPipeline

from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.runners.common import RunContext


@contextmanager
def applied(pipe: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> Iterator[None]:
    if job.style is None:
        yield
        return
    raise JobError(ErrorCode.INVALID_INPUT, "style is not supported yet")
    yield
