"""Text to image: the checkpoint's pipeline (or its ControlNet variant), a per-call scheduler."""

from __future__ import annotations

from diffusers import DiffusionPipeline
from PIL.Image import Image

from pipelines.control import prepare_controls
from pipelines.jobs import GenerationJob
from pipelines.runners import refiner
from pipelines.runners.common import RunContext, common_call_args, make_scheduler
from pipelines.runners.families import pipeline_for


def run(base: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> list[Image]:
    handoff = refiner.prepare(base, job, ctx)
    control = prepare_controls(base, job, ctx)
    scheduler = make_scheduler(base.scheduler, job.sampler)
    pipe = pipeline_for(base, job.kind, scheduler, ctx.vae, control and control.controlnet)
    extra = {} if control is None else {"image": control.images, **control.args}
    args = {"width": job.width, "height": job.height, **common_call_args(pipe, job, ctx), **extra}
    return refiner.run(pipe, args, handoff, ctx)
