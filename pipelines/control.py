"""TODO(controlnet): ControlNet units -> the models and call arguments of a ControlNet pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import DiffusionPipeline
from PIL.Image import Image

from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.runners.common import RunContext


@dataclass
class PreparedControl:
    """What a ControlNet pipeline call needs for a job's units."""

    controlnet: Any  # the pipeline's `controlnet` component (a MultiControlNetModel)
    images: list[Image]  # one control map per unit, at the job's size
    args: dict[str, Any] = field(default_factory=dict)  # conditioning scales, start/end, modes


def prepare_controls(
    base: DiffusionPipeline, job: GenerationJob, ctx: RunContext
) -> PreparedControl | None:
    """None when the job has no ControlNet units."""
    if not job.controls:
        return None
    raise JobError(ErrorCode.INVALID_INPUT, "ControlNet is not supported yet")
