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
"""

from __future__ import annotations

from typing import Any

from diffusers import DiffusionPipeline
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
from pipelines.runners.common import RunContext, StepReporter, make_scheduler
from pipelines.runners.inpaint import redraw

# Deep fusion's second pass: low enough to keep the first pass's background, high enough to
# repaint light and colour across the foreground's edge.
HARMONISE_STRENGTH = 0.3
HARMONISE_BAND = 4  # px the second pass's mask reaches into the foreground


def run(base: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> list[Image]:
    if job.init_image is None:
        raise JobError(ErrorCode.INVALID_INPUT, "GenerateBackgrounds needs a foreground image")
    size = (job.width, job.height)
    foreground = fit_foreground(rgba_foreground(job.init_image), *size, job.resize_mode)
    mask = background_mask(foreground)
    if job.fill_image is not None:
        under = fit_image(job.fill_image, *size, job.fill_resize_mode or job.resize_mode)
    else:
        under = PILImage.new("RGB", size, NEUTRAL_GREY)
    passes = [(mask, job.strength)]
    if job.deep_fusion:
        passes.append((dilate(mask, HARMONISE_BAND), HARMONISE_STRENGTH))
    counts = [_denoising_steps(base, job, strength) for _, strength in passes]
    total = sum(counts)
    images = [alpha_over(foreground, under)] * job.num_images
    if total == 0:  # no denoising step at this strength: the start is the answer
        ctx.report_step(0, 0)
        return images
    control = prepare_controls(base, job, ctx)
    done = 0
    for (pass_mask, strength), count in zip(passes, counts, strict=True):
        if count == 0:
            continue  # no denoising step at this strength: the pass would change nothing
        callback = _offset_callback(ctx.report_step, done, total)
        redrawn = redraw(base, job, ctx, control, images, pass_mask, strength, **callback)
        images = [alpha_over(foreground, image) for image in redrawn]
        done += count
    return images


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
