"""Parity through the server: each PICPIK generation action, called over HTTP with the official
request shape, gives the pixels of the equivalent direct diffusers call on the same files.

One models directory holds a tiny single-file SD 1.x checkpoint and one component of every kind
(IP-Adapter + image encoder, ControlNet, LoRA, embedding, hypernetwork), written in the real
formats. The references are built here from diffusers' public API alone (plus the documented
PICPIK semantics of docs/picpik.md: mask fitting, blur, compositing), not from easel's code.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

from models.loader import load_pipeline
from models.registry import build_catalogue
from pipelines.engine import Engine, EngineConfig
from server.app import build_app
from server.settings import Settings
from tests.models import tiny
from tests.models.tiny_ip_adapter import (
    ip_adapter_state,
    save_image_encoder,
    save_ip_adapter,
    tiny_image_encoder,
)
from tests.picpik_client import PicpikClient

STEPS, CFG = 6, 7.5  # PICPIK's minimum steps; its default CFGScale
MAIN = {"ModelCode": "tiny", "InferenceParams": {"Steps": STEPS}}


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def generators(seed: int, count: int = 1) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    pipe = tiny.tiny_sd1_pipeline(tmp_path_factory.mktemp("tokenizers"))
    tiny.save_single_file(pipe, root / "checkpoints" / "tiny.safetensors")
    tiny.save_config_dir(pipe, root / "configs" / "tiny", like="sd15")
    (root / "manifest.toml").write_text(
        '[models."checkpoints/tiny.safetensors"]\nconfig = "configs/tiny"\n'
    )
    adapter = ip_adapter_state(pipe.unet, image_embed_dim=32, seed=7)
    save_ip_adapter(adapter, root / "ipadapter" / "ip-adapter_sd15.safetensors")
    save_image_encoder(tiny_image_encoder(projection_dim=32), root / "clip_vision" / "vit-h")
    return root


@pytest.fixture(scope="module")
def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PicpikClient]:
    data = tmp_path_factory.mktemp("data")
    engine, _ = Engine.open(models_dir, data, EngineConfig(devices=["cpu"]))
    with TestClient(build_app(Settings(data_dir=data), engine)) as http:
        yield PicpikClient(http)


@pytest.fixture(scope="module")
def base(models_dir: Path) -> StableDiffusionPipeline:
    """The checkpoint loaded from the same file, the Euler sampler PICPIK defaults to."""
    catalogue = build_catalogue(models_dir, demo_root=None).catalogue
    pipe = load_pipeline(catalogue.resolve("tiny"), device="cpu", dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


def run(client: PicpikClient, action: str, **params: object) -> list[np.ndarray]:
    reply = client.call(action, **params)
    assert reply["RetCode"] == 0, reply
    detail = client.wait(reply["TaskUID"])
    assert detail["Status"] == "Finished", detail
    images = []
    for url in detail["ImgList"]:
        response = client.http.get(url)
        assert response.status_code == 200
        images.append(np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")))
    return images


def assert_same(server: list[np.ndarray], direct: list[Image.Image]) -> None:
    assert len(server) == len(direct)
    for got, want in zip(server, direct, strict=True):
        assert np.array_equal(got, np.asarray(want))


# --- ApplyReferenceStyle -------------------------------------------------------------------------


def test_apply_reference_style_is_img2img_with_the_ip_adapter(
    client: PicpikClient, base: StableDiffusionPipeline, models_dir: Path
) -> None:
    raw, style = picture(1), picture(2, (40, 48))
    got = run(
        client,
        "ApplyReferenceStyle",
        MainModel=MAIN,
        PositivePrompts=["an apple"],
        RawImageIndex=0,
        StyleImageIndex=1,
        StyleReferStrength=0.7,
        Seed=11,
        BatchSize=2,
        ImageList=[b64(raw), b64(style)],
    )
    pipe = StableDiffusionImg2ImgPipeline(**base.components)
    pipe.load_ip_adapter(
        str(models_dir),
        subfolder="ipadapter",
        weight_name="ip-adapter_sd15.safetensors",
        image_encoder_folder="clip_vision/vit-h",
    )
    pipe.set_ip_adapter_scale(0.7)
    try:
        want = pipe(
            prompt="an apple",
            image=raw,
            strength=0.75,  # docs/picpik.md: the raw image is redrawn at 0.75
            ip_adapter_image=style,
            num_inference_steps=STEPS,
            guidance_scale=CFG,
            num_images_per_prompt=2,
            generator=generators(11, 2),
        ).images
    finally:
        pipe.unload_ip_adapter()
    assert_same(got, want)


# --- ModifyMaskedPixels --------------------------------------------------------------------------


def square_mask(size: int = 64, box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


def composite(generated: Image.Image, canvas: Image.Image, blurred: Image.Image) -> np.ndarray:
    m = np.asarray(blurred, np.float64)[..., None] / 255.0
    mixed = np.asarray(generated, np.float64) * m + np.asarray(canvas, np.float64) * (1 - m)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def test_modify_masked_pixels_is_diffusers_inpainting_blended_through_the_blurred_mask(
    client: PicpikClient, base: StableDiffusionPipeline
) -> None:
    raw = picture(3)
    got = run(
        client,
        "ModifyMaskedPixels",
        MainModel=MAIN,
        PositivePrompts=["a window"],
        Masked={"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 4, "ReferStrength": 1},
        Seed=5,
        ImageAndMaskList=[b64(raw), b64(square_mask())],
    )
    blurred = square_mask().filter(ImageFilter.GaussianBlur(4))
    pipe = StableDiffusionInpaintPipeline(**base.components)
    generated = pipe(
        prompt="a window",
        image=raw,
        mask_image=blurred,
        strength=0.75,  # ReferStrength 1
        width=64,
        height=64,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=generators(5),
    ).images[0]
    want = composite(generated, raw, blurred)
    assert np.array_equal(got[0], want)
    # Outside the blurred mask the raw pixels stay, bit for bit; inside they were redrawn.
    outside = np.asarray(blurred) == 0
    assert outside.sum() > 0
    assert np.array_equal(got[0][outside], np.asarray(raw)[outside])
    inside = np.asarray(blurred) == 255
    assert not np.array_equal(got[0][inside], np.asarray(raw)[inside])


def test_inverted_mask_redraws_the_other_part(client: PicpikClient) -> None:
    raw = picture(4)
    mask = square_mask()
    got = run(
        client,
        "ModifyMaskedPixels",
        MainModel=MAIN,
        Masked={"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 0, "InvertMask": True},
        Seed=5,
        ImageAndMaskList=[b64(raw), b64(mask)],
    )[0]
    kept = np.asarray(mask) == 255  # white in the mask = kept once inverted
    assert np.array_equal(got[kept], np.asarray(raw)[kept])
    assert not np.array_equal(got[~kept], np.asarray(raw)[~kept])


def test_outpainting_keeps_the_raw_image_and_draws_the_border(client: PicpikClient) -> None:
    raw = picture(6, (48, 48))
    got = run(
        client,
        "ModifyMaskedPixels",
        MainModel=MAIN,
        Masked={"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 0},
        Width=64,
        Height=64,
        Seed=9,
        ImageAndMaskList=[b64(raw), b64(Image.new("L", (48, 48), 0))],  # nothing masked inside
    )[0]
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got[8:56, 8:56], np.asarray(raw))  # centred, untouched
    border = np.ones((64, 64), bool)
    border[8:56, 8:56] = False
    edge_extended = np.pad(np.asarray(raw), ((8, 8), (8, 8), (0, 0)), mode="edge")
    assert not np.array_equal(got[border], edge_extended[border])


def test_masked_size_defaults_to_the_raw_images(client: PicpikClient) -> None:
    raw = picture(7, (72, 80))
    got = run(
        client,
        "ModifyMaskedPixels",
        MainModel=MAIN,
        Masked={"ImageIndex": 0, "MaskIndex": 1},
        ImageAndMaskList=[b64(raw), b64(square_mask(72))],
    )
    assert got[0].shape == (80, 72, 3)
