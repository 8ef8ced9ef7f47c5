"""Inpaint / outpaint jobs through a real engine: parity with the direct diffusers inpaint call
(same canvas and blurred mask from pipelines.masking, same seeds and scheduler) followed by the same
compositing, with a regular checkpoint, its 9-channel inpainting variant, and SDXL; plus what the
compositing guarantees: pixels outside the blurred mask are the input's, bit for bit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from diffusers import (
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
)
from PIL import Image

from pipelines.imaging import fit_image
from pipelines.jobs import GenerationJob, JobKind, JobResult, ResizeMode
from pipelines.masking import composite, inpaint_canvas
from tests.engine_harness import run_jobs
from tests.pipelines.masked_support import (
    SD1,
    SD1_INPAINTING,
    SDXL,
    assert_same,
    generators,
    load_reference,
    make_models_dir,
    noise_image,
    one_torch_thread,
    pixels,
)

SIZE = 64
RAW = noise_image((SIZE, SIZE), 1)
SMALL_RAW = noise_image((48, 48), 2)
FILL = noise_image((32, 32), 3)
MASK = Image.new("L", (SIZE, SIZE), 0)
MASK.paste(255, (20, 16, 44, 40))
BLACK = Image.new("L", (48, 48), 0)

JOB = GenerationJob(
    kind=JobKind.INPAINT,
    model=SD1,
    prompt="a red apple",
    negative_prompt="blurry",
    width=SIZE,
    height=SIZE,
    steps=4,
    guidance_scale=5.0,
    seeds=(11, 12),
    init_image=RAW,
    mask=MASK,
    mask_blur=4,
    strength=0.75,
)
SHARP = replace(JOB, mask_blur=0)
FILLED = replace(JOB, fill_image=FILL, resize_mode=ResizeMode.JUST_RESIZE)
OUTPAINT = replace(JOB, init_image=SMALL_RAW, mask=BLACK, mask_blur=0, strength=1.0)
NO_STEP = replace(JOB, strength=0.2)  # int(4 * 0.2) = 0 denoising steps
SINGLE = replace(JOB, seeds=(12,))
XL = replace(JOB, model=SDXL, seeds=(7,), steps=3)
JOBS = {
    "job": JOB,
    "sharp": SHARP,
    "filled": FILLED,
    "outpaint": OUTPAINT,
    "no_step": NO_STEP,
    "single": SINGLE,
    "xl": XL,
}

INPAINT_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "StableDiffusionPipeline": StableDiffusionInpaintPipeline,
    "StableDiffusionInpaintPipeline": StableDiffusionInpaintPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLInpaintPipeline,
}


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("inpaint")
    plain = make_models_dir(root / "plain", [SD1, SDXL])
    with_variant = make_models_dir(root / "variant", [SD1, SD1_INPAINTING])
    results = run_jobs(plain, root / "data", list(JOBS.values()))
    (variant_result,) = run_jobs(with_variant, root / "data", [JOB])
    for result in [*results, variant_result]:
        assert isinstance(result, JobResult), result
    return {
        "results": {name: r.images for name, r in zip(JOBS, results, strict=True)},
        "variant": variant_result.images,
        "refs": {
            SD1: load_reference(plain, SD1, root / "cache"),
            SDXL: load_reference(plain, SDXL, root / "cache"),
            SD1_INPAINTING: load_reference(with_variant, SD1_INPAINTING, root / "cache"),
        },
    }


def direct(ref: DiffusionPipeline, job: GenerationJob) -> list[Image.Image]:
    """The direct diffusers inpaint call for the job, composited like the engine does."""
    canvas = inpaint_canvas(job.init_image, job.mask, job.width, job.height, job.mask_blur)
    init = canvas.image
    if job.fill_image is not None:
        init = composite(
            fit_image(job.fill_image, job.width, job.height, job.resize_mode),
            canvas.image,
            canvas.blurred,
        )
    pipe = INPAINT_CLASSES[type(ref).__name__](**ref.components)
    pipe.scheduler = type(ref.scheduler).from_config(ref.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        image=[init] * job.num_images,
        mask_image=canvas.blurred,
        strength=job.strength,
        width=job.width,
        height=job.height,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=job.num_images,
        generator=generators(job.seeds),
    ).images
    return [composite(image, canvas.image, canvas.blurred) for image in out]


@pytest.mark.parametrize(
    ("name", "job"), [("job", JOB), ("filled", FILLED), ("outpaint", OUTPAINT)]
)
def test_matches_the_direct_inpaint_call(setup: dict, name: str, job: GenerationJob) -> None:
    assert_same(setup["results"][name], direct(setup["refs"][SD1], job))


def test_inpainting_variant_is_used_when_installed(setup: dict) -> None:
    assert setup["refs"][SD1_INPAINTING].unet.config.in_channels == 9
    assert_same(setup["variant"], direct(setup["refs"][SD1_INPAINTING], JOB))
    assert not np.array_equal(pixels(setup["variant"][0]), pixels(setup["results"]["job"][0]))


def test_sdxl_inpaint_matches_the_direct_call(setup: dict) -> None:
    assert_same(setup["results"]["xl"], direct(setup["refs"][SDXL], XL))


def test_pixels_outside_the_blurred_mask_are_the_input(setup: dict) -> None:
    blurred = np.asarray(inpaint_canvas(RAW, MASK, SIZE, SIZE, JOB.mask_blur).blurred)
    raw = pixels(RAW)
    for images in (setup["results"]["job"], setup["variant"]):
        for image in images:
            out = pixels(image)
            assert np.array_equal(out[blurred == 0], raw[blurred == 0])
            inside = np.abs(out[blurred == 255] - raw[blurred == 255])
            assert (inside.max(axis=-1) > 0).mean() > 0.9  # nearly every redrawn pixel changed
            assert inside.mean() > 10


def test_batch_images_depend_on_their_own_seed_only(setup: dict) -> None:
    assert_same(setup["results"]["single"], setup["results"]["job"][1:])
    job_images = setup["results"]["job"]
    assert not np.array_equal(pixels(job_images[0]), pixels(job_images[1]))


def test_outpainting_keeps_the_raw_image_and_redraws_the_border(setup: dict) -> None:
    canvas = pixels(inpaint_canvas(SMALL_RAW, BLACK, SIZE, SIZE, 0).image)
    border = np.ones((SIZE, SIZE), bool)
    border[8:56, 8:56] = False
    for image in setup["results"]["outpaint"]:
        out = pixels(image)
        assert np.array_equal(out[8:56, 8:56], pixels(SMALL_RAW))
        assert np.abs(out[border] - canvas[border]).mean() > 10


def test_mask_blur_widens_the_changed_area(setup: dict) -> None:
    raw = pixels(RAW)
    changed = {
        name: np.abs(pixels(setup["results"][name][0]) - raw).max(axis=-1) > 0
        for name in ("job", "sharp")
    }
    sharp = np.asarray(MASK) == 255
    assert np.array_equal(changed["sharp"], changed["sharp"] & sharp)  # only inside the mask
    assert changed["job"].sum() > changed["sharp"].sum() + 100
    assert (changed["job"] & ~sharp).sum() > 100  # the soft edge outside the sharp mask


def test_fill_image_changes_the_redrawn_area_only(setup: dict) -> None:
    blurred = np.asarray(inpaint_canvas(RAW, MASK, SIZE, SIZE, JOB.mask_blur).blurred)
    plain, filled = pixels(setup["results"]["job"][0]), pixels(setup["results"]["filled"][0])
    assert np.array_equal(plain[blurred == 0], filled[blurred == 0])
    assert np.abs(plain[blurred == 255] - filled[blurred == 255]).mean() > 1


def test_no_denoising_step_returns_the_canvas(setup: dict) -> None:
    assert_same(setup["results"]["no_step"], [RAW, RAW])
