"""Text to image: the checkpoint's own pipeline with a per-call scheduler."""

from __future__ import annotations

from diffusers import DiffusionPipeline
from PIL.Image import Image

from pipelines.jobs import GenerationJob
from pipelines.runners.common import RunContext, common_call_args, make_scheduler
from pipelines.runners.families import pipeline_for


def run(base: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> list[Image]:
    pipe = pipeline_for(base, job.kind, make_scheduler(base.scheduler, job.sampler), ctx.vae)
    out = pipe(width=job.width, height=job.height, **common_call_args(pipe, job, ctx))
    return list(out.images)
