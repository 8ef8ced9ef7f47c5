"""Batch keys: two jobs may share a forward pass exactly when their keys are equal.

Three modes, chosen per job:
- STEP: step-level continuous batching (pipelines.denoise_loop). Plain txt2img and img2img share
  a running denoising loop; jobs join and leave at step boundaries, each with its own scheduler,
  steps, sampler, guidance, strength and clip skip. Only what changes the UNet's weights or the
  latent shape must match: checkpoint, sub-models and their weights, tiling, size, and the VAE
  that decodes.
- REQUEST: one diffusers pipeline call with per-image lists (prompts, generators, init images,
  masks, control maps, style images). Every setting the call takes once must match; what may
  differ per job is in PER_JOB_FIELDS.
- SINGLE: runs alone (preprocessing, ControlNet units with masks, whose masks live inside the
  per-job ControlNet wrapper). The key holds the job id, so it equals no other job's.
Utility jobs (background removal, captions...) are REQUEST batches of one utility model when
UTILITY_BATCH_FIELDS lets their kind share a call, else SINGLE.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum

from pipelines.jobs import (
    BackgroundRemovalJob,
    CaptionJob,
    ControlUnit,
    GenerationJob,
    Job,
    JobKind,
    PreprocessJob,
    PromptEnhanceJob,
    UpscaleJob,
)


class BatchMode(StrEnum):
    STEP = "step"
    REQUEST = "request"
    SINGLE = "single"


@dataclass(frozen=True)
class BatchKey:
    mode: BatchMode
    model: str  # the resolved checkpoint code ("" for jobs without one)
    architecture: str  # "sd1", "sdxl"...: with the size, what the memory budget reads
    width: int
    height: int
    shared: tuple[tuple[str, object], ...] = ()  # (setting, value) every member agrees on


# Settings that may differ between the jobs of one REQUEST batch: they become per-image lists.
PER_JOB_FIELDS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "seeds",
        "init_image",
        "mask",
        "fill_image",
        "mask_margin",
        "outpaint",
        "owner",
        "priority",
        "model",  # replaced by the resolved code
        "width",  # in the key itself
        "height",
        "translate_prompts",  # done per job before the call (the prompt is then per job)
        "prompt_language",
        "check_nsfw",  # the safety checker looks at each job's images after the call
    }
)
# What a STEP batch must agree on (everything else is per job inside the loop).
STEP_SHARED_FIELDS = ("sub_models", "tileable", "vae", "use_model_vae")
STEP_KINDS = frozenset({JobKind.TXT2IMG, JobKind.IMG2IMG})
# Per utility job class: the fields (besides the resolved model) that jobs sharing one call must
# agree on; None: each job runs alone (sampling with its own seed, or per-image tiling).
UTILITY_BATCH_FIELDS: dict[type, tuple[str, ...] | None] = {
    BackgroundRemovalJob: (),  # one forward pass over every image; post-processing per job
    CaptionJob: ("prompt", "language", "max_tokens"),  # one generate call
    PromptEnhanceJob: None,
    UpscaleJob: None,
}
UTILITY_ARCHITECTURE = "utility"  # the key's architecture for utility jobs


def runs_in_loop(job: GenerationJob) -> bool:
    """Whether the continuous loop runs this job: plain txt2img / img2img (no ControlNet, style
    reference or refiner, which the loop does not implement)."""
    return job.kind in STEP_KINDS and not job.controls and job.style is None and job.refiner is None


def _unit_signature(unit: ControlUnit) -> tuple[object, ...]:
    return (
        unit.model,
        unit.preprocessor,
        tuple(sorted(unit.preprocessor_options.items())),
        unit.resolution,
        unit.weight,
        unit.start,
        unit.end,
        unit.mode,
        unit.resize_mode,
    )


def _shared_value(job: GenerationJob, name: str) -> object:
    value = getattr(job, name)
    if name == "controls":
        return tuple(_unit_signature(unit) for unit in value)
    if name == "style":
        return None if value is None else (value.adapter, value.strength)
    return value


def batch_key(job: Job, *, job_id: str, model: str = "", architecture: str = "") -> BatchKey:
    """The job's key; `model` and `architecture` are its resolved checkpoint's (the engine
    resolves names and aliases first, so two spellings of one model batch together)."""
    if isinstance(job, PreprocessJob):
        return BatchKey(BatchMode.SINGLE, "", "", 0, 0, (("job", job_id),))
    if not isinstance(job, GenerationJob):  # a utility job: `model` is its utility model
        fields_ = UTILITY_BATCH_FIELDS[type(job)]
        if fields_ is None:
            shared: tuple[tuple[str, object], ...] = (("job", job_id),)
            return BatchKey(BatchMode.SINGLE, model, UTILITY_ARCHITECTURE, 0, 0, shared)
        shared = (("type", type(job).__name__), *((f, getattr(job, f)) for f in fields_))
        return BatchKey(BatchMode.REQUEST, model, UTILITY_ARCHITECTURE, 0, 0, shared)
    if any(unit.mask is not None for unit in job.controls):
        return BatchKey(
            BatchMode.SINGLE, model, architecture, job.width, job.height, (("job", job_id),)
        )
    if runs_in_loop(job):
        shared = tuple((name, _shared_value(job, name)) for name in STEP_SHARED_FIELDS)
        return BatchKey(BatchMode.STEP, model, architecture, job.width, job.height, shared)
    shared = tuple(
        (f.name, _shared_value(job, f.name)) for f in fields(job) if f.name not in PER_JOB_FIELDS
    )
    return BatchKey(BatchMode.REQUEST, model, architecture, job.width, job.height, shared)
