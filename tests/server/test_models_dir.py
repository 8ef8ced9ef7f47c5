"""A real models directory behind the PICPIK API: a single-file checkpoint with a manifest, an
operator alias, and a server VAE chosen by UseMainModelVAE. Parity with direct diffusers calls."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from fastapi.testclient import TestClient
from PIL import Image

from models.compat import apply_compat
from models.tokenizer import clip_tokenizer
from pipelines.engine import Engine, EngineConfig
from server.app import build_app
from server.picpik.errors import TaskErrorCode
from server.settings import Settings
from tests.demo_set import link_demo_set
from tests.models.tiny import (
    save_config_dir,
    save_single_file,
    tiny_sd1_pipeline,
    tiny_sdxl_pipeline,
    tiny_vae,
)
from tests.picpik_client import PicpikClient

MANIFEST = """
default = "tiny_sd1"

[aliases]
"PICPIK Anime" = "tiny_sd1"

[models."checkpoints/XL-and-friends/tiny_sd1.safetensors"]
name = "Tiny SD1"
config = "configs/tiny-sd1"
trigger_words = ["tinystyle"]

[models."checkpoints/tiny_sdxl.safetensors"]
config = "configs/tiny-sdxl"

[models."checkpoints/XL-and-friends/tiny_sd1.safetensors".defaults]
steps = 7
sampler = "Euler"
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StableDiffusionPipeline]:
    """A models directory, and the reference: the same file loaded by diffusers directly."""
    root = tmp_path_factory.mktemp("models-dir")
    models = root / "models"
    pipe = tiny_sd1_pipeline(root / "tokenizers")
    checkpoint = models / "Stable-diffusion" / "XL-and-friends" / "tiny_sd1.safetensors"
    save_single_file(pipe, checkpoint)
    save_config_dir(pipe, models / "configs" / "tiny-sd1", like="sd15")
    tiny_vae(seed=42).save_pretrained(models / "VAE" / "server-vae")
    (models / "manifest.toml").write_text(
        MANIFEST.replace("checkpoints/XL-and-friends", "Stable-diffusion/XL-and-friends")
    )
    xl = tiny_sdxl_pipeline(root / "tokenizers")
    save_single_file(xl, models / "checkpoints" / "tiny_sdxl.safetensors")
    save_config_dir(xl, models / "configs" / "tiny-sdxl", like="sdxl")
    broken = models / "checkpoints" / "broken"
    tiny_sd1_pipeline(root / "tokenizers").save_pretrained(broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()  # scans as a checkpoint, fails to load
    reference = StableDiffusionPipeline.from_single_file(
        str(checkpoint),
        config=str(models / "configs" / "tiny-sd1"),
        local_files_only=True,
        tokenizer=pipe.tokenizer,
        feature_extractor=None,
        image_encoder=None,
        safety_checker=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    return models, apply_compat(reference)


@pytest.fixture()
def client(installed, tmp_path: Path):
    models_dir, _ = installed
    data_dir = link_demo_set(tmp_path / "data")
    engine, notes = Engine.open(
        models_dir, data_dir, EngineConfig(devices=["cpu"], cache_dir=tmp_path)
    )
    assert notes == []
    with TestClient(build_app(Settings(data_dir=tmp_path / "data"), engine)) as http:
        yield PicpikClient(http)


def _images(client: PicpikClient, detail: dict) -> list[np.ndarray]:
    assert detail["Status"] == "Finished", detail
    return [
        np.asarray(Image.open(io.BytesIO(client.http.get(url).content)).convert("RGB"))
        for url in detail["ImgList"]
    ]


def _direct(pipe: StableDiffusionPipeline, vae=None, seed: int = 5, **kwargs) -> list[np.ndarray]:
    kwargs.setdefault("generator", [torch.Generator().manual_seed(seed)])
    components = {**pipe.components, **({"vae": vae} if vae is not None else {})}
    direct = StableDiffusionPipeline(**components)
    direct.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    direct.set_progress_bar_config(disable=True)
    return [np.asarray(im) for im in direct(**kwargs).images]


def test_models_are_listed_with_their_manifest_data(client) -> None:
    models = client.call("ListModels")["MainModels"]
    tiny = models["Tiny SD1"]
    assert tiny["ModelCode"] == "tiny_sd1"
    assert tiny["TriggerWordList"] == ["tinystyle"]
    assert tiny["InferenceParams"]["Steps"] == 7
    assert models["PICPIK Anime"]["Description"].startswith("resolves to Tiny SD1")
    assert models["PICPIK General"]["Description"].startswith("resolves to Tiny SD1")
    assert "easel demo" in models


def test_alias_to_single_file_checkpoint_with_its_own_vae(client, installed) -> None:
    _, pipe = installed
    detail = client.generate(
        MainModel={"ModelCode": "PICPIK Anime"},  # manifest defaults: 7 steps, Euler
        PositivePrompts=["a tiny castle"],
        Width=64,
        Height=64,
        Seed=21,
        BatchSize=2,
        UseMainModelVAE=True,
    )
    direct = _direct(
        pipe,
        prompt="a tiny castle",
        width=64,
        height=64,
        num_inference_steps=7,
        guidance_scale=7.5,
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(s) for s in (21, 22)],
    )
    got = _images(client, detail)
    assert all(np.array_equal(a, b) for a, b in zip(got, direct, strict=True))


def test_server_vae_decodes_when_the_main_models_is_not_asked_for(client, installed) -> None:
    models_dir, pipe = installed
    params = dict(
        MainModel={"ModelCode": "tiny_sd1", "InferenceParams": {"Steps": 6}},
        PositivePrompts=["a tiny castle"],
        Width=64,
        Height=64,
        Seed=5,
    )
    server_vae = _images(client, client.generate(**params))  # UseMainModelVAE defaults to false
    own_vae = _images(client, client.generate(**params, UseMainModelVAE=True))
    call = dict(
        prompt="a tiny castle",
        width=64,
        height=64,
        num_inference_steps=6,
        guidance_scale=7.5,
    )
    vae = AutoencoderKL.from_pretrained(models_dir / "VAE" / "server-vae", local_files_only=True)
    assert np.array_equal(server_vae[0], _direct(pipe, vae=vae, **call)[0])
    assert np.array_equal(own_vae[0], _direct(pipe, **call)[0])
    assert not np.array_equal(server_vae[0], own_vae[0])


def test_sdxl_single_file_checkpoint(client, installed) -> None:
    models_dir = installed[0]
    detail = client.generate(
        MainModel={"ModelCode": "tiny_sdxl", "InferenceParams": {"Steps": 6, "CFGScale": 5}},
        PositivePrompts=["a tiny tower"],
        NegativePrompts=["fog"],
        Width=64,
        Height=64,
        Seed=8,
        BatchSize=2,
        UseMainModelVAE=True,
    )
    reference = StableDiffusionXLPipeline.from_single_file(
        str(models_dir / "checkpoints" / "tiny_sdxl.safetensors"),
        config=str(models_dir / "configs" / "tiny-sdxl"),
        local_files_only=True,
        tokenizer=clip_tokenizer(models_dir.parent / "tokenizers"),
        tokenizer_2=clip_tokenizer(models_dir.parent / "tokenizers", pad_token="!"),
    )
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = EulerDiscreteScheduler.from_config(reference.scheduler.config)
    direct = reference(
        prompt="a tiny tower",
        negative_prompt="fog",
        width=64,
        height=64,
        num_inference_steps=6,
        guidance_scale=5.0,
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(s) for s in (8, 9)],
    ).images
    got = _images(client, detail)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(got, direct, strict=True))


def test_a_model_that_fails_to_load_ends_its_task_only(client) -> None:
    detail = client.generate(
        MainModel={"ModelCode": "broken", "InferenceParams": {"Steps": 6}},
        PositivePrompts=["x"],
        Width=64,
        Height=64,
    )
    assert (detail["Status"], detail["ErrorCode"]) == ("Error", TaskErrorCode.MODEL_UNAVAILABLE)
    assert "broken" in detail["ErrorMassage"]
    healthy = client.generate(
        MainModel={"ModelCode": "tiny_sd1", "InferenceParams": {"Steps": 6}},
        PositivePrompts=["x"],
        Width=64,
        Height=64,
    )
    assert healthy["Status"] == "Finished"
