"""Inpaint and outpaint (ModifyMaskedPixels): redraw the masked part of a raw image.

The canvas and mask are built by pipelines.masking (its docstring has the exact rules: the raw
image fitted inside the requested size without upscaling, an uncovered border edge-extended and
redrawn, the mask binarised at 50% grey then blurred by `mask_blur`). An optional fill image,
fitted with the job's resize mode, is pasted into the blurred mask first: the redrawn area starts
from it. The diffusers inpaint pipeline (its ControlNet variant with control units) redraws the
canvas at the job's strength; works with both regular 4-channel checkpoints (latents blended
with the re-noised canvas outside the mask) and 9-channel inpainting checkpoints, which the
worker picks when installed. The result is composited over the canvas through the blurred mask
(A1111's overlay), so every pixel the blurred mask leaves at 0 is the input's, bit for bit.

Outpaint padding places the raw image at (left, top) instead of centring it (masking.place).
With a mask margin only a region around the mask is redrawn, zoomed to the job's size
(masking.zoom_region: A1111's "inpaint only masked"); the start image, the blurred mask and the
ControlNet maps (and unit masks) are cropped to it alike, and the redrawn region goes back into
the canvas before the same compositing.
"""

from __future__ import annotations

from typing import Any

from diffusers import DiffusionPipeline
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL.Image import Image

from pipelines.control import PreparedControl, UnitControlNet, prepare_controls
from pipelines.imaging import fit_image
from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.masking import Region, composite, inpaint_canvas, zoom_in, zoom_out, zoom_region
from pipelines.runners.common import RunContext, common_call_args, make_scheduler
from pipelines.runners.families import pipeline_for


def run(base: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> list[Image]:
    if job.init_image is None:
        raise JobError(ErrorCode.INVALID_INPUT, "inpainting needs the raw image to redraw")
    size = (job.width, job.height)
    canvas = inpaint_canvas(job.init_image, job.mask, *size, job.mask_blur, job.outpaint)
    init = canvas.image
    if job.fill_image is not None:
        mode = job.fill_resize_mode or job.resize_mode
        fill = fit_image(job.fill_image, *size, mode)
        init = composite(fill, canvas.image, canvas.blurred)
    region = (
        None if job.mask_margin is None else zoom_region(canvas.blurred, job.mask_margin, *size)
    )
    if int(job.steps * job.strength) < 1 or canvas.blurred.getbbox() is None:
        # No denoising step at this strength, or nothing to redraw: the start is the answer
        # (what the compositing would give for an unchanged redraw).
        ctx.report_step(0, 0)
        return [init.copy() for _ in job.seeds]
    control = prepare_controls(base, job, ctx)
    if region is None:
        starts = [init] * job.num_images
        images = redraw(base, job, ctx, control, starts, canvas.blurred, job.strength)
    else:
        images = redraw_region(base, job, ctx, control, init, canvas.blurred, region)
        images = [zoom_out(image, region, canvas.image) for image in images]
    return [composite(image, canvas.image, canvas.blurred) for image in images]


def redraw_region(
    base: DiffusionPipeline,
    job: GenerationJob,
    ctx: RunContext,
    control: PreparedControl | None,
    start: Image,
    mask: Image,
    region: Region,
) -> list[Image]:
    """redraw() of one canvas region zoomed to the job's size: the start image, the mask and
    the ControlNet inputs cropped alike. The images come back at the job's size."""
    size = (job.width, job.height)
    starts = [zoom_in(start, region, *size)] * job.num_images
    zoomed = None if control is None else zoomed_control(control, region, *size)
    return redraw(base, job, ctx, zoomed, starts, zoom_in(mask, region, *size), job.strength)


def zoomed_control(
    control: PreparedControl, region: Region, width: int, height: int
) -> PreparedControl:
    """The job's ControlNet inputs for a redraw of one canvas region zoomed to width x height:
    each map cropped and stretched like the start image; each unit mask cropped (the unit
    stretches it to every residual's size itself). New per-job wrappers around the same nets."""
    nets = [
        UnitControlNet(
            unit.net,
            mode=unit.mode,
            cfg=unit.cfg,
            mask=None
            if unit.mask is None
            else unit.mask[..., region.top : region.bottom, region.left : region.right],
        )
        for unit in control.controlnet.nets
    ]
    images = [zoom_in(image, region, width, height) for image in control.images]
    return PreparedControl(MultiControlNetModel(nets), images, dict(control.args))


def redraw(
    base: DiffusionPipeline,
    job: GenerationJob,
    ctx: RunContext,
    control: PreparedControl | None,
    images: list[Image],
    mask: Image,
    strength: float,
    **overrides: Any,
) -> list[Image]:
    """One batched diffusers inpaint call: images[i] (one per seed) redrawn where the mask is
    white, at the job's size; with the job's ControlNet units prepared by the caller (once per
    job, however many passes it makes).

    Each image goes in separately, even when they are all the same: diffusers then encodes image i
    with generator i, so image i depends on seeds[i] alone (as if it ran by itself). `overrides`
    replace common call arguments (the background runner's progress callback)."""
    scheduler = make_scheduler(base.scheduler, job.sampler)
    pipe = pipeline_for(base, job.kind, scheduler, ctx.vae, control and control.controlnet)
    extra = {} if control is None else {"control_image": control.images, **control.args}
    args = {**common_call_args(pipe, job, ctx), **extra, **overrides}
    out = pipe(
        image=images,
        mask_image=mask,
        strength=strength,
        width=job.width,
        height=job.height,
        **args,
    )
    return list(out.images)
