"""Background jobs through a real engine: parity with the direct diffusers inpaint call followed by
the foreground's alpha-over; opaque pixels kept bit for bit; inputs without transparency refused;
deep fusion's second, harmonising pass (its steps counted in the progress)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionInpaintPipeline
from PIL import Image

from pipelines.imaging import fit_image
from pipelines.jobs import ErrorCode, GenerationJob, JobError, JobKind, JobResult
from pipelines.masking import NEUTRAL_GREY, alpha_over, background_mask, dilate
from pipelines.runners import background
from pipelines.runners.common import RunContext
from tests.engine_harness import run_jobs
from tests.pipelines.masked_support import (
    SD1,
    assert_same,
    generators,
    load_reference,
    make_models_dir,
    noise_image,
    one_torch_thread,
    pixels,
)

SIZE = 64


def _foreground() -> Image.Image:
    """An opaque disc of colour noise with a one-pixel soft rim, on a transparent background."""
    y, x = np.mgrid[:SIZE, :SIZE]
    radius = np.hypot(x - 32, y - 30)
    alpha = np.where(radius < 16, 255, np.where(radius < 17, 128, 0)).astype(np.uint8)
    rgba = np.dstack([np.asarray(noise_image((SIZE, SIZE), 4)), alpha])
    return Image.fromarray(rgba, "RGBA")


FOREGROUND = _foreground()
ALPHA = np.asarray(FOREGROUND.getchannel("A"))
OPAQUE = ALPHA == 255
JOB = GenerationJob(
    kind=JobKind.BACKGROUND,
    model=SD1,
    prompt="a beach at sunset",
    width=SIZE,
    height=SIZE,
    steps=4,
    guidance_scale=5.0,
    seeds=(21, 22),
    init_image=FOREGROUND,
    strength=1.0,
)
WITH_REFERENCE = replace(JOB, fill_image=noise_image((96, 64), 5), strength=0.6)
DEEP = replace(JOB, deep_fusion=True)
REFUSED = {
    "rgb": replace(JOB, init_image=FOREGROUND.convert("RGB")),
    "opaque": replace(JOB, init_image=Image.new("RGBA", (SIZE, SIZE), (9, 9, 9, 255))),
    "transparent": replace(JOB, init_image=Image.new("RGBA", (SIZE, SIZE), (9, 9, 9, 0))),
}


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("background")
    models = make_models_dir(root, [SD1])
    names = ["job", "reference", "deep", *REFUSED]
    results = run_jobs(models, root / "data", [JOB, WITH_REFERENCE, DEEP, *REFUSED.values()])
    return {
        "results": dict(zip(names, results, strict=True)),
        "ref": load_reference(models, SD1, root / "cache"),
    }


def _images(setup: dict, name: str) -> tuple[Image.Image, ...]:
    result = setup["results"][name]
    assert isinstance(result, JobResult), result
    return result.images


def direct(
    ref: DiffusionPipeline, job: GenerationJob, counts: list[int] | None = None
) -> list[Image.Image]:
    """The direct diffusers inpaint call(s) for a background job, the foreground put back after
    each; `counts` gets each pass's number of denoising steps."""
    pipe = StableDiffusionInpaintPipeline(**ref.components)
    pipe.set_progress_bar_config(disable=True)
    under = (
        Image.new("RGB", (SIZE, SIZE), NEUTRAL_GREY)
        if job.fill_image is None
        else fit_image(job.fill_image, SIZE, SIZE, job.resize_mode)
    )
    mask = background_mask(FOREGROUND)
    passes = [(mask, job.strength)]
    if job.deep_fusion:
        passes.append((dilate(mask, background.HARMONISE_BAND), background.HARMONISE_STRENGTH))
    images = [alpha_over(FOREGROUND, under)] * job.num_images
    for pass_mask, strength in passes:
        pipe.scheduler = type(ref.scheduler).from_config(ref.scheduler.config)
        out = pipe(
            prompt=job.prompt,
            image=images,
            mask_image=pass_mask,
            strength=strength,
            width=SIZE,
            height=SIZE,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance_scale,
            num_images_per_prompt=job.num_images,
            generator=generators(job.seeds),
        ).images
        images = [alpha_over(FOREGROUND, image) for image in out]
        if counts is not None:
            counts.append(pipe.num_timesteps)
    return images


@pytest.mark.parametrize(("name", "job"), [("job", JOB), ("reference", WITH_REFERENCE)])
def test_matches_the_direct_inpaint_call(setup: dict, name: str, job: GenerationJob) -> None:
    assert_same(_images(setup, name), direct(setup["ref"], job))


@pytest.mark.parametrize("name", ["job", "reference", "deep"])
def test_opaque_pixels_are_the_foreground_and_the_background_is_drawn(
    setup: dict, name: str
) -> None:
    fg = pixels(FOREGROUND)
    for image in _images(setup, name):
        out = pixels(image)
        assert np.array_equal(out[OPAQUE], fg[OPAQUE])
        assert np.abs(out[ALPHA == 0] - 128).mean() > 10  # not the grey it started from


def test_reference_background_changes_the_result(setup: dict) -> None:
    plain, referenced = pixels(_images(setup, "job")[0]), pixels(_images(setup, "reference")[0])
    assert np.abs(plain[ALPHA == 0] - referenced[ALPHA == 0]).mean() > 5


@pytest.mark.parametrize("name", list(REFUSED))
def test_inputs_without_transparency_are_refused(setup: dict, name: str) -> None:
    error = setup["results"][name]
    assert isinstance(error, JobError)
    assert error.code is ErrorCode.INVALID_INPUT
    assert "transparent" in error.message


def test_deep_fusion_matches_two_direct_passes(setup: dict) -> None:
    assert_same(_images(setup, "deep"), direct(setup["ref"], DEEP))


def test_deep_fusion_repaints_near_the_edge(setup: dict) -> None:
    near_edge = np.asarray(dilate(Image.fromarray(OPAQUE.astype(np.uint8) * 255), 3)) > 0
    near_edge &= ~OPAQUE
    for plain, fused in zip(_images(setup, "job"), _images(setup, "deep"), strict=True):
        diff = np.abs(pixels(plain) - pixels(fused)).max(axis=-1)
        assert (diff[near_edge] > 0).mean() > 0.5
        assert (diff[OPAQUE] == 0).all()


def test_deep_fusion_reports_the_steps_of_both_passes(setup: dict) -> None:
    counts: list[int] = []
    expected = direct(setup["ref"], DEEP, counts)
    assert len(counts) == 2 and min(counts) > 0
    total = sum(counts)
    reported: list[tuple[int, int]] = []
    context = RunContext(report_step=lambda step, of: reported.append((step, of)))
    with torch.inference_mode():
        (images,) = background.run(setup["ref"], [DEEP], context)
    assert reported == [(step, total) for step in range(1, total + 1)]
    assert_same(images, expected)
