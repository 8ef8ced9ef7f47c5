"""Image to image: the init image fitted to the requested size, then partly re-noised."""

from __future__ import annotations

from diffusers import DiffusionPipeline
from PIL.Image import Image

from pipelines.control import prepare_controls
from pipelines.imaging import fit_image
from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.runners import refiner
from pipelines.runners.common import RunContext, common_call_args, make_scheduler
from pipelines.runners.families import pipeline_for


def run(base: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> list[Image]:
    if job.init_image is None:
        raise JobError(ErrorCode.INVALID_INPUT, "image to image needs an init image")
    init = fit_image(job.init_image.convert("RGB"), job.width, job.height, job.resize_mode)
    if int(job.steps * job.strength) < 1:
        # No denoising step is left at this strength: the fitted image is the answer.
        ctx.report_step(0, 0)
        return [init.copy() for _ in job.seeds]
    handoff = refiner.prepare(base, job, ctx)
    control = prepare_controls(base, job, ctx)
    scheduler = make_scheduler(base.scheduler, job.sampler)
    pipe = pipeline_for(base, job.kind, scheduler, ctx.vae, control and control.controlnet)
    extra = {} if control is None else {"control_image": control.images, **control.args}
    args = {"image": init, "strength": job.strength, **common_call_args(pipe, job, ctx), **extra}
    return refiner.run(pipe, args, handoff, ctx)
