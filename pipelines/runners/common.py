"""What every generation runner shares: schedulers, generators, clip skip, step reporting, and
the per-image lists that put a batch of jobs into one diffusers call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import diffusers
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL.Image import Image

from models.cache import PipelineCache
from models.catalogue import Catalogue
from pipelines.jobs import ErrorCode, GenerationJob, JobError
from pipelines.prompt_weighting import prompt_embeddings
from pipelines.samplers import sampler_spec

if TYPE_CHECKING:  # pipelines.control imports this module's types
    from pipelines.control import PreparedControl

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


# --- request-level batches -----------------------------------------------------------------------
#
# A runner gets every job of one REQUEST batch (pipelines.batching.keys: equal keys, so every
# setting the diffusers call takes once is the same for all of them) and makes one call with
# per-image lists: image i of the call belongs to one job and gets that job's prompt, seed,
# start image, mask, control maps and style image. What the call takes once is read from the
# batch's first job.

T = TypeVar("T")
Embeddings = dict[str, torch.Tensor]  # diffusers call arguments: prompt_embeds, ...

# encode_prompt's results, in its order (SD 1.x returns the first two, SDXL all four).
EMBEDDING_ARGS = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)
# What every job of a batch must agree on for the runners' reading of jobs[0] to be right:
# checked here (cheaply) although the batch key already guarantees it.
SHARED_SETTINGS = ("kind", "width", "height", "steps", "guidance_scale", "sampler", "strength")


def check_batch(jobs: Sequence[GenerationJob]) -> GenerationJob:
    """The batch's first job, whose settings the call takes once; refused if the caller broke
    the batch contract (an engine bug, not a bad request)."""
    if not jobs:
        raise JobError(ErrorCode.INTERNAL, "a runner was called with no job")
    first = jobs[0]
    for name in SHARED_SETTINGS:
        if any(getattr(job, name) != getattr(first, name) for job in jobs):
            raise JobError(ErrorCode.INTERNAL, f"jobs of one batch differ in {name}")
    return first


def per_image(jobs: Sequence[GenerationJob], values: Sequence[T]) -> list[T]:
    """values[j] once for each image of jobs[j]: the per-image lists a batched call takes."""
    return [value for job, value in zip(jobs, values, strict=True) for _ in job.seeds]


def per_job(jobs: Sequence[GenerationJob], images: Sequence[T]) -> list[list[T]]:
    """A batched call's per-image results handed back to their jobs, in order."""
    counts = [job.num_images for job in jobs]
    if sum(counts) != len(images):
        raise JobError(ErrorCode.INTERNAL, f"{len(images)} images for {sum(counts)} seeds")
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [list(images[start : start + n]) for start, n in zip(starts, counts, strict=True)]


def encoded_prompt(
    pipe: DiffusionPipeline, prompt: str, negative_prompt: str, clip_skip: int | None = None
) -> Embeddings:
    """diffusers' own text encoding of one prompt (the pipeline's encode_prompt, one image,
    both halves): the very tensors the pipeline would make from the text, so a batch can carry
    each job's prompt as embeddings. A text encoder sees one prompt at a time, as when the job
    runs alone."""
    out = pipe.encode_prompt(
        prompt=prompt,
        device=pipe._execution_device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negative_prompt,
        clip_skip=clip_skip,
    )
    return dict(zip(EMBEDDING_ARGS, out, strict=False))


def job_embeddings(pipe: DiffusionPipeline, job: GenerationJob) -> Embeddings:
    """One image's prompt embeddings for the job: encode_prompt for plain text, the weighted
    embeddings of pipelines.prompt_weighting otherwise; clip skip applied either way."""
    clip_skip = diffusers_clip_skip(pipe, job.clip_skip)
    if job.prompt_weighting is None:
        return encoded_prompt(pipe, job.prompt, job.negative_prompt, clip_skip)
    return prompt_embeddings(pipe, job.prompt, job.negative_prompt, job.prompt_weighting, clip_skip)


def rows_per_image(jobs: Sequence[GenerationJob], embeddings: Sequence[Embeddings]) -> Embeddings:
    """The jobs' one-image embeddings stacked into one row per image of the call."""
    return {
        name: torch.cat(per_image(jobs, [e[name] for e in embeddings])) for name in embeddings[0]
    }


@dataclass(frozen=True)
class Group:
    """Jobs of a batch that one pipeline call runs, and that call's prompt embeddings."""

    positions: tuple[int, ...]  # the jobs' places in the batch
    jobs: tuple[GenerationJob, ...]
    prompt: Embeddings  # one row per image, in job order

    def pick(self, values: Sequence[T]) -> list[T]:
        """The group's entries of a per-job list of the whole batch."""
        return [values[position] for position in self.positions]

    @property
    def seeds(self) -> list[int]:
        return [seed for job in self.jobs for seed in job.seeds]


def _shape(embeddings: Embeddings) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(embeddings[name].shape) for name in sorted(embeddings))


def prompt_groups(pipe: DiffusionPipeline, jobs: Sequence[GenerationJob]) -> list[Group]:
    """The batch split by the shape of its prompt embeddings: one group, one call, unless
    weighted prompts of different lengths meet (sdembeds / compel add a 77-token chunk per 75
    prompt tokens). Padding the shorter ones with empty chunks would change their pictures, so
    each length gets its own call. Groups keep the batch's order."""
    encoded = [job_embeddings(pipe, job) for job in jobs]
    by_shape: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for position, embeddings in enumerate(encoded):
        by_shape.setdefault(_shape(embeddings), []).append(position)
    groups = []
    for positions in by_shape.values():
        members = [jobs[p] for p in positions]
        rows = rows_per_image(members, [encoded[p] for p in positions])
        groups.append(Group(tuple(positions), tuple(members), rows))
    return groups


GroupCall = Callable[[Group, RunContext], list[Image]]


def run_groups(
    pipe: DiffusionPipeline, jobs: Sequence[GenerationJob], ctx: RunContext, call: GroupCall
) -> list[list[Image]]:
    """`call` (one diffusers call, or a runner's few passes) for each prompt group; each job's
    images in batch order. Progress runs on across the groups: group g of G reports its steps
    after the g earlier groups' (all groups run the same schedule)."""
    groups = prompt_groups(pipe, jobs)
    results: list[list[Image]] = [[] for _ in jobs]
    for index, group in enumerate(groups):
        report = _group_reporter(ctx.report_step, index, len(groups))
        images = call(group, replace(ctx, report_step=report))
        for position, own in zip(group.positions, per_job(group.jobs, images), strict=True):
            results[position] = own
    return results


def _group_reporter(report: StepReporter, index: int, count: int) -> StepReporter:
    if count == 1:
        return report
    return lambda step, total: report(index * total + step, count * total)


def batch_call_args(pipe: DiffusionPipeline, group: Group, ctx: RunContext) -> dict[str, Any]:
    """The call arguments every runner's batched call takes: the group's prompt embeddings, one
    generator per image (image i's noise from its own seed), the batch's shared settings, and
    the jobs' style images. `pipe` is the call's own pipeline instance (see style_args)."""
    job = group.jobs[0]
    return {
        **group.prompt,
        "num_inference_steps": job.steps,
        "guidance_scale": job.guidance_scale,
        "num_images_per_prompt": 1,
        "generator": generators(group.seeds),
        "callback_on_step_end": step_callback(ctx.report_step),
        "output_type": "pil",
        **style_args(pipe, group.jobs),
    }


def style_args(pipe: DiffusionPipeline, jobs: Sequence[GenerationJob]) -> dict[str, Any]:
    """Each job's style image for its own images (the IP-Adapter and its strength are the
    batch's).

    diffusers has no per-image style argument: `ip_adapter_image` is one image for the whole
    call (a list means one per adapter), and precomputed `ip_adapter_image_embeds` are repeated
    for every image of the call. So this call's pipeline instance (built per call by
    families.pipeline_for, never the shared one) gets a prepare_ip_adapter_image_embeds that
    runs diffusers' own one per job, on the job's image for its number of images, and puts the
    results in the call's row order: every image's negative rows first, then the positive ones,
    as diffusers lays out the guidance batch. A job alone gets exactly diffusers' tensors."""
    if jobs[0].style is None:
        return {}
    styles = [job.style for job in jobs]
    if any(style is None for style in styles):
        raise JobError(ErrorCode.INTERNAL, "jobs of one batch differ in having a style")
    prepare = pipe.prepare_ip_adapter_image_embeds  # diffusers' own, bound to pipe

    def per_job_embeds(
        _images: Any, _embeds: Any, device: Any, num_images: int, cfg: bool
    ) -> list[torch.Tensor]:
        if num_images != sum(job.num_images for job in jobs):
            raise JobError(ErrorCode.INTERNAL, "style images do not match the call's images")
        parts = [
            prepare(style.image, None, device, job.num_images, cfg)  # type: ignore[union-attr]
            for style, job in zip(styles, jobs, strict=True)
        ]
        embeds = []
        for adapter in zip(*parts, strict=True):  # each adapter's tensors, one per job
            halves = [tensor.chunk(2) for tensor in adapter] if cfg else [(t,) for t in adapter]
            embeds.append(
                torch.cat([half[side] for side in range(len(halves[0])) for half in halves])
            )
        return embeds

    pipe.prepare_ip_adapter_image_embeds = per_job_embeds
    return {"ip_adapter_image": [style.image for style in styles]}  # type: ignore[union-attr]


def shared_controlnet(controls: Sequence[PreparedControl | None]) -> Any:
    """The batch's ControlNet component: the first job's units (same models, modes and
    settings in every job; only the maps differ). Units with masks carry them in their
    wrappers, so such jobs run alone (a SINGLE batch key)."""
    first = controls[0]
    if first is None:
        return None
    if len(controls) > 1 and any(unit.mask is not None for unit in first.controlnet.nets):
        raise JobError(ErrorCode.INTERNAL, "ControlNet units with masks cannot be batched")
    return first.controlnet


def control_args(
    pipe: DiffusionPipeline,
    jobs: Sequence[GenerationJob],
    controls: Sequence[PreparedControl | None],
    key: str,
) -> dict[str, Any]:
    """The ControlNet call arguments for the jobs' images: the units' shared settings, and
    under `key` ("image" for txt2img, "control_image" otherwise) one tensor per unit holding
    every image's map. The maps go in as tensors because diffusers' img2img, inpaint and SDXL
    ControlNet pipelines refuse a list of images per unit; the pipeline's own
    control_image_processor makes the tensor, exactly what the call makes from a job's image."""
    first = controls[0]
    if first is None:
        return {}
    units = range(len(first.images))
    maps = [per_image(jobs, [control.images[u] for control in controls]) for u in units]  # type: ignore[union-attr]
    job = jobs[0]
    processor = pipe.control_image_processor
    tensors = [processor.preprocess(m, height=job.height, width=job.width) for m in maps]
    return {key: tensors, **first.args}
