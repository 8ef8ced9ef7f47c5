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

A batch of jobs is one call over all their images: each job's canvas, blurred mask, region
(mask margin and outpaint padding differ per job), fill and ControlNet maps for its own images;
then each job's zoom-out and compositing. A job with nothing to redraw (an empty mask) is
answered at once, without joining the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL.Image import Image

from pipelines.control import PreparedControl, UnitControlNet, prepare_controls
from pipelines.imaging import fit_image
from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.masking import (
    InpaintCanvas,
    Region,
    composite,
    inpaint_canvas,
    zoom_in,
    zoom_out,
    zoom_region,
)
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


@dataclass(frozen=True)
class Masked:
    """One job's redraw, laid out: its canvas, where the redraw starts (the canvas with the
    fill pasted in) and the region a mask margin zooms into (None: the whole canvas)."""

    job: GenerationJob
    canvas: InpaintCanvas
    init: Image
    region: Region | None

    @property
    def empty(self) -> bool:
        """Nothing to redraw: the compositing would give the start back unchanged."""
        return self.canvas.blurred.getbbox() is None

    def zoomed(self, image: Image) -> Image:
        """An input of the call: the region stretched to the job's size, or the whole image."""
        if self.region is None:
            return image
        return zoom_in(image, self.region, self.job.width, self.job.height)

    def finish(self, image: Image) -> Image:
        """A redrawn image put back: zoomed out into its region, composited over the canvas."""
        if self.region is not None:
            image = zoom_out(image, self.region, self.canvas.image)
        return composite(image, self.canvas.image, self.canvas.blurred)


def lay_out(job: GenerationJob) -> Masked:
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
    return Masked(job, canvas, init, region)


def run(
    base: DiffusionPipeline, jobs: Sequence[GenerationJob], ctx: RunContext
) -> list[list[Image]]:
    job = check_batch(jobs)
    layouts = [lay_out(each) for each in jobs]
    # Without a denoising step at this strength, or with nothing to redraw, the start is the
    # answer (what the compositing would give for an unchanged redraw).
    answers = [[layout.init.copy() for _ in layout.job.seeds] for layout in layouts]
    steps = int(job.steps * job.strength) >= 1
    todo = [i for i, layout in enumerate(layouts) if steps and not layout.empty]
    if not todo:
        ctx.report_step(0, 0)
        return answers
    work = [layouts[i] for i in todo]
    controls = [_zoomed_controls(base, layout, ctx) for layout in work]
    starts = [layout.zoomed(layout.init) for layout in work]
    masks = [layout.zoomed(layout.canvas.blurred) for layout in work]

    def call(group: Group, ctx: RunContext) -> list[Image]:
        images = per_image(group.jobs, group.pick(starts))
        mask_images = per_image(group.jobs, group.pick(masks))
        return redraw(base, group, ctx, group.pick(controls), images, mask_images, job.strength)

    redrawn = run_groups(base, [layout.job for layout in work], ctx, call)
    for i, layout, images in zip(todo, work, redrawn, strict=True):
        answers[i] = [layout.finish(image) for image in images]
    return answers


def _zoomed_controls(
    base: DiffusionPipeline, layout: Masked, ctx: RunContext
) -> PreparedControl | None:
    """The job's ControlNet inputs (prepared once per job), cropped like its start image."""
    control = prepare_controls(base, layout.job, ctx)
    if control is None or layout.region is None:
        return control
    return zoomed_control(control, layout.region, layout.job.width, layout.job.height)


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
    # diffusers annotates ControlNetModel; it only calls each net, as UnitControlNet is called
    multi = MultiControlNetModel(nets)  # type: ignore[arg-type]  # duck-typed ControlNetModel
    return PreparedControl(multi, images, dict(control.args))


def redraw(
    base: DiffusionPipeline,
    group: Group,
    ctx: RunContext,
    controls: Sequence[PreparedControl | None],
    images: Sequence[Image],
    masks: Sequence[Image],
    strength: float,
    **overrides: Any,
) -> list[Image]:
    """One batched diffusers inpaint call: images[i] redrawn where masks[i] is white, at the
    jobs' size, for every image of the group's jobs (one per seed, in job order); with each
    job's ControlNet units prepared by the caller (once per job, however many passes it makes).

    Each image goes in separately, even when a job's are all the same: diffusers then encodes
    image i with generator i, so image i depends on its own seed alone (as if it ran by
    itself). `overrides` replace call arguments (the background runner's progress callback)."""
    job = group.jobs[0]
    scheduler = make_scheduler(base.scheduler, job.sampler)
    pipe = pipeline_for(base, job.kind, scheduler, ctx.vae, shared_controlnet(controls))
    args = {
        **batch_call_args(pipe, group, ctx),
        **control_args(pipe, group.jobs, controls, "control_image"),
        **overrides,
    }
    out = pipe(
        image=list(images),
        mask_image=list(masks),
        strength=strength,
        width=job.width,
        height=job.height,
        **args,
    )
    return list(out.images)
