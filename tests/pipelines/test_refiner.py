"""SDXL refiner jobs: the base checkpoint denoises the first steps, the refiner the rest.

A models directory holds a tiny SDXL base, a second SDXL base with other UNet weights (any SDXL
checkpoint may refine) and a tiny refiner in the real refiner's single-file layout (OpenCLIP
bigG alone, aesthetic-score time ids), each with its config folder named in manifest.toml.
Every engine job must give exactly the pixels of diffusers' two-call "ensemble of expert
denoisers" on pipelines loaded from the same files: the base called with denoising_end and
output_type="latent", the refiner's StableDiffusionXLImg2ImgPipeline called on those latents
with denoising_start, the same steps and the same generator objects. The refiner must change
the picture (else the tests could not tell), and must not leak into the next plain job.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL.Image import Image

from models.catalogue import Architecture, Catalogue, ModelKind, WeightFormat
from models.loader import load_pipeline
from models.registry import build_catalogue
from pipelines.jobs import ErrorCode, GenerationJob, JobError, JobKind, JobResult, Refiner
from pipelines.runners import refiner as refiner_runner
from pipelines.runners import txt2img
from pipelines.runners.common import Resources, RunContext
from tests.engine_harness import run_jobs
from tests.models.tiny import (
    save_config_dir,
    save_single_file,
    tiny_sd1_pipeline,
    tiny_sdxl_pipeline,
)
from tests.models.tiny_controlnet import tiny_sdxl_controlnet
from tests.models.tiny_refiner import (
    save_refiner_single_file,
    tiny_sdxl_refiner,
    tiny_sdxl_variant,
)
from tests.pipelines.masked_support import assert_same, generators, noise_image, one_torch_thread

BASE, OTHER, REFINER, SD1 = "xl", "xl-other", "xl-refiner", "sd1"
SIZE, STEPS, START = 64, 4, 0.5
PROMPT, NEGATIVE = "a lighthouse at dusk", "blurry"
INIT = noise_image((SIZE, SIZE), seed=3)

TXT2IMG = GenerationJob(
    kind=JobKind.TXT2IMG,
    model=BASE,
    prompt=PROMPT,
    negative_prompt=NEGATIVE,
    width=SIZE,
    height=SIZE,
    steps=STEPS,
    guidance_scale=5.0,
    seeds=(7, 8),
)
IMG2IMG = replace(TXT2IMG, kind=JobKind.IMG2IMG, init_image=INIT, strength=0.75, seeds=(9,))


def refined(job: GenerationJob, model: str, start: float = START, **changes: Any) -> GenerationJob:
    return replace(job, refiner=Refiner(model=model, start=start), **changes)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refiner")
    models, tokenizers = root / "models", root / "tokenizers"
    checkpoints: dict[str, tuple[DiffusionPipeline, Any, str]] = {
        BASE: (tiny_sdxl_pipeline(tokenizers), save_single_file, "sdxl"),
        OTHER: (tiny_sdxl_variant(tokenizers), save_single_file, "sdxl"),
        REFINER: (tiny_sdxl_refiner(tokenizers), save_refiner_single_file, "sdxl-refiner"),
        SD1: (tiny_sd1_pipeline(tokenizers), save_single_file, "sd15"),
    }
    manifest = []
    for code, (pipe, save, family) in checkpoints.items():
        save(pipe, models / "checkpoints" / f"{code}.safetensors")
        save_config_dir(pipe, models / "configs" / code, like=family)
        manifest.append(f'[models."checkpoints/{code}.safetensors"]\nconfig = "configs/{code}"\n')
    (models / "manifest.toml").write_text("\n".join(manifest))
    return models


@pytest.fixture(scope="module")
def catalogue(models_dir: Path) -> Catalogue:
    return build_catalogue(models_dir, demo_root=None).catalogue


@pytest.fixture(scope="module")
def reference(catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The checkpoints loaded directly (no engine) from the same files by easel's loader."""
    cache = tmp_path_factory.mktemp("reference-cache")
    return {
        code: load_pipeline(
            catalogue.resolve(code), device="cpu", dtype=torch.float32, cache_dir=cache
        )
        for code in (BASE, OTHER, REFINER)
    }


@pytest.fixture(scope="module")
def results(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    """Every engine job of this module, run once, one after another through one engine."""
    return run_jobs(models_dir, tmp_path_factory.mktemp("data"), JOBS)


def as_img2img(pipe: DiffusionPipeline) -> StableDiffusionXLImg2ImgPipeline:
    """diffusers' own way to reuse an SDXL pipeline's components for image to image."""
    if isinstance(pipe, StableDiffusionXLImg2ImgPipeline):
        return pipe  # a real refiner loads as one
    img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    return img2img


def shared(job: GenerationJob) -> dict[str, Any]:
    return {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "num_inference_steps": job.steps,
        "guidance_scale": job.guidance_scale,
        "num_images_per_prompt": job.num_images,
    }


def ensemble(reference: dict, job: GenerationJob) -> list[Image]:
    """The two-call ensemble of expert denoisers, straight on diffusers."""
    assert job.refiner is not None
    base, refiner = reference[job.model], as_img2img(reference[job.refiner.model])
    gens = generators(job.seeds)
    first: dict[str, Any] = {"width": job.width, "height": job.height}
    if job.kind is JobKind.IMG2IMG:
        base = as_img2img(base)
        first = {"image": job.init_image, "strength": job.strength}
    latents = base(
        **shared(job),
        **first,
        generator=gens,
        denoising_end=job.refiner.start,
        output_type="latent",
    ).images
    return refiner(
        **shared(job), image=latents, denoising_start=job.refiner.start, generator=gens
    ).images


def plain(reference: dict, job: GenerationJob) -> list[Image]:
    pipe = reference[job.model]
    return pipe(
        **shared(job), width=job.width, height=job.height, generator=generators(job.seeds)
    ).images


def refiner_alone(reference: dict, job: GenerationJob) -> list[Image]:
    """Image to image by the refiner alone, at the job's strength."""
    assert job.refiner is not None
    refiner = as_img2img(reference[job.refiner.model])
    return refiner(
        **shared(job),
        image=job.init_image,
        strength=job.strength,
        generator=generators(job.seeds),
    ).images


# (job, reference, why). The scheduler's 4 timesteps are 751, 501, 251, 1; a refiner takes
# those below (1 - start) * 1000.
CASES: list[tuple[GenerationJob, Any, str]] = [
    (refined(TXT2IMG, REFINER), ensemble, "txt2img, a real refiner (aesthetic-score time ids)"),
    (refined(IMG2IMG, OTHER, start=0.8), ensemble, "img2img, another SDXL base as the refiner"),
    (refined(IMG2IMG, REFINER), ensemble, "img2img, a real refiner"),
    # strength 0.4 runs only timestep 1, after START: the base has nothing to do, the refiner
    # redraws alone
    (refined(IMG2IMG, REFINER, strength=0.4), refiner_alone, "img2img, all steps after start"),
]
ERRORS: list[tuple[GenerationJob, str]] = [
    # a refiner checkpoint loads, but only to refine: as a job's own model it is refused
    (replace(TXT2IMG, model=REFINER), "cannot run txt2img jobs"),
    (refined(replace(TXT2IMG, model=SD1), REFINER), "SDXL base checkpoints"),
    (refined(TXT2IMG, SD1), "must be an SDXL refiner or SDXL base"),
    (refined(TXT2IMG, REFINER, start=0.0), "strictly between 0 and 1"),
    (refined(IMG2IMG, REFINER, start=1.0), "strictly between 0 and 1"),
    (refined(TXT2IMG, REFINER, start=1.5), "strictly between 0 and 1"),
]
# One engine runs them all in this order (fewest checkpoint loads), then a plain job: the
# refiner jobs must have left the shared base model as it was.
JOBS = [job for job, _, _ in CASES] + [job for job, _ in ERRORS] + [TXT2IMG]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[why for _, _, why in CASES])
def test_engine_job_equals_the_diffusers_ensemble(
    index: int, results: list, reference: dict
) -> None:
    job, expected, _ = CASES[index]
    result = results[index]
    assert isinstance(result, JobResult), result
    assert_same(result.images, expected(reference, job))


def test_a_plain_job_after_them_is_untouched_and_differs(results: list, reference: dict) -> None:
    with_refiner, without = results[0], results[-1]
    assert isinstance(with_refiner, JobResult) and isinstance(without, JobResult)
    assert_same(without.images, plain(reference, TXT2IMG))
    for a, b in zip(with_refiner.images, without.images, strict=True):
        assert not np.array_equal(np.asarray(a), np.asarray(b))  # the refiner did something


@pytest.mark.parametrize("index", range(len(ERRORS)), ids=[message for _, message in ERRORS])
def test_unusable_refiners_are_clear_errors(index: int, results: list) -> None:
    _, message = ERRORS[index]
    error = results[len(CASES) + index]
    assert isinstance(error, JobError), error
    assert error.code is ErrorCode.INVALID_INPUT
    assert message in error.message


def test_a_real_refiner_file_is_detected_and_loads(catalogue: Catalogue, reference: dict) -> None:
    spec = catalogue.resolve(REFINER)
    assert (spec.kind, spec.architecture, spec.weight_format) == (
        ModelKind.CHECKPOINT,
        Architecture.SDXL_REFINER,
        WeightFormat.SAFETENSORS,
    )
    pipe = reference[REFINER]
    assert isinstance(pipe, StableDiffusionXLImg2ImgPipeline)
    assert pipe.text_encoder is None and pipe.tokenizer is None
    assert pipe.config.requires_aesthetics_score is True


class Loaded:
    """A stand-in for the worker's pipeline cache that hands out the reference pipelines."""

    def __init__(self, pipes: dict[str, DiffusionPipeline]) -> None:
        self.pipes = pipes

    def get(self, spec: Any) -> DiffusionPipeline:
        return self.pipes[spec.code]


def test_progress_counts_both_passes_as_one_run(catalogue: Catalogue, reference: dict) -> None:
    steps: list[tuple[int, int]] = []
    ctx = RunContext(
        lambda step, total: steps.append((step, total)),
        resources=Resources(catalogue, Loaded(reference)),  # type: ignore[arg-type]
    )
    job = refined(replace(TXT2IMG, seeds=(7,)), REFINER)
    with torch.inference_mode():
        txt2img.run(reference[BASE], [job], ctx)
    assert [step for step, _ in steps] == list(range(1, STEPS + 1))
    assert steps[-1] == (STEPS, STEPS)


def test_the_job_own_checkpoint_as_refiner_runs_one_pass(
    catalogue: Catalogue, reference: dict
) -> None:
    ctx = RunContext(lambda *_: None, resources=Resources(catalogue, Loaded(reference)))  # type: ignore[arg-type]
    assert refiner_runner.prepare(reference[BASE], refined(TXT2IMG, BASE), ctx) is None


def test_a_base_pipeline_without_denoising_end_stops_at_the_same_step(
    catalogue: Catalogue, reference: dict
) -> None:
    """SDXL's ControlNet img2img pipeline has no denoising_end: its loop is interrupted after
    the steps the base would do (strength 0.75 runs timesteps 501, 251, 1; start 0.5 keeps 501)
    and the refiner goes on from its latents, as diffusers' documented interrupt does."""
    controlnet = tiny_sdxl_controlnet()

    def controlled() -> DiffusionPipeline:
        pipe = StableDiffusionXLControlNetImg2ImgPipeline.from_pipe(
            reference[BASE], controlnet=controlnet
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    assert "denoising_end" not in inspect.signature(controlled().__call__).parameters
    job = refined(IMG2IMG, REFINER)
    call = {**shared(job), "image": INIT, "control_image": noise_image((SIZE, SIZE), seed=4)}
    call["strength"] = job.strength
    ctx = RunContext(lambda *_: None, resources=Resources(catalogue, Loaded(reference)))  # type: ignore[arg-type]
    with torch.inference_mode():
        handoff = refiner_runner.prepare(reference[BASE], job, ctx)
        args = {**call, "generator": generators(job.seeds)}
        got = refiner_runner.run(controlled(), args, handoff, ctx)

    def stop_after_one_step(pipe: DiffusionPipeline, step: int, _t: Any, kwargs: dict) -> dict:
        pipe._interrupt = True
        return kwargs

    gens = generators(job.seeds)
    latents = controlled()(
        **call, generator=gens, callback_on_step_end=stop_after_one_step, output_type="latent"
    ).images
    want = reference[REFINER](
        **shared(job), image=latents, denoising_start=job.refiner.start, generator=gens
    ).images
    assert_same(got, want)
