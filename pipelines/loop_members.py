"""A job's place in the continuous denoising loop: its latents, schedule and conditioning.

`prepare` does for one job what a diffusers txt2img / img2img pipeline does before its
denoising loop, by calling that pipeline's own methods (encode_prompt, prepare_latents,
get_timesteps, _get_add_time_ids, prepare_extra_step_kwargs) in the same order with the same
arguments, so a job alone in the loop gets the pipeline's numbers bit for bit. Each member owns a
fresh scheduler: jobs at different steps, with different samplers, step counts, strengths and
guidance share the UNet forward but never scheduler state.

`decode` is the pipelines' VAE decode for any number of finished images (SDXL's fp16 upcast and
latent mean/std included); `to_images` is their post-processing, split so the tensor work stays
on the GPU thread and the PIL conversion can run elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from PIL.Image import Image

from pipelines.imaging import fit_image
from pipelines.jobs import ErrorCode, GenerationJob, JobError, JobKind
from pipelines.runners.common import generators, job_embeddings, make_scheduler
from pipelines.runners.families import pipeline_for


@dataclass(eq=False)
class Member:
    """One job in the running batch. Rows are what the UNet sees: with classifier-free guidance
    the job's n images appear twice, unconditional first ([neg x n, pos x n]), as in diffusers."""

    job: GenerationJob
    scheduler: Any
    timesteps: torch.Tensor  # the job's remaining schedule; position indexes it
    latents: torch.Tensor  # (n, C, h, w)
    embeds: torch.Tensor  # (rows, tokens, dim)
    added: dict[str, torch.Tensor] | None  # SDXL's text_embeds / time_ids, per row
    cfg: bool
    extra_step: dict[str, Any] = field(default_factory=dict)  # eta / generators for step()
    position: int = 0
    owner: Any = None  # the worker's handle for the job

    @property
    def rows(self) -> int:
        return self.embeds.shape[0]

    @property
    def images(self) -> int:
        return self.latents.shape[0]

    @property
    def total(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.position >= self.total

    @property
    def timestep(self) -> torch.Tensor:
        return self.timesteps[self.position]


def is_xl(pipe: DiffusionPipeline) -> bool:
    return "text_encoder_2" in pipe.components


def prepare(base: DiffusionPipeline, job: GenerationJob, vae: Any = None) -> Member | list[Image]:
    """The job's member, or its finished images when there is nothing to denoise (img2img at a
    strength that leaves no step: the fitted image, as the img2img runner answers)."""
    if job.kind is JobKind.IMG2IMG:
        if job.init_image is None:
            raise JobError(ErrorCode.INVALID_INPUT, "image to image needs an init image")
        init = fit_image(job.init_image.convert("RGB"), job.width, job.height, job.resize_mode)
        if int(job.steps * job.strength) < 1:
            return [init.copy() for _ in job.seeds]
    else:
        init = None
    scheduler = make_scheduler(base.scheduler, job.sampler)
    pipe = pipeline_for(base, job.kind, scheduler, vae)
    pipe._guidance_scale = job.guidance_scale  # what do_classifier_free_guidance reads
    cfg = bool(pipe.do_classifier_free_guidance)
    device = pipe._execution_device
    gens = generators(job.seeds)
    n = job.num_images
    embeds, pooled = _encode(pipe, job, cfg)
    dtype = embeds.dtype
    if init is None:
        timesteps, _ = retrieve_timesteps(scheduler, job.steps, device)
        if is_xl(pipe):
            scheduler.set_begin_index(0)  # the SDXL pipeline does; the SD 1.x one does not
        channels = pipe.unet.config.in_channels
        latents = pipe.prepare_latents(n, channels, job.height, job.width, dtype, device, gens)
    else:
        image = pipe.image_processor.preprocess(init)
        retrieve_timesteps(scheduler, job.steps, device)
        timesteps, _ = pipe.get_timesteps(job.steps, job.strength, device)
        start = timesteps[:1].repeat(n)
        latents = pipe.prepare_latents(image, start, 1, n, dtype, device, gens)
    added = None
    if is_xl(pipe):
        added = _xl_added_conditioning(pipe, job, pooled, dtype, device, cfg, n)
    return Member(
        job=job,
        scheduler=scheduler,
        timesteps=timesteps,
        latents=latents,
        embeds=embeds,
        added=added,
        cfg=cfg,
        extra_step=pipe.prepare_extra_step_kwargs(gens, 0.0),
    )


def _encode(
    pipe: DiffusionPipeline, job: GenerationJob, cfg: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Prompt embeddings in the pipeline's row order (and SDXL's pooled pair): the job's
    one-image embeddings (runners.common.job_embeddings, as the batched runners encode it)
    repeated for its images, as encode_prompt repeats them."""
    encoded = job_embeddings(pipe, job)
    n = job.num_images

    def rows(name: str) -> torch.Tensor:
        tensor = encoded[name]
        return tensor.repeat(n, *[1] * (tensor.dim() - 1))

    pos = rows("prompt_embeds")
    embeds = torch.cat([rows("negative_prompt_embeds"), pos]) if cfg else pos
    if not is_xl(pipe):
        return embeds, None
    return embeds, (rows("negative_pooled_prompt_embeds"), rows("pooled_prompt_embeds"))


def _xl_added_conditioning(
    pipe: DiffusionPipeline,
    job: GenerationJob,
    pooled: tuple[torch.Tensor, torch.Tensor] | None,
    dtype: torch.dtype,
    device: torch.device,
    cfg: bool,
    n: int,
) -> dict[str, torch.Tensor]:
    """SDXL's micro-conditioning rows, built as its txt2img / img2img pipelines build them."""
    assert pooled is not None
    neg_pooled, pooled_embeds = pooled
    projection = pipe.text_encoder_2.config.projection_dim
    size = (job.height, job.width)
    if job.kind is JobKind.IMG2IMG:
        time_ids, neg_time_ids = pipe._get_add_time_ids(
            size, (0, 0), size, 6.0, 2.5, size, (0, 0), size, dtype, projection
        )
        time_ids = time_ids.repeat(n, 1)
        if cfg:
            time_ids = torch.cat([neg_time_ids.repeat(n, 1), time_ids])
    else:
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype, projection)
        if cfg:
            time_ids = torch.cat([time_ids, time_ids])
        time_ids = time_ids.repeat(n, 1)
    text_embeds = torch.cat([neg_pooled, pooled_embeds]) if cfg else pooled_embeds
    return {"text_embeds": text_embeds.to(device), "time_ids": time_ids.to(device)}


def decode(vae: Any, latents: torch.Tensor, xl: bool) -> torch.Tensor:
    """Latents -> images in [-1, 1], as the pipelines decode them."""
    upcast = xl and vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
        latents = latents.to(torch.float32)
    try:
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if xl and mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std_t / vae.config.scaling_factor + mean_t
        else:
            latents = latents / vae.config.scaling_factor
        return vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def denormalized(processor: VaeImageProcessor, images: torch.Tensor) -> torch.Tensor:
    """The post-processing's tensor half (on the device): [-1, 1] -> [0, 1]."""
    out = processor.postprocess(images, output_type="pt", do_denormalize=[True] * len(images))
    assert isinstance(out, torch.Tensor)  # output_type="pt"
    return out


def to_images(processor: VaeImageProcessor, images: torch.Tensor) -> list[Image]:
    """The post-processing's host half: a [0, 1] CPU tensor -> PIL images (off the GPU thread)."""
    return list(processor.numpy_to_pil(processor.pt_to_numpy(images)))
