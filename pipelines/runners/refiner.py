"""SDXL refiner: the job's checkpoint denoises the first steps, a refiner checkpoint the rest.

diffusers' "ensemble of expert denoisers": the base call stops at `denoising_end = start` and
returns latents; the refiner, as a StableDiffusionXLImg2ImgPipeline, goes on from them with
`denoising_start = start`, the same number of inference steps, prompt, guidance and the same
generator objects (image i's randomness stays one stream across both passes). `start` is a
fraction of the whole schedule, as in diffusers, for image to image too.

Any SDXL checkpoint can refine: a real refiner (loaded as an img2img pipeline whose added time
ids carry an aesthetic score) or a base model (plain time ids). It is resolved through the
catalogue and loaded by the device's pipeline cache, like the job's own checkpoint; its pass
gets a fresh scheduler (the job's sampler on the refiner's own scheduler config) and the job's
VAE when one is set. Sub-models, the style reference and ControlNet units act on the base pass
only; tiling applies to both passes (the refiner's UNet and VAE pad circularly for its pass).

Edge cases, each chosen so that no pass is asked for something it cannot do:
- The refiner is the job's own checkpoint: one pass does it all (same weights either way).
- Image to image whose strength starts the denoising at or after `start`: the base has no step
  to do, so the refiner runs the whole image-to-image call alone (the job's strength, no
  hand-off), instead of resuming from latents noised for a later timestep than it assumes.
- A base pipeline without `denoising_end` (SDXL ControlNet img2img) is stopped at the same step
  by interrupting its loop from the step callback; its latents are handed over as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)
from PIL.Image import Image

from models.catalogue import Architecture
from pipelines.adapters.tiling import circular_padding
from pipelines.jobs import ErrorCode, GenerationJob, JobError, JobKind, Refiner
from pipelines.runners.common import (
    RunContext,
    StepReporter,
    encoded_prompt,
    make_scheduler,
    rows_per_image,
)

if TYPE_CHECKING:
    from pipelines.runners.families import RunnablePipeline

# Job kind -> the denoising steps its call plans (the progress total before the hand-off).
PLANNED_STEPS: dict[JobKind, Callable[[GenerationJob], int]] = {
    JobKind.TXT2IMG: lambda job: job.steps,
    JobKind.IMG2IMG: lambda job: min(int(job.steps * job.strength), job.steps),
}
# Loaded checkpoints whose pipelines can hand latents over (SDXL base models).
BASE_CLASSES: frozenset[str] = frozenset({"StableDiffusionXLPipeline"})
# Checkpoints that can refine: SDXL refiners and SDXL base models (not inpainting ones).
REFINER_ARCHITECTURES: frozenset[Architecture] = frozenset(
    {Architecture.SDXL, Architecture.SDXL_REFINER}
)


@dataclass(frozen=True)
class Handoff:
    """A refiner, ready: its img2img pipeline, the jobs of the call, the hand-off point. The
    jobs of a batch share the refiner and every setting it reads (from the first job); each
    brings its own prompt and seeds. prepare() makes it for one job; a batched runner replaces
    `jobs` with those of each call."""

    pipe: StableDiffusionXLImg2ImgPipeline
    jobs: tuple[GenerationJob, ...]
    start: float

    @property
    def job(self) -> GenerationJob:
        """The job whose settings the calls take (the batch's shared ones)."""
        return self.jobs[0]

    def for_call(self, jobs: Sequence[GenerationJob]) -> Handoff:
        """This hand-off for one call of a batch: its jobs, and a fresh scheduler so that no
        state of an earlier call carries over."""
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        return Handoff(img2img_pipeline(self.pipe, scheduler, None), tuple(jobs), self.start)


def check(job: GenerationJob) -> Refiner | None:
    """The job's refiner, if it has one that the job can use (JobError otherwise)."""
    refiner = job.refiner
    if refiner is None:
        return None
    if job.kind not in PLANNED_STEPS:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"a refiner works on text-to-image and image-to-image jobs only, not {job.kind.value}",
        )
    if not 0.0 < refiner.start < 1.0:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"refiner start {refiner.start} must lie strictly between 0 and 1 (the fraction of "
            "the steps after which the refiner takes over)",
        )
    return refiner


def prepare(base: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> Handoff | None:
    """Check the job's refiner against its checkpoint and load it; None: a single pass."""
    refiner = check(job)
    if refiner is None:
        return None
    if type(base).__name__ not in BASE_CLASSES:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"a refiner works on SDXL base checkpoints; {job.model or 'the default model'} is a "
            f"{type(base).__name__} checkpoint",
        )
    if ctx.resources is None:
        raise JobError(ErrorCode.INTERNAL, "a refiner needs the worker's model cache")
    spec = ctx.resources.catalogue.resolve(refiner.model)
    if spec.architecture not in REFINER_ARCHITECTURES or spec.inpainting:
        kind = f"{spec.architecture.value}{' inpainting' if spec.inpainting else ''}"
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"refiner {spec.code!r} is an {kind} checkpoint; a refiner must be an SDXL refiner "
            "or SDXL base checkpoint",
        )
    with torch.inference_mode(False):  # cached weights are normal tensors, as the worker's
        model = ctx.resources.cache.get(spec)
    if model is base:
        return None
    scheduler = make_scheduler(model.scheduler, job.sampler)
    return Handoff(img2img_pipeline(model, scheduler, ctx.vae), (job,), refiner.start)


def img2img_pipeline(
    model: DiffusionPipeline, scheduler: Any, vae: Any
) -> StableDiffusionXLImg2ImgPipeline:
    """The refiner's img2img pipeline over its loaded components (no weight copies). Its config
    flags come along: a real refiner's aesthetic-score time ids, a base model's plain ones."""
    available = {**model.config, **model.components, "scheduler": scheduler}
    if vae is not None:
        available["vae"] = vae
    params = inspect.signature(StableDiffusionXLImg2ImgPipeline.__init__).parameters
    pipe = StableDiffusionXLImg2ImgPipeline(
        **{name: available[name] for name in params if name in available}
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(
    pipe: RunnablePipeline, args: dict[str, Any], handoff: Handoff | None, ctx: RunContext
) -> list[Image]:
    """The diffusers call `pipe(**args)` (per-image lists for the handoff's jobs); with a
    refiner, in two passes. The images come back in the call's order."""
    if handoff is None:
        return list(pipe(**args).images)
    job = handoff.job
    planned = PLANNED_STEPS[job.kind](job)
    stop_after = None
    if job.kind is JobKind.IMG2IMG:
        base_steps = img2img_base_steps(pipe.scheduler, job.steps, job.strength, handoff.start)
        if base_steps == 0:
            image = {"image": args["image"], "strength": job.strength}
            return refine(handoff, ctx, args["generator"], 0, **image)
        stop_after = None if accepts(pipe, "denoising_end") else base_steps
    first = Progress(ctx.report_step, 0, planned, stop_after)
    hand_over = {"output_type": "latent", "callback_on_step_end": first}
    if stop_after is None:
        hand_over["denoising_end"] = handoff.start
    latents = pipe(**{**args, **hand_over}).images
    return refine(
        handoff, ctx, args["generator"], first.done, image=latents, denoising_start=handoff.start
    )


def refine(
    handoff: Handoff, ctx: RunContext, generator: Any, done: int, **image_args: Any
) -> list[Image]:
    """The refiner's pass: the rest of the denoising, decoded to images. Each job's prompt is
    encoded as plain text by the refiner's own text encoder, one row per image."""
    job, pipe = handoff.job, handoff.pipe
    jobs = handoff.jobs
    prompts = [encoded_prompt(pipe, j.prompt, j.negative_prompt) for j in jobs]
    models = (pipe.unet, pipe.vae) if job.tileable else ()
    with circular_padding(models):
        out = pipe(
            **rows_per_image(jobs, prompts),
            num_inference_steps=job.steps,
            guidance_scale=job.guidance_scale,
            num_images_per_prompt=1,
            generator=generator,
            callback_on_step_end=Progress(ctx.report_step, done, 0),
            output_type="pil",
            **image_args,
        )
    return list(out.images)


def img2img_base_steps(scheduler: Any, steps: int, strength: float, start: float) -> int:
    """How many steps an img2img base call does before handing over at `start`: diffusers'
    own rule (the strength's tail of the schedule, cut at timesteps >= (1 - start) * T)."""
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps)
    first = steps - min(int(steps * strength), steps)
    timesteps = probe.timesteps[first * probe.order :]
    total = probe.config.num_train_timesteps
    cutoff = round(total - start * total)
    return int((timesteps >= cutoff).sum())


def accepts(pipe: DiffusionPipeline, argument: str) -> bool:
    return argument in inspect.signature(pipe.__call__).parameters


class Progress:
    """A callback_on_step_end that reports both passes as one run of steps: the refiner's steps
    follow the `done` steps of the base. With `stop_after`, it ends the loop after that many
    steps (diffusers skips the rest of an interrupted loop and returns what it has)."""

    def __init__(
        self, report: StepReporter, done: int, planned: int, stop_after: int | None = None
    ) -> None:
        self.report = report
        self.offset = done
        self.planned = planned
        self.stop_after = stop_after
        self.done = done

    def __call__(
        self, pipe: DiffusionPipeline, step: int, _t: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        self.done = self.offset + step + 1
        self.report(self.done, max(self.planned, self.offset + pipe.num_timesteps))
        if self.stop_after is not None and step + 1 >= self.stop_after:
            pipe._interrupt = True
        return kwargs
