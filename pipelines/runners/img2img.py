"""Image to image: the init image fitted to the requested size, then partly re-noised.

A batch of jobs is one call: each job's init image, prompt, seeds, ControlNet maps and style
image for its own images (runners.common); the strength, and so the shortcut below, is shared.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL.Image import Image

from pipelines.control import prepare_controls
from pipelines.imaging import fit_image
from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.runners import refiner
from pipelines.runners.common import (
    Group,
    RunContext,
    batch_call_args,
    check_batch,
    control_args,
    make_scheduler,
    per_image,
    run_groups,
    shared_controlnet,
)
from pipelines.runners.families import pipeline_for


def run(
    base: DiffusionPipeline, jobs: Sequence[GenerationJob], ctx: RunContext
) -> list[list[Image]]:
    job = check_batch(jobs)
    inits = [fitted_init(each) for each in jobs]
    if int(job.steps * job.strength) < 1:
        # No denoising step is left at this strength: the fitted image is the answer.
        ctx.report_step(0, 0)
        return [[init.copy() for _ in each.seeds] for each, init in zip(jobs, inits, strict=True)]
    handoff = refiner.prepare(base, job, ctx)
    controls = [prepare_controls(base, each, ctx) for each in jobs]
    controlnet = shared_controlnet(controls)

    def call(group: Group, ctx: RunContext) -> list[Image]:
        scheduler = make_scheduler(base.scheduler, job.sampler)
        pipe = pipeline_for(base, job.kind, scheduler, ctx.vae, controlnet)
        args = {
            "image": per_image(group.jobs, group.pick(inits)),
            "strength": job.strength,
            **batch_call_args(pipe, group, ctx),
            **control_args(pipe, group.jobs, group.pick(controls), "control_image"),
        }
        return refiner.run(pipe, args, handoff and handoff.for_call(group.jobs), ctx)

    return run_groups(base, jobs, ctx, call)


def fitted_init(job: GenerationJob) -> Image:
    if job.init_image is None:
        raise JobError(ErrorCode.INVALID_INPUT, "image to image needs an init image")
    return fit_image(job.init_image.convert("RGB"), job.width, job.height, job.resize_mode)
