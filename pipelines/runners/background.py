"""Generate a background behind a transparent foreground (GenerateBackgrounds).

The foreground (init_image) must be RGBA with some transparent pixels; it is fitted with the
job's resize mode (ResizeAndFill leaves the uncovered area transparent). What is generated is
where alpha < 255, with no blur beyond the alpha's own soft edge. The redraw starts from the
reference background (fill_image, fitted with fill_resize_mode; the job's strength says how
much of it is redrawn) or, without one, from neutral grey (upstream then sets strength 1.0), with
the foreground composited over it. After the inpaint pipeline (see runners.inpaint.redraw) the
foreground goes back over the result with its alpha: opaque pixels are the input's, bit for bit.

Deep fusion adds a harmonisation pass: the inpaint pipeline again, over that composite, at the
low strength HARMONISE_STRENGTH, with the background mask grown HARMONISE_BAND pixels into the
foreground so the model repaints across the seam, then the foreground over it again. Progress
counts the steps of both passes.

A batch of jobs is one call per pass over all their images: each job's foreground, mask and
start for its own images; the strength, and so the number of passes and steps, is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL import Image as PILImage
from PIL.Image import Image

from pipelines.control import prepare_controls
from pipelines.imaging import fit_foreground, fit_image
from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.masking import (
    NEUTRAL_GREY,
    alpha_over,
    background_mask,
    dilate,
    rgba_foreground,
)
from pipelines.runners.common import (
    Group,
    RunContext,
    StepReporter,
    check_batch,
    make_scheduler,
    per_image,
    run_groups,
)
from pipelines.runners.inpaint import redraw

# Deep fusion's second pass: low enough to keep the first pass's background, high enough to
# repaint light and colour across the foreground's edge.
HARMONISE_STRENGTH = 0.3
HARMONISE_BAND = 4  # px the second pass's mask reaches into the foreground


@dataclass(frozen=True)
class Scene:
    """One job's inputs at its size: the fitted foreground, the background mask of each pass,
    and the start image (the foreground over the reference background or grey)."""

    foreground: Image
    masks: tuple[Image, ...]
    start: Image


def scene(job: GenerationJob) -> Scene:
    if job.init_image is None:
        raise JobError(ErrorCode.INVALID_INPUT, "GenerateBackgrounds needs a foreground image")
    size = (job.width, job.height)
    foreground = fit_foreground(rgba_foreground(job.init_image), *size, job.resize_mode)
    mask = background_mask(foreground)
    if job.fill_image is not None:
        under = fit_image(job.fill_image, *size, job.fill_resize_mode or job.resize_mode)
    else:
        under = PILImage.new("RGB", size, NEUTRAL_GREY)
    masks = (mask, dilate(mask, HARMONISE_BAND)) if job.deep_fusion else (mask,)
    return Scene(foreground, masks, alpha_over(foreground, under))


def run(
    base: DiffusionPipeline, jobs: Sequence[GenerationJob], ctx: RunContext
) -> list[list[Image]]:
    job = check_batch(jobs)
    scenes = [scene(each) for each in jobs]
    strengths = (job.strength, HARMONISE_STRENGTH) if job.deep_fusion else (job.strength,)
    counts = [_denoising_steps(base, job, strength) for strength in strengths]
    total = sum(counts)
    if total == 0:  # no denoising step at this strength: the start is the answer
        ctx.report_step(0, 0)
        return [[s.start] * each.num_images for each, s in zip(jobs, scenes, strict=True)]
    controls = [prepare_controls(base, each, ctx) for each in jobs]

    def call(group: Group, ctx: RunContext) -> list[Image]:
        members = group.pick(scenes)
        foregrounds = per_image(group.jobs, [s.foreground for s in members])
        images = per_image(group.jobs, [s.start for s in members])
        done = 0
        for index, (strength, count) in enumerate(zip(strengths, counts, strict=True)):
            if count == 0:
                continue  # no denoising step at this strength: the pass would change nothing
            masks = per_image(group.jobs, [s.masks[index] for s in members])
            callback = _offset_callback(ctx.report_step, done, total)
            redrawn = redraw(
                base, group, ctx, group.pick(controls), images, masks, strength, **callback
            )
            images = [alpha_over(fg, image) for fg, image in zip(foregrounds, redrawn, strict=True)]
            done += count
        return images

    return run_groups(base, jobs, ctx, call)


def _denoising_steps(base: DiffusionPipeline, job: GenerationJob, strength: float) -> int:
    """How many steps diffusers' inpaint loop runs at this strength (its get_timesteps rule)."""
    init_steps = min(int(job.steps * strength), job.steps)
    if init_steps < 1:
        return 0
    scheduler = make_scheduler(base.scheduler, job.sampler)
    scheduler.set_timesteps(job.steps)
    t_start = job.steps - init_steps
    return len(scheduler.timesteps[t_start * scheduler.order :])


def _offset_callback(report: StepReporter, done: int, total: int) -> dict[str, Any]:
    """A callback_on_step_end that reports this pass's steps after the `done` earlier ones."""

    def callback(pipe: DiffusionPipeline, step: int, _t: Any, kwargs: dict[str, Any]) -> dict:
        report(done + step + 1, total)
        return kwargs

    return {"callback_on_step_end": callback}
