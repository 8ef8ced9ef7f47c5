"""What every generation runner shares: schedulers, generators, clip skip, step reporting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from models.cache import PipelineCache
from models.catalogue import Catalogue
from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.prompt_weighting import prompt_embeddings
from pipelines.samplers import sampler_spec

StepReporter = Callable[[int, int], None]  # (steps done, total steps); raises JobError to stop


@dataclass(frozen=True)
class Resources:
    """The worker's device-side state a runner or adapter may need beyond the checkpoint."""

    catalogue: Catalogue  # resolves sub-model, ControlNet and IP-Adapter codes
    cache: PipelineCache  # keeps auxiliary models loaded (cache.component)
    models_dir: Path | None = None  # preprocessor weights live in models_dir/annotators


@dataclass(frozen=True)
class RunContext:
    """What the worker hands a runner besides the job and the loaded pipeline."""

    report_step: StepReporter
    vae: Any = None  # a VAE to decode with instead of the checkpoint's own (UseMainModelVAE)
    resources: Resources | None = None


def make_scheduler(base: Any, sampler: str | None) -> Any:
    """A fresh scheduler for one call: the model's own, or the named sampler on its config."""
    spec = sampler_spec(sampler)
    if spec is None:
        return type(base).from_config(base.config)
    cls = getattr(diffusers, spec.scheduler_class)
    return cls.from_config(base.config, **spec.options)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image: image i's noise depends on seeds[i] alone, on any device."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def diffusers_clip_skip(pipe: DiffusionPipeline, clip_skip: int) -> int | None:
    """A1111's ClipSkip (1 = last layer) as diffusers' clip_skip (None = last, 1 = penultimate)."""
    layers = pipe.text_encoder.config.num_hidden_layers
    if not 1 <= clip_skip <= layers:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"clip skip {clip_skip} is out of range for this model's {layers}-layer text encoder",
        )
    return clip_skip - 1 or None


def step_callback(report: StepReporter) -> Callable[..., dict[str, Any]]:
    """A diffusers callback_on_step_end that reports progress (and may stop the loop)."""

    def callback(pipe: DiffusionPipeline, step: int, _t: Any, kwargs: dict[str, Any]) -> dict:
        report(step + 1, pipe.num_timesteps)
        return kwargs

    return callback


def prompt_args(pipe: DiffusionPipeline, job: GenerationJob) -> dict[str, Any]:
    """The prompt as diffusers takes it: the text (and clip skip), or for a weighted prompt the
    embeddings pipelines.prompt_weighting makes, clip skip already applied."""
    clip_skip = diffusers_clip_skip(pipe, job.clip_skip)
    if job.prompt_weighting is None:
        return {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "clip_skip": clip_skip,
        }
    return prompt_embeddings(pipe, job.prompt, job.negative_prompt, job.prompt_weighting, clip_skip)


def common_call_args(pipe: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> dict:
    """Arguments that txt2img and img2img calls share."""
    return {
        **prompt_args(pipe, job),
        "num_inference_steps": job.steps,
        "guidance_scale": job.guidance_scale,
        "num_images_per_prompt": job.num_images,
        "generator": generators(job.seeds),
        "callback_on_step_end": step_callback(ctx.report_step),
        "output_type": "pil",
        **({"ip_adapter_image": job.style.image} if job.style is not None else {}),
    }
