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
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionControlNetPipeline,
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
from tests.demo_set import link_demo_set
from tests.models import tiny
from tests.models import tiny_submodels as sub
from tests.models.tiny_controlnet import (
    save_controlnet_config,
    save_controlnet_single_file,
    save_mlsd,
    tiny_sd1_controlnet,
)
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


def direct(pipe: Any, seed: int, count: int = 1, **call: Any) -> list[Image.Image]:
    """The direct diffusers call at the requests' Steps and PICPIK's default CFGScale; image i
    from seed + i, as the server draws a batch."""
    return pipe(
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        num_images_per_prompt=count,
        generator=generators(seed, count),
        **call,
    ).images


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    pipe = tiny.tiny_sd1_pipeline(tmp_path_factory.mktemp("tokenizers"))
    tiny.save_single_file(pipe, root / "checkpoints" / "tiny.safetensors")
    tiny.save_config_dir(pipe, root / "configs" / "tiny", like="sd15")
    (root / "manifest.toml").write_text(
        '[models."checkpoints/tiny.safetensors"]\nconfig = "configs/tiny"\n'
    )
    net = tiny_sd1_controlnet()
    save_controlnet_single_file(net, root / "controlnet" / "control_v11p_sd15_canny.safetensors")
    save_controlnet_config(net, root / "configs" / "canny")
    with (root / "manifest.toml").open("a") as manifest:
        manifest.write('[models."controlnet/control_v11p_sd15_canny.safetensors"]\n')
        manifest.write('config = "configs/canny"\n')
    save_mlsd(root / "annotators")
    sub.save_lora(
        sub.kohya_lora(pipe, seed=3),
        root / "loras" / "paper-cut.safetensors",
        tag_frequency={"10_papercut": {"papercut": 9, "paper": 4}},
    )
    sub.save_a1111_safetensors_embedding(
        root / "embeddings" / "shiny.safetensors", sub.embedding_vectors(32, 2, seed=1)
    )
    sub.save_hypernetwork(root / "hypernetworks" / "soft.pt", sub.hypernetwork_state([32, 64]))
    adapter = ip_adapter_state(pipe.unet, image_embed_dim=32, seed=7)
    save_ip_adapter(adapter, root / "ipadapter" / "ip-adapter_sd15.safetensors")
    save_image_encoder(tiny_image_encoder(projection_dim=32), root / "clip_vision" / "vit-h")
    return root


@pytest.fixture(scope="module")
def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PicpikClient]:
    data = link_demo_set(tmp_path_factory.mktemp("data"))
    engine, _ = Engine.open(models_dir, data, EngineConfig(devices=["cpu"]))
    with TestClient(build_app(Settings(data_dir=data), engine)) as http:
        yield PicpikClient(http)


def load_reference(models_dir: Path) -> StableDiffusionPipeline:
    """The checkpoint loaded from the same file, the Euler sampler PICPIK defaults to."""
    catalogue = build_catalogue(models_dir, demo_root=None).catalogue
    pipe = load_pipeline(catalogue.resolve("tiny"), device="cpu", dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def base(models_dir: Path) -> StableDiffusionPipeline:
    return load_reference(models_dir)


def with_ip_adapter(models_dir: Path, cls: type, scale: float):
    """A fresh reference with diffusers' own IP-Adapter loading (never the shared `base`)."""
    pipe = cls(**load_reference(models_dir).components)
    pipe.load_ip_adapter(
        str(models_dir),
        subfolder="ipadapter",
        weight_name="ip-adapter_sd15.safetensors",
        image_encoder_folder="clip_vision/vit-h",
    )
    pipe.set_ip_adapter_scale(scale)
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
    client: PicpikClient, models_dir: Path
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
    pipe = with_ip_adapter(models_dir, StableDiffusionImg2ImgPipeline, 0.7)
    want = direct(
        pipe,
        11,
        2,
        prompt="an apple",
        image=raw,
        strength=0.75,  # docs/picpik.md: the raw image is redrawn at 0.75
        ip_adapter_image=style,
    )
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
    generated = direct(
        pipe,
        5,
        prompt="a window",
        image=raw,
        mask_image=blurred,
        strength=0.75,  # ReferStrength 1
        width=64,
        height=64,
    )[0]
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


# --- GenerateBackgrounds -------------------------------------------------------------------------


def foreground(size: int = 64) -> Image.Image:
    """An opaque patterned square (hard edge) on a transparent canvas."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste(picture(8, (24, 24)).convert("RGBA"), (20, 16))
    return image


def alpha_over(front: Image.Image, back: Image.Image) -> np.ndarray:
    return np.asarray(Image.alpha_composite(back.convert("RGBA"), front).convert("RGB"))


@pytest.mark.parametrize("with_reference", [False, True])
def test_generate_backgrounds_is_diffusers_inpainting_under_the_foreground(
    client: PicpikClient, base: StableDiffusionPipeline, with_reference: bool
) -> None:
    front, reference = foreground(), picture(9)
    params: dict = {}
    if with_reference:
        params["BackgroundImage2Image"] = {"ImageIndex": 1, "ReferStrength": 0.4}
    got = run(
        client,
        "GenerateBackgrounds",
        MainModel=MAIN,
        PositivePrompts=["a beach"],
        TransparentForeground={"ImageIndex": 0},
        Seed=21,
        ImageList=[b64(front), b64(reference)],
        **params,
    )
    # docs/picpik.md: drawn from noise (strength 1) over grey, or from the reference at
    # 1 - ReferStrength; where the foreground is not opaque.
    under = reference if with_reference else Image.new("RGB", (64, 64), (128, 128, 128))
    alpha = np.asarray(front.getchannel("A"))
    mask = Image.fromarray(np.where(alpha < 255, 255, 0).astype(np.uint8))
    pipe = StableDiffusionInpaintPipeline(**base.components)
    generated = direct(
        pipe,
        21,
        prompt="a beach",
        image=Image.fromarray(alpha_over(front, under)),
        mask_image=mask,
        strength=0.6 if with_reference else 1.0,
        width=64,
        height=64,
    )[0]
    want = alpha_over(front, generated)
    assert np.array_equal(got[0], want)
    opaque = alpha == 255
    assert np.array_equal(got[0][opaque], np.asarray(front.convert("RGB"))[opaque])


def test_deep_fusion_keeps_the_foreground_exactly_and_changes_the_background(
    client: PicpikClient,
) -> None:
    front, reference = foreground(), picture(9)
    common = {
        "MainModel": MAIN,
        "TransparentForeground": {"ImageIndex": 0},
        "Seed": 4,
        "ImageList": [b64(front), b64(reference)],
    }
    plain = run(
        client,
        "GenerateBackgrounds",
        BackgroundImage2Image={"ImageIndex": 1, "ReferStrength": 0.3},
        **common,
    )[0]
    reply = client.call(
        "GenerateBackgrounds",
        BackgroundImage2Image={"ImageIndex": 1, "ReferStrength": 0.3, "DeepFusion": True},
        **common,
    )
    detail = client.wait(reply["TaskUID"])
    fused = np.asarray(
        Image.open(io.BytesIO(client.http.get(detail["ImgList"][0]).content)).convert("RGB")
    )
    opaque = np.asarray(front.getchannel("A")) == 255
    assert np.array_equal(fused[opaque], plain[opaque])
    assert not np.array_equal(fused[~opaque], plain[~opaque])
    # ceil(64 * 64 * 6 steps / 10^6) = 1 point, plus DeepFusion's ceil(6 * that pixel-steps) = 1
    assert detail["ConsumeApiPoint"] == 2


def test_an_ip_adapter_control_unit_is_a_style_reference(
    client: PicpikClient, models_dir: Path
) -> None:
    """A1111's ControlNet extension lists ip-adapter_sd15 as a control model: such a unit of
    GenerateImages is the IP-Adapter at scale ControlWeight."""
    style = picture(12)
    got = run(
        client,
        "GenerateImages",
        MainModel=MAIN,
        PositivePrompts=["a vase"],
        Width=64,
        Height=64,
        Seed=2,
        ControlNetList=[
            {
                "ImageIndex": 0,
                "ControlModel": {
                    "ModelCode": "ip-adapter_sd15",
                    "InferenceParams": {"ControlWeight": 0.8},
                },
            }
        ],
        ImageAndMaskList=[b64(style)],
    )
    pipe = with_ip_adapter(models_dir, StableDiffusionPipeline, 0.8)
    want = direct(
        pipe,
        2,
        prompt="a vase",
        ip_adapter_image=style,
        width=64,
        height=64,
    )
    assert_same(got, want)


# --- ControlNetList and ListControlNets ----------------------------------------------------------


def test_a_canny_control_unit_is_diffusers_controlnet_on_controlnet_auxs_map(
    client: PicpikClient, base: StableDiffusionPipeline, models_dir: Path
) -> None:
    from controlnet_aux import CannyDetector

    guide = picture(13)
    got = run(
        client,
        "GenerateImages",
        MainModel=MAIN,
        PositivePrompts=["a bridge"],
        Width=64,
        Height=64,
        Seed=8,
        ControlNetList=[
            {
                "ImageIndex": 0,
                "PreProcessor": {
                    "ModelCode": "canny",
                    "InferenceParams": {
                        "Resolution": 64,
                        "CannyLowThreshold": 50,
                        "CannyHighThreshold": 150,
                    },
                },
                "ControlModel": {
                    "ModelCode": "control_v11p_sd15_canny",
                    "InferenceParams": {
                        "ControlWeight": 0.7,
                        "StartingStep": 0.2,
                        "EndingStep": 0.8,
                        "ControlMode": "Balanced",
                    },
                },
            }
        ],
        ImageAndMaskList=[b64(guide)],
    )
    edges = CannyDetector()(
        guide,
        low_threshold=50,
        high_threshold=150,
        detect_resolution=64,
        image_resolution=64,
        output_type="pil",
    )
    controlnet = ControlNetModel.from_single_file(
        str(models_dir / "controlnet" / "control_v11p_sd15_canny.safetensors"),
        config=str(models_dir / "configs" / "canny"),
        local_files_only=True,
    )
    pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet)
    want = direct(
        pipe,
        8,
        prompt="a bridge",
        image=edges,
        controlnet_conditioning_scale=0.7,
        control_guidance_start=0.2,
        control_guidance_end=0.8,
        width=64,
        height=64,
    )
    assert_same(got, want)


def test_list_controlnets_shows_what_is_installed(client: PicpikClient) -> None:
    reply = client.call("ListControlNets")
    assert reply["RetCode"] == 0, reply
    models = reply["ControlModels"]
    assert models["control_v11p_sd15_canny"]["ModelCode"] == "control_v11p_sd15_canny"
    assert models["control_v11p_sd15_canny"]["InferenceParams"]["ControlWeight"] == 1
    preprocessors = reply["PreProcessors"]
    for code in ("canny", "shuffle", "lineart_standard", "mlsd"):  # mlsd: its file is installed
        assert preprocessors[code]["ModelCode"] == code
        assert preprocessors[code]["InferenceParams"]["Resolution"] == 512
    assert preprocessors["mlsd"]["InferenceParams"]["MLSDValueThreshold"] == 0.1
    assert "depth" not in preprocessors  # its weights are not installed


def test_a_preprocessor_without_its_weights_is_refused_naming_the_file(
    client: PicpikClient,
) -> None:
    reply = client.call(
        "GenerateImages",
        MainModel=MAIN,
        Width=64,
        Height=64,
        ControlNetList=[
            {
                "ImageIndex": 0,
                "PreProcessor": {"ModelCode": "depth"},
                "ControlModel": {"ModelCode": "control_v11p_sd15_canny"},
            }
        ],
        ImageAndMaskList=[b64(picture(1))],
    )
    assert reply["RetCode"] == 10030, reply
    assert "annotators" in reply["Message"] and ".pt" in reply["Message"], reply


# --- SubModelList and ListModels -----------------------------------------------------------------


def test_list_models_lists_the_sub_models_with_their_trigger_words(client: PicpikClient) -> None:
    reply = client.call("ListModels")
    assert reply["RetCode"] == 0, reply
    lora = reply["LoraModels"]["paper-cut"]
    assert lora["ModelCode"] == "paper-cut"
    assert lora["TriggerWordList"][:2] == ["papercut", "paper"]
    assert lora["InferenceParams"] == {"LoraWeight": 1}
    assert reply["EmbeddingModels"]["shiny"]["TriggerWordList"] == ["shiny"]
    assert reply["HypernetworkModels"]["soft"]["ModelCode"] == "soft"


def lora_reference(models_dir: Path) -> StableDiffusionPipeline:
    """A fresh reference without models.compat's `text_model` alias, which diffusers' LoRA
    loader misreads (it only serves clip skip, unused here)."""
    pipe = load_reference(models_dir)
    if vars(pipe.text_encoder).get("text_model") is pipe.text_encoder:
        del vars(pipe.text_encoder)["text_model"]
    return pipe


def test_a_lora_and_an_embedding_token_match_diffusers_and_leave_the_model_clean(
    client: PicpikClient, base: StableDiffusionPipeline, models_dir: Path
) -> None:
    request = {"MainModel": MAIN, "Width": 64, "Height": 64, "Seed": 17}
    before = run(client, "GenerateImages", PositivePrompts=["a fox"], **request)
    got = run(
        client,
        "GenerateImages",
        PositivePrompts=["a fox, shiny"],  # the embedding applies through its token
        SubModelList=[{"ModelCode": "paper-cut", "InferenceParams": {"LoraWeight": 0.6}}],
        **request,
    )
    after = run(client, "GenerateImages", PositivePrompts=["a fox"], **request)
    pipe = lora_reference(models_dir)
    pipe.load_lora_weights(str(models_dir / "loras" / "paper-cut.safetensors"), adapter_name="a")
    pipe.set_adapters(["a"], [0.6])
    pipe.load_textual_inversion(str(models_dir / "embeddings" / "shiny.safetensors"), token="shiny")
    want = direct(
        pipe,
        17,
        prompt="a fox, shiny",
        width=64,
        height=64,
    )
    assert_same(got, want)
    plain = direct(
        base,
        17,
        prompt="a fox",
        width=64,
        height=64,
    )
    assert_same(before, plain)
    assert_same(after, plain)  # the next task saw the clean model


def test_a_hypernetwork_changes_the_image_for_its_task_only(client: PicpikClient) -> None:
    request = {"MainModel": MAIN, "Width": 64, "Height": 64, "Seed": 19, "PositivePrompts": ["x"]}
    plain = run(client, "GenerateImages", **request)
    hyper = run(
        client,
        "GenerateImages",
        SubModelList=[{"ModelCode": "soft", "InferenceParams": {"LoraWeight": 1}}],
        **request,
    )
    zero = run(
        client,
        "GenerateImages",
        SubModelList=[{"ModelCode": "soft", "InferenceParams": {"LoraWeight": 0}}],
        **request,
    )
    assert not np.array_equal(hyper[0], plain[0])
    assert_same(zero, [Image.fromarray(plain[0])])
    assert_same(run(client, "GenerateImages", **request), [Image.fromarray(plain[0])])


# --- Tileable ------------------------------------------------------------------------------------


def test_tileable_is_diffusers_with_circular_padding_and_does_not_leak(
    client: PicpikClient, models_dir: Path
) -> None:
    request = {"MainModel": MAIN, "Width": 64, "Height": 64, "Seed": 23, "PositivePrompts": ["x"]}
    got = run(client, "GenerateImages", Tileable=True, **request)
    after = run(client, "GenerateImages", **request)
    pipe = load_reference(models_dir)
    plain = direct(
        pipe,
        23,
        prompt="x",
        width=64,
        height=64,
    )
    for module in [*pipe.unet.modules(), *pipe.vae.modules()]:
        if isinstance(module, torch.nn.Conv2d):
            module.padding_mode = "circular"
    tiled = direct(
        pipe,
        23,
        prompt="x",
        width=64,
        height=64,
    )
    assert_same(got, tiled)
    assert_same(after, plain)
    assert not np.array_equal(np.asarray(tiled[0]), np.asarray(plain[0]))


def test_prompts_more_important_draws_the_masked_area_from_noise(client: PicpikClient) -> None:
    """docs/picpik.md: PromptsMoreImportant means strength 1, as ReferStrength 0 does."""
    images = [b64(picture(3)), b64(square_mask())]
    masked = {"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 2}
    request = {"MainModel": MAIN, "Seed": 31, "ImageAndMaskList": images}
    prompt_first = run(
        client,
        "ModifyMaskedPixels",
        Masked={**masked, "ReferStrength": 2, "PromptsMoreImportant": True},
        **request,
    )
    from_noise = run(client, "ModifyMaskedPixels", Masked={**masked, "ReferStrength": 0}, **request)
    default = run(client, "ModifyMaskedPixels", Masked=masked, **request)
    assert_same(prompt_first, [Image.fromarray(from_noise[0])])
    assert not np.array_equal(default[0], from_noise[0])


def test_masked_redraw_with_a_control_unit_keeps_the_unmasked_pixels(
    client: PicpikClient,
) -> None:
    raw = picture(14)
    unit = {
        "ImageIndex": 0,
        "PreProcessor": {"ModelCode": "canny", "InferenceParams": {"Resolution": 64}},
        "ControlModel": {"ModelCode": "control_v11p_sd15_canny"},
    }
    request = {
        "MainModel": MAIN,
        "Masked": {"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 0},
        "Seed": 3,
        "ImageAndMaskList": [b64(raw), b64(square_mask())],
    }
    controlled = run(client, "ModifyMaskedPixels", ControlNetList=[unit], **request)[0]
    plain = run(client, "ModifyMaskedPixels", **request)[0]
    kept = np.asarray(square_mask()) == 0
    assert np.array_equal(controlled[kept], np.asarray(raw)[kept])
    assert not np.array_equal(controlled[~kept], plain[~kept])


@pytest.mark.parametrize(
    ("preprocessor", "code", "needle"),
    [
        ({"ModelCode": "sharpie"}, 10030, "unknown preprocessor 'sharpie'"),
        (
            {"ModelCode": "canny", "InferenceParams": {"MLSDValueThreshold": 0.2}},
            10010,
            "not a parameter of canny",
        ),
        (
            {"ModelCode": "mlsd", "InferenceParams": {"MLSDValueThreshold": "high"}},
            10010,
            "must be a number",
        ),
    ],
)
def test_bad_preprocessor_requests_name_the_problem(
    client: PicpikClient, preprocessor: dict, code: int, needle: str
) -> None:
    reply = client.call(
        "GenerateImages",
        MainModel=MAIN,
        Width=64,
        Height=64,
        ControlNetList=[
            {
                "ImageIndex": 0,
                "PreProcessor": preprocessor,
                "ControlModel": {"ModelCode": "control_v11p_sd15_canny"},
            }
        ],
        ImageAndMaskList=[b64(picture(1))],
    )
    assert reply["RetCode"] == code, reply
    assert needle in reply["Message"], reply
