"""Request-level batching: jobs with one REQUEST key run as one diffusers call with per-image
lists, and each job gets the images it gets alone.

Every test runs a few jobs that differ in what PER_JOB_FIELDS lets differ (prompts, negative
prompts, seeds, init images, masks, mask margins, outpaint paddings, fills, ControlNet maps, style
images) through a runner as one batch, then each job alone through the same runner, and compares.
A forward hook on the UNet records the batch size of every UNet call: one denoising loop over all
the batch's images (steps x one forward of 2 x images rows, CFG) is one pipeline call.

Tolerance. On the CPU the same image can come out slightly different when computed inside a
larger batch: the UNet's kernels split a bigger batch differently and add in another order (its
output for an image moves by ~1e-6 between batch sizes 2 and 8; the VAE's does not move). After
the denoising steps and the decode that leaves at most 1 pixel level (of 255) on these models,
and most images bit-identical; MAX_DIFF = 2 leaves room for other CPUs and thread counts.
Anything the batching could get wrong (another image's seed, prompt, map, mask or style image)
moves pixels by tens of levels: the jobs' pictures, and a job given another job's ControlNet map
or style image, differ by more than 10 x MAX_DIFF, and the tests check that they do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DiffusionPipeline
from PIL import Image

from models.cache import PipelineCache
from models.registry import build_catalogue
from pipelines.adapters import adapted
from pipelines.jobs import (
    ControlUnit,
    GenerationJob,
    JobKind,
    Padding,
    PromptWeighting,
    Refiner,
    StyleReference,
)
from pipelines.runners import RUNNERS
from pipelines.runners.common import Resources, RunContext
from tests.models.tiny import (
    save_config_dir,
    save_single_file,
    tiny_sd1_pipeline,
    tiny_sdxl_pipeline,
)
from tests.models.tiny_controlnet import save_controlnet_folder, tiny_sd1_controlnet
from tests.models.tiny_ip_adapter import (
    ip_adapter_state,
    save_image_encoder,
    save_ip_adapter,
    tiny_image_encoder,
)
from tests.models.tiny_refiner import save_refiner_single_file, tiny_sdxl_refiner
from tests.pipelines.masked_support import noise_image, one_torch_thread, pixels

SD1, SD1_INPAINTING, XL, XL_REFINER = "tiny", "tiny-inpainting", "xl", "xl-refiner"
CONTROLNET = "cn"
SIZE, STEPS = 64, 3
MAX_DIFF = 2  # pixel levels (measured: 1): see the module docstring

BASE = GenerationJob(
    kind=JobKind.TXT2IMG,
    model=SD1,
    prompt="a red house",
    negative_prompt="blurry",
    width=SIZE,
    height=SIZE,
    steps=STEPS,
    guidance_scale=5.0,
    seeds=(1, 2),
)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def map_sensitive_controlnet() -> ControlNetModel:
    """The tiny SD 1.x ControlNet with its hint encoder's convolutions (all but the last) at
    2.5 times their random weights: as built, the encoder squashes any map to nearly one constant,
    so a job given another job's map would draw the same picture and a mix-up could not show."""
    net = tiny_sd1_controlnet(10)
    hint = net.controlnet_cond_embedding
    with torch.no_grad():
        for conv in [hint.conv_in, *hint.blocks]:
            conv.weight.mul_(2.5)
    return net


def write_models(root: Path) -> Path:
    """Checkpoints (SD 1.x, its inpainting variant, SDXL and a refiner), a ControlNet, an
    IP-Adapter and its image encoder, laid out like a user's models directory."""
    models, tokenizers = root / "models", root / "tokenizers"
    checkpoints: dict[str, tuple[DiffusionPipeline, Any, str]] = {
        SD1: (tiny_sd1_pipeline(tokenizers), save_single_file, "sd15"),
        SD1_INPAINTING: (
            tiny_sd1_pipeline(tokenizers, inpainting=True),
            save_single_file,
            "sd15-inpaint",
        ),
        XL: (tiny_sdxl_pipeline(tokenizers), save_single_file, "sdxl"),
        XL_REFINER: (tiny_sdxl_refiner(tokenizers), save_refiner_single_file, "sdxl-refiner"),
    }
    manifest = []
    for code, (pipe, save, family) in checkpoints.items():
        save(pipe, models / "checkpoints" / f"{code}.safetensors")
        save_config_dir(pipe, models / "configs" / code, like=family)
        manifest.append(f'[models."checkpoints/{code}.safetensors"]\nconfig = "configs/{code}"\n')
    (models / "manifest.toml").write_text("\n".join(manifest))
    save_controlnet_folder(map_sensitive_controlnet(), models / "controlnet" / CONTROLNET)
    unet = checkpoints[SD1][0].unet
    adapter = ip_adapter_state(unet, image_embed_dim=32, seed=7)
    save_ip_adapter(adapter, models / "ipadapter" / "tiny-ip-adapter_sd15.safetensors")
    save_image_encoder(tiny_image_encoder(projection_dim=32), models / "clip_vision" / "tiny-vit-h")
    return models


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("request-batching")
    models = write_models(root)
    catalogue = build_catalogue(models, demo_root=None).catalogue
    cache = PipelineCache("cpu", torch.float32, max_models=4, cache_dir=root / "cache")
    with torch.inference_mode(False):
        pipes = {code: cache.get(catalogue.resolve(code)) for code in (SD1, SD1_INPAINTING, XL)}
    return {"pipes": pipes, "resources": Resources(catalogue, cache, models), "cache": cache}


def context(setup: dict[str, Any], reported: list[tuple[int, int]] | None = None) -> RunContext:
    def report(step: int, total: int) -> None:
        if reported is not None:
            reported.append((step, total))

    return RunContext(report, resources=setup["resources"])


def run(
    setup: dict[str, Any], code: str, jobs: Sequence[GenerationJob], ctx: RunContext | None = None
) -> list[list[Image.Image]]:
    """The jobs through their kind's runner as the worker runs a batch: the first job's adapters
    applied (the batch shares them), under inference mode."""
    pipe = setup["pipes"][code]
    ctx = ctx or context(setup)
    with torch.inference_mode(), adapted(pipe, jobs[0], ctx):
        return RUNNERS[jobs[0].kind](pipe, list(jobs), ctx)


@contextmanager
def unet_batches(pipe: DiffusionPipeline) -> Iterator[list[int]]:
    """The batch size of every forward of the pipeline's UNet while inside."""
    sizes: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        hook.remove()


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def runs(
    setup: dict[str, Any], code: str, jobs: Sequence[GenerationJob], ctx: RunContext | None = None
) -> tuple[list[list[Image.Image]], list[int]]:
    """run(), and the batch size of each UNet forward it made."""
    with unet_batches(setup["pipes"][code]) as sizes:
        images = run(setup, code, jobs, ctx)
    return images, sizes


@dataclass
class Alone:
    images: list[list[Image.Image]]  # per job
    forwards: list[list[int]]  # per job: its UNet forwards' batch sizes


def assert_as_alone(
    setup: dict[str, Any],
    code: str,
    jobs: Sequence[GenerationJob],
    batched: list[list[Image.Image]],
) -> Alone:
    """Each job's batched images equal its images alone (within MAX_DIFF). The jobs' pictures
    must differ from each other, or a mix-up could not show."""
    assert [len(images) for images in batched] == [job.num_images for job in jobs]
    alone = Alone([], [])
    for job in jobs:
        images, sizes = runs(setup, code, [job])
        alone.images.append(images[0])
        alone.forwards.append(sizes)
    diffs = [
        max_diff(got, want)
        for images, wants in zip(batched, alone.images, strict=True)
        for got, want in zip(images, wants, strict=True)
    ]
    assert max(diffs) <= MAX_DIFF, diffs
    firsts = [images[0] for images in alone.images]
    for i, first in enumerate(firsts):
        for other in firsts[i + 1 :]:
            assert max_diff(first, other) > 10 * MAX_DIFF  # the jobs draw different pictures
    return alone


def one_loop(sizes: list[int], jobs: Sequence[GenerationJob], alone: Alone) -> bool:
    """The batch's UNet forwards are one denoising loop over all its images (with CFG, twice
    the images as rows): as many forwards as one job alone makes, each with every image."""
    return sizes == [2 * images_of(jobs)] * len(alone.forwards[0])


def images_of(jobs: Sequence[GenerationJob]) -> int:
    return sum(job.num_images for job in jobs)


# --- txt2img with a ControlNet unit -------------------------------------------------------------


def unit(image: Image.Image) -> tuple[ControlUnit, ...]:
    return (ControlUnit(model=CONTROLNET, image=image, weight=0.8, end=0.9),)


def test_txt2img_with_controlnet_batch_equals_each_job_alone(setup: dict[str, Any]) -> None:
    jobs = [
        replace(BASE, controls=unit(noise_image((SIZE, SIZE), 1))),
        replace(BASE, prompt="a blue lake", seeds=(3,), controls=unit(noise_image((48, 80), 2))),
        replace(
            BASE,
            prompt="",
            negative_prompt="",
            seeds=(4,),
            controls=unit(noise_image((SIZE, SIZE), 3)),
        ),
    ]
    batched, sizes = runs(setup, SD1, jobs)
    alone = assert_as_alone(setup, SD1, jobs, batched)
    assert one_loop(sizes, jobs, alone), sizes
    # The map acts per job: the second job with the first one's map draws otherwise.
    swapped = run(setup, SD1, [replace(jobs[1], controls=jobs[0].controls)])[0]
    assert max_diff(swapped[0], alone.images[1][0]) > 10 * MAX_DIFF


# --- img2img with a style reference -------------------------------------------------------------


def test_img2img_with_style_batch_equals_each_job_alone(setup: dict[str, Any]) -> None:
    def styled(image: Image.Image) -> StyleReference:
        return StyleReference(image=image, strength=0.6)

    base = replace(BASE, kind=JobKind.IMG2IMG, strength=0.75)
    jobs = [
        replace(
            base, init_image=noise_image((SIZE, SIZE), 4), style=styled(noise_image((40, 48), 5))
        ),
        replace(
            base,
            prompt="a dark forest",
            seeds=(9,),
            init_image=noise_image((80, 64), 6),
            style=styled(noise_image((SIZE, SIZE), 7)),
        ),
    ]
    batched, sizes = runs(setup, SD1, jobs)
    alone = assert_as_alone(setup, SD1, jobs, batched)
    assert one_loop(sizes, jobs, alone), sizes
    # The style image acts per job: the second job with the first one's style draws otherwise.
    swapped = run(setup, SD1, [replace(jobs[1], style=jobs[0].style)])[0]
    assert max_diff(swapped[0], alone.images[1][0]) > 10 * MAX_DIFF


# --- inpaint: masks, a mask margin, an outpaint, a job with nothing to redraw --------------------


def box_mask(box: tuple[int, int, int, int], size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_inpaint_batch_equals_each_job_alone(setup: dict[str, Any]) -> None:
    base = replace(
        BASE, kind=JobKind.INPAINT, model=SD1_INPAINTING, strength=0.75, steps=4, mask_blur=4
    )
    raw = noise_image((SIZE, SIZE), 8)
    jobs = [
        replace(
            base,
            init_image=raw,
            mask=box_mask((20, 16, 44, 40)),
            fill_image=noise_image((32, 32), 9),
            controls=unit(noise_image((SIZE, SIZE), 10)),
        ),
        replace(
            base,
            prompt="a green door",
            seeds=(5,),
            init_image=noise_image((SIZE, SIZE), 11),
            mask=box_mask((8, 40, 24, 56)),
            mask_margin=6,
            controls=unit(noise_image((SIZE, SIZE), 12)),
        ),
        replace(
            base,
            prompt="a wide field",
            seeds=(6,),
            init_image=noise_image((40, 40), 13),
            mask=None,
            outpaint=Padding(left=16, top=8, right=8, bottom=16),
            controls=unit(noise_image((SIZE, SIZE), 14)),
        ),
    ]
    nothing = replace(jobs[0], mask=box_mask((0, 0, 0, 0)), seeds=(7,), fill_image=None)
    batched, sizes = runs(setup, SD1_INPAINTING, [*jobs, nothing])
    alone = assert_as_alone(setup, SD1_INPAINTING, jobs, batched[:3])
    # One loop over the three jobs' images; the empty mask's job did not join it.
    assert one_loop(sizes, jobs, alone), sizes
    assert [pixels(image).tolist() for image in batched[3]] == [pixels(raw).tolist()]


# --- background with deep fusion ----------------------------------------------------------------


def foreground(centre: tuple[int, int], seed: int) -> Image.Image:
    """An opaque disc of colour noise on a transparent background."""
    y, x = np.mgrid[:SIZE, :SIZE]
    alpha = np.where(np.hypot(x - centre[0], y - centre[1]) < 14, 255, 0).astype(np.uint8)
    return Image.fromarray(
        np.dstack([pixels(noise_image((SIZE, SIZE), seed)), alpha]).astype(np.uint8), "RGBA"
    )


def test_background_with_deep_fusion_batch_equals_each_job_alone(setup: dict[str, Any]) -> None:
    base = replace(BASE, kind=JobKind.BACKGROUND, strength=1.0, steps=4, deep_fusion=True)
    jobs = [
        replace(base, prompt="a beach", init_image=foreground((30, 30), 15)),
        replace(
            base,
            prompt="a city street",
            seeds=(8,),
            init_image=foreground((40, 24), 16),
            fill_image=noise_image((96, 64), 17),
        ),
    ]
    reported: list[tuple[int, int]] = []
    batched, sizes = runs(setup, SD1, jobs, context(setup, reported))
    alone = assert_as_alone(setup, SD1, jobs, batched)
    assert one_loop(sizes, jobs, alone), sizes  # both passes over every image of the batch
    total = reported[-1][1]
    assert total > 4 and reported == [(step, total) for step in range(1, total + 1)]


# --- an SDXL refiner -----------------------------------------------------------------------------


def test_txt2img_with_refiner_batch_equals_each_job_alone(setup: dict[str, Any]) -> None:
    base = replace(BASE, model=XL, steps=4, refiner=Refiner(model=XL_REFINER, start=0.5))
    jobs = [base, replace(base, prompt="a snowy peak", negative_prompt="", seeds=(3,))]
    with torch.inference_mode(False):
        refiner = setup["cache"].get(setup["resources"].catalogue.resolve(XL_REFINER))
    with unet_batches(refiner) as refined:
        batched, sizes = runs(setup, XL, jobs)
    alone = assert_as_alone(setup, XL, jobs, batched)
    assert one_loop(sizes, jobs, alone), sizes
    rows = 2 * images_of(jobs)
    assert refined and refined == [rows] * len(refined)  # the refiner's pass: one loop too


# --- weighted prompts of different lengths -----------------------------------------------------

LONG = ", ".join(f"word{i}" for i in range(40))  # more than 75 tokens: two chunks


def test_weighted_prompts_of_different_lengths_run_as_one_call_per_length(
    setup: dict[str, Any],
) -> None:
    """Embeddings of one length share a call; a longer prompt gets its own (padding it would
    change the picture). Progress runs on across both calls."""
    base = replace(BASE, prompt_weighting=PromptWeighting.SDEMBEDS)
    jobs = [
        replace(base, prompt="(a red:1.3) house"),
        replace(base, prompt=f"(a tower:1.2), {LONG}", seeds=(5,)),
        replace(base, prompt="[a calm] lake", negative_prompt="(ugly:1.4)", seeds=(6,)),
    ]
    reported: list[tuple[int, int]] = []
    batched, sizes = runs(setup, SD1, jobs, context(setup, reported))
    alone = assert_as_alone(setup, SD1, jobs, batched)
    loop = len(alone.forwards[0])
    short = 2 * (jobs[0].num_images + jobs[2].num_images)
    assert sizes == [short] * loop + [2 * jobs[1].num_images] * loop
    assert reported == [(step, 2 * loop) for step in range(1, 2 * loop + 1)]
