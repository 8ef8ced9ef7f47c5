"""TODO(inpaint): filled in by its own change."""

from __future__ import annotations

from diffusers import DiffusionPipeline
from PIL.Image import Image

from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.runners.common import RunContext


def run(base: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> list[Image]:
    raise JobError(ErrorCode.INVALID_INPUT, "inpaint is not supported yet")
