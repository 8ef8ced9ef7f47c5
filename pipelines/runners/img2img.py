"""Image to image: the init image fitted to the requested size, then partly re-noised."""

from __future__ import annotations

from diffusers import DiffusionPipeline
from PIL.Image import Image

from pipelines.imaging import fit_image
from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.runners.common import RunContext, common_call_args, make_scheduler
from pipelines.runners.families import pipeline_for


def run(base: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> list[Image]:
    if job.init_image is None:
        raise JobError(ErrorCode.INVALID_INPUT, "image to image needs an init image")
    init = fit_image(job.init_image, job.width, job.height, job.resize_mode)
    if int(job.steps * job.strength) < 1:
        # No denoising step is left at this strength: the fitted image is the answer.
        ctx.report_step(0, 0)
        return [init.copy() for _ in job.seeds]
    pipe = pipeline_for(base, job.kind, make_scheduler(base.scheduler, job.sampler), ctx.vae)
    out = pipe(image=init, strength=job.strength, **common_call_args(pipe, job, ctx))
    return list(out.images)
