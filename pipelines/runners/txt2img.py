"""Text to image: the checkpoint's pipeline (or its ControlNet variant), a per-call scheduler.

A batch of jobs is one call: each job's prompt, seeds and ControlNet maps for its own images
(runners.common); an SDXL refiner takes the whole batch's latents over in one second call.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL.Image import Image

from pipelines.control import prepare_controls
from pipelines.jobs import GenerationJob
from pipelines.runners import refiner
from pipelines.runners.common import (
    Group,
    RunContext,
    batch_call_args,
    check_batch,
    control_args,
    make_scheduler,
    run_groups,
    shared_controlnet,
)
from pipelines.runners.families import pipeline_for


def run(
    base: DiffusionPipeline, jobs: Sequence[GenerationJob], ctx: RunContext
) -> list[list[Image]]:
    job = check_batch(jobs)
    handoff = refiner.prepare(base, job, ctx)
    controls = [prepare_controls(base, each, ctx) for each in jobs]
    controlnet = shared_controlnet(controls)

    def call(group: Group, ctx: RunContext) -> list[Image]:
        scheduler = make_scheduler(base.scheduler, job.sampler)
        pipe = pipeline_for(base, job.kind, scheduler, ctx.vae, controlnet)
        args = {
            "width": job.width,
            "height": job.height,
            **batch_call_args(pipe, group, ctx),
            **control_args(pipe, group.jobs, group.pick(controls), "image"),
        }
        return refiner.run(pipe, args, handoff and handoff.for_call(group.jobs), ctx)

    return run_groups(base, jobs, ctx, call)
