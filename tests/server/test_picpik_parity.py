"""Parity: GenerateImages through the server gives the pixels of the direct diffusers call.

Same model (the demo checkpoint), same seeds (image i of a batch uses Seed + i), same sampler;
the PNGs the server writes are lossless, so the comparison is exact.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from tests.parity import assert_same_images, png_data_uri, seeded_generators
from tests.picpik_client import PicpikClient


def _download(client: PicpikClient, detail: dict) -> list[np.ndarray]:
    assert detail["Status"] == "Finished", detail
    images = []
    for url in detail["ImgList"]:
        response = client.http.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        images.append(np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")))
    return images


def test_txt2img_batch_matches_diffusers(make_client, reference) -> None:
    client = PicpikClient(make_client())
    detail = client.generate(
        MainModel={"ModelCode": "PICPIK General", "InferenceParams": {"Steps": 6, "CFGScale": 5}},
        PositivePrompts=["a red fox", "in the snow"],
        NegativePrompts=["blurry"],
        Width=64,
        Height=96,
        Seed=1234,
        BatchSize=3,
    )
    assert detail["Seed"] == 1234
    assert detail["Progress"] == 1.0
    pipe = StableDiffusionPipeline(**reference.components)
    pipe.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config)
    direct = pipe(
        prompt="a red fox, in the snow",
        negative_prompt="blurry",
        width=64,
        height=96,
        num_inference_steps=6,
        guidance_scale=5.0,
        num_images_per_prompt=3,
        generator=seeded_generators(1234, 3),
    ).images
    assert_same_images(_download(client, detail), direct)


def test_txt2img_sampler_clip_skip_and_rounded_size(make_client, reference) -> None:
    client = PicpikClient(make_client())
    detail = client.generate(
        MainModel={
            "ModelCode": "easel-demo",
            "InferenceParams": {"Steps": 7, "Sampler": "DPM++ 2M Karras", "ClipSkip": 2},
        },
        PositivePrompts=["a lighthouse"],
        Width=70,  # rounded to the nearest multiple of 8: 72
        Height=67,  # -> 64
        Seed=7,
    )
    pipe = StableDiffusionPipeline(**reference.components)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        reference.scheduler.config, use_karras_sigmas=True
    )
    direct = pipe(
        prompt="a lighthouse",
        width=72,
        height=64,
        num_inference_steps=7,
        guidance_scale=7.5,
        generator=seeded_generators(7, 1),
        clip_skip=1,  # A1111 ClipSkip 2 = diffusers clip_skip 1
    ).images
    assert_same_images(_download(client, detail), direct)


def test_random_seed_is_reported_and_reproduces(make_client, reference) -> None:
    client = PicpikClient(make_client())
    detail = client.generate(
        MainModel={"InferenceParams": {"Steps": 6}},
        PositivePrompts=["x"],
        Width=64,
        Height=64,
        Seed=-1,
        BatchSize=2,
    )
    seed = detail["Seed"]
    assert 0 <= seed <= 2147483647
    pipe = StableDiffusionPipeline(**reference.components)
    pipe.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config)
    direct = pipe(
        prompt="x",
        width=64,
        height=64,
        num_inference_steps=6,
        guidance_scale=7.5,
        num_images_per_prompt=2,
        generator=seeded_generators(seed, 2),
    ).images
    assert_same_images(_download(client, detail), direct)


def test_img2img_batch_matches_diffusers(make_client, reference) -> None:
    client = PicpikClient(make_client())
    init = Image.effect_noise((64, 64), 80).convert("RGB")
    detail = client.generate(
        MainModel={"InferenceParams": {"Steps": 10}},
        PositivePrompts=["a painting"],
        Image2Image={"ImageIndex": 1, "ReferStrength": 0.3},
        ImageAndMaskList=["", png_data_uri(init)],
        Width=64,
        Height=64,
        Seed=99,
        BatchSize=2,
    )
    pipe = StableDiffusionImg2ImgPipeline(**reference.components)
    pipe.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config)
    direct = pipe(
        prompt="a painting",
        image=init,
        strength=0.7,  # ReferStrength 0.3: keep 30% of the reference
        num_inference_steps=10,
        guidance_scale=7.5,
        num_images_per_prompt=2,
        generator=seeded_generators(99, 2),
    ).images
    assert_same_images(_download(client, detail), direct)


def test_img2img_just_resize_fits_the_reference_first(make_client, reference) -> None:
    client = PicpikClient(make_client())
    init = Image.effect_noise((100, 50), 80).convert("RGB")
    detail = client.generate(
        MainModel={"InferenceParams": {"Steps": 8}},
        PositivePrompts=["a boat"],
        Image2Image={"ImageIndex": 0, "ReferStrength": 0.5, "ResizeMode": "JustResize"},
        ImageAndMaskList=[png_data_uri(init)],
        Width=64,
        Height=64,
        Seed=3,
    )
    pipe = StableDiffusionImg2ImgPipeline(**reference.components)
    pipe.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config)
    direct = pipe(
        prompt="a boat",
        image=init.resize((64, 64), Image.Resampling.LANCZOS),
        strength=0.5,
        num_inference_steps=8,
        guidance_scale=7.5,
        generator=seeded_generators(3, 1),
    ).images
    assert_same_images(_download(client, detail), direct)


def test_full_refer_strength_returns_the_fitted_reference(make_client) -> None:
    client = PicpikClient(make_client())
    init = Image.effect_noise((64, 64), 80).convert("RGB")
    detail = client.generate(
        PositivePrompts=["unused"],
        Image2Image={"ImageIndex": 0, "ReferStrength": 1},
        ImageAndMaskList=[png_data_uri(init)],
        Width=64,
        Height=64,
        BatchSize=2,
    )
    for got in _download(client, detail):
        assert np.array_equal(got, np.asarray(init))


# PICPIK Sampler name -> the diffusers scheduler class and config a user would set up by hand.
SAMPLER_CASES: list[tuple[str, str, dict]] = [
    ("Euler a", "EulerAncestralDiscreteScheduler", {}),
    ("DDIM", "DDIMScheduler", {"clip_sample": False}),  # as SD's own scheduler config says
    ("UniPC", "UniPCMultistepScheduler", {}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    (
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    ("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}),
]


@pytest.fixture(scope="module")
def sampler_client(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from fastapi.testclient import TestClient

    from tests.conftest import demo_app

    with TestClient(demo_app(demo_dir, tmp_path_factory.mktemp("samplers"))) as client:
        yield PicpikClient(client)


@pytest.mark.parametrize(("name", "scheduler", "options"), SAMPLER_CASES)
def test_sampler_names_match_their_diffusers_schedulers(
    sampler_client: PicpikClient, reference, name: str, scheduler: str, options: dict
) -> None:
    import diffusers

    detail = sampler_client.generate(
        MainModel={"InferenceParams": {"Steps": 6, "Sampler": name}},
        PositivePrompts=["a tree"],
        Width=64,
        Height=64,
        Seed=3,
    )
    pipe = StableDiffusionPipeline(**reference.components)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(
        reference.scheduler.config, **options
    )
    direct = pipe(
        prompt="a tree",
        width=64,
        height=64,
        num_inference_steps=6,
        guidance_scale=7.5,
        generator=seeded_generators(3, 1),
    ).images
    assert_same_images(_download(sampler_client, detail), direct)
