"""The bundled architecture configs are the real models' configs: checked by parameter counts.

Each UNet / VAE / text encoder is built from its bundled config on the meta device (no memory,
no weights) and must have exactly the published model's parameter count.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import diffusers
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from models.arch import detect_diffusers_pipeline
from models.loader import BUNDLED_CONFIGS, CONFIGS_DIR, PIPELINE_CLASSES, VAE_CONFIGS

SD15_UNET = 859_520_964
SDXL_UNET = 2_567_463_684
INPAINT_EXTRA = 5 * 320 * 3 * 3  # five more input channels into the first 320-channel conv
SD_VAE = 83_653_863
CLIP_L = 123_060_480
OPENCLIP_H_23_LAYERS = 340_387_840
OPENCLIP_BIGG_PROJECTION = 694_659_840
SD2_UNET = 865_910_724
SDXL_REFINER_UNET = 2_259_526_660  # + VAE + bigG in fp16: sd_xl_refiner_1.0 (6.08 GB)

EXPECTED: dict[tuple[str, str], int] = {
    ("sd15", "unet"): SD15_UNET,
    ("sd15", "vae"): SD_VAE,
    ("sd15", "text_encoder"): CLIP_L,
    ("sd15-inpaint", "unet"): SD15_UNET + INPAINT_EXTRA,
    ("sd15-inpaint", "vae"): SD_VAE,
    ("sd15-inpaint", "text_encoder"): CLIP_L,
    ("sd2", "unet"): SD2_UNET,
    ("sd2", "vae"): SD_VAE,
    ("sd2", "text_encoder"): OPENCLIP_H_23_LAYERS,
    ("sdxl", "unet"): SDXL_UNET,
    ("sdxl", "vae"): SD_VAE,
    ("sdxl", "text_encoder"): CLIP_L,
    ("sdxl", "text_encoder_2"): OPENCLIP_BIGG_PROJECTION,
    ("sdxl-inpaint", "unet"): SDXL_UNET + INPAINT_EXTRA,
    ("sdxl-inpaint", "vae"): SD_VAE,
    ("sdxl-inpaint", "text_encoder"): CLIP_L,
    ("sdxl-inpaint", "text_encoder_2"): OPENCLIP_BIGG_PROJECTION,
    ("sdxl-refiner", "unet"): SDXL_REFINER_UNET,
    ("sdxl-refiner", "vae"): SD_VAE,
    ("sdxl-refiner", "text_encoder_2"): OPENCLIP_BIGG_PROJECTION,
}


TEXT_MODELS: dict[str, type] = {
    "CLIPTextModel": CLIPTextModel,
    "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
}


def _diffusers_model(cls: type) -> Callable[[Path], torch.nn.Module]:
    return lambda path: cls.from_config(cls.load_config(path))


def _text_model(path: Path) -> torch.nn.Module:
    config = CLIPTextConfig.from_pretrained(path)
    return TEXT_MODELS[config.architectures[0]](config)


BUILDERS: dict[str, Callable[[Path], torch.nn.Module]] = {
    "unet": _diffusers_model(UNet2DConditionModel),
    "vae": _diffusers_model(AutoencoderKL),
    "text_encoder": _text_model,
    "text_encoder_2": _text_model,
}


def _count(folder: Path, component: str) -> int:
    with init_empty_weights():
        model = BUILDERS[component](folder / component)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("config", "component"), sorted(EXPECTED))
def test_parameter_counts_match_the_real_models(config: str, component: str) -> None:
    assert _count(CONFIGS_DIR / config, component) == EXPECTED[(config, component)]


def test_every_bundled_folder_is_checked() -> None:
    folders = {p.name for p in CONFIGS_DIR.iterdir() if (p / "model_index.json").exists()}
    assert folders == set(BUNDLED_CONFIGS.values())
    assert set(VAE_CONFIGS.values()) <= folders
    for folder in folders:
        components = {p.name for p in (CONFIGS_DIR / folder).iterdir() if p.is_dir()}
        assert components - {"scheduler"} == {c for f, c in EXPECTED if f == folder}


@pytest.mark.parametrize(("key", "folder"), sorted(BUNDLED_CONFIGS.items()))
def test_bundled_folders_describe_their_family(key: tuple, folder: str) -> None:
    """model_index names the pipeline easel uses, and detection reads the folder back."""
    architecture, inpainting = key
    path = CONFIGS_DIR / folder
    index = DiffusionPipeline.load_config(path)
    assert index["_class_name"] == PIPELINE_CLASSES[key].__name__
    detected = detect_diffusers_pipeline(path)
    assert (detected.architecture, detected.inpainting) == (architecture, inpainting)
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    getattr(diffusers, scheduler["_class_name"]).from_config(scheduler)


def test_configs_hold_no_weights_or_tokenizer_copies() -> None:
    for folder in BUNDLED_CONFIGS.values():
        files = [p for p in (CONFIGS_DIR / folder).rglob("*") if p.is_file()]
        assert files and all(p.suffix == ".json" for p in files), files
        assert not any("tokenizer" in p.parts for p in files)
