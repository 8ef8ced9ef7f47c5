"""Tileable jobs: circular padding in the UNet and the VAE for the job only.

What seamless means, tested directly: with circular padding the image has no edge, so shifting
the starting noise by 4 latent pixels shifts the whole picture by 32 image pixels, the wrap-around
seam landing in the middle unchanged. (Comparing the seam's pixel differences with the interior's,
as one would on a real model, says nothing here: the tiny random model draws near-white noise
whose neighbouring pixels differ about as much everywhere, tileable or not.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from torch import nn

from pipelines.adapters import tiling
from pipelines.jobs import GenerationJob, JobKind, JobResult
from pipelines.runners.common import RunContext
from tests.engine_harness import run_jobs
from tests.models.tiny import tiny_vae
from tests.pipelines.masked_support import (
    SD1,
    assert_same,
    generators,
    load_reference,
    make_models_dir,
    one_torch_thread,
    pixels,
)

SIZE = 64
SHIFT = 4  # latent pixels: 32 image pixels
PLAIN = GenerationJob(
    kind=JobKind.TXT2IMG,
    model=SD1,
    prompt="a brick wall",
    width=SIZE,
    height=SIZE,
    steps=3,
    guidance_scale=5.0,
    seeds=(31, 32),
)
TILED = replace(PLAIN, tileable=True)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiling")
    models = make_models_dir(root, [SD1])
    results = run_jobs(models, root / "data", [PLAIN, TILED, PLAIN])
    for result in results:
        assert isinstance(result, JobResult), result
    plain, tiled, after = (r.images for r in results)
    return {
        "plain": plain,
        "tiled": tiled,
        "after": after,
        "ref": load_reference(models, SD1, root / "cache"),
    }


@contextmanager
def circular_by_hand(*models: nn.Module) -> Iterator[None]:
    """The seamless trick written out independently of pipelines.adapters.tiling."""
    convs = [m for model in models for m in model.modules() if isinstance(m, nn.Conv2d)]
    saved = [c.padding_mode for c in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, saved, strict=True):
            conv.padding_mode = mode


def direct(ref: DiffusionPipeline, job: GenerationJob, **kwargs: object) -> list:
    pipe = StableDiffusionPipeline(**ref.components)
    pipe.scheduler = type(ref.scheduler).from_config(ref.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=job.prompt,
        width=job.width,
        height=job.height,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=job.num_images,
        generator=generators(job.seeds),
        **kwargs,
    ).images


def _shifted_noise(job: GenerationJob) -> torch.Tensor:
    """The starting latents diffusers draws for the job's seeds, rolled SHIFT latent pixels."""
    noise = torch.cat(
        [torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=g) for g in generators(job.seeds)]
    )
    return torch.roll(noise, shifts=(SHIFT, SHIFT), dims=(2, 3))


def test_tileable_matches_the_direct_call_with_circular_padding(setup: dict) -> None:
    ref = setup["ref"]
    with circular_by_hand(ref.unet, ref.vae):
        expected = direct(ref, TILED)
    assert_same(setup["tiled"], expected)
    assert not np.array_equal(pixels(setup["tiled"][0]), pixels(setup["plain"][0]))


def test_plain_jobs_before_and_after_are_untouched(setup: dict) -> None:
    assert_same(setup["plain"], direct(setup["ref"], PLAIN))
    assert_same(setup["after"], setup["plain"])


def test_tileable_image_wraps_around(setup: dict) -> None:
    """Shifted noise gives the same picture shifted: the wrap seam is like any interior line."""
    ref = setup["ref"]
    with circular_by_hand(ref.unet, ref.vae):
        shifted = direct(ref, TILED, latents=_shifted_noise(TILED))
    for image, moved in zip(setup["tiled"], shifted, strict=True):
        rolled = np.roll(pixels(image), (8 * SHIFT, 8 * SHIFT), axis=(0, 1))
        assert np.abs(rolled - pixels(moved)).max() <= 2
    # Without circular padding the borders are real edges: the same shift changes the picture.
    moved_plain = direct(ref, PLAIN, latents=_shifted_noise(PLAIN))
    rolled = np.roll(pixels(setup["plain"][0]), (8 * SHIFT, 8 * SHIFT), axis=(0, 1))
    assert np.abs(rolled - pixels(moved_plain[0])).mean() > 5


def test_padding_is_restored_on_errors_and_the_server_vae_is_patched(setup: dict) -> None:
    pipe, server_vae = setup["ref"], tiny_vae(seed=42)
    models = (pipe.unet, pipe.vae, server_vae)
    before = [[m.padding_mode for m in x.modules() if isinstance(m, nn.Conv2d)] for x in models]
    context = RunContext(report_step=lambda step, total: None, vae=server_vae)
    with pytest.raises(RuntimeError, match="boom"):
        with tiling.applied(pipe, TILED, context):
            for model in models:
                padded = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.padding[0]]
                assert padded and all(m.padding_mode == "circular" for m in padded)
            raise RuntimeError("boom")
    after = [[m.padding_mode for m in x.modules() if isinstance(m, nn.Conv2d)] for x in models]
    assert after == before
    with tiling.applied(pipe, PLAIN, context):
        modes = {m.padding_mode for m in pipe.unet.modules() if isinstance(m, nn.Conv2d)}
        assert modes == {"zeros"}
