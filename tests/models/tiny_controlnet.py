"""Tiny random-weight ControlNets that fit tiny.py's UNets, and the files users install them as.

A ControlNet is a copy of its UNet's down half plus a control-image encoder and zero-initialised
output convolutions; here every weight is random (the "zero" convolutions too), so a unit visibly
changes the image. Writers save them as the real formats: lllyasviel's original single file
(`control_model.*` LDM keys, like control_v11p_sd15_canny.safetensors), a single file with
diffusers keys (how most SDXL ControlNets ship), a diffusers folder, and the config-only folder a
single file loads with. Also a random MLSD line detector saved like lllyasviel/Annotators' file.
The builder and the folder writer are the demo set's (models/demo/controlnet.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import ControlNetModel

from models.demo.controlnet import (  # noqa: F401  save_controlnet_folder: re-exported
    HINT_CHANNELS,
    save_controlnet_folder,
    tiny_controlnet,
)
from pipelines.preprocessors import controlnet_aux
from tests.models.ldm_format import UNET_FIXED, UNET_RESNET, _rename
from tests.models.tiny import save_safetensors

Tensor = torch.Tensor

CONTROL_PREFIX = "control_model."
CONTROLNET_FIXED: dict[str, str] = {
    **{k: v for k, v in UNET_FIXED.items() if not k.startswith(("conv_norm_out", "conv_out"))},
    "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
    "controlnet_cond_embedding.conv_out.": "input_hint_block.14.",
    "controlnet_mid_block.": "middle_block_out.0.",
}
ANNOTATOR_FILES = {"mlsd": "mlsd_large_512_fp32.pth"}


def tiny_sd1_controlnet(seed: int = 10) -> ControlNetModel:
    """Fits tiny_sd1_pipeline's UNet: (32, 64) channels, cross-attention first, context 32."""
    return tiny_controlnet(
        seed,
        in_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_sdxl_controlnet(seed: int = 20) -> ControlNetModel:
    """Fits tiny_sdxl_pipeline's UNet: plain first block, linear projections, text_time."""
    time_dim, projection = 8, 32
    return tiny_controlnet(
        seed,
        in_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=96,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        norm_num_groups=32,
    )


def controlnet_to_ldm(state: Mapping[str, Tensor], config: Mapping[str, object]) -> dict:
    """ControlNetModel weights -> lllyasviel's `control_model.*` keys (the inverse of diffusers'
    convert_controlnet_checkpoint), for any number of blocks and layers per block."""
    layers = int(config["layers_per_block"])  # type: ignore[call-overload]
    blocks = len(config["block_out_channels"])  # type: ignore[arg-type]
    prefixes = dict(CONTROLNET_FIXED)
    for i in range(blocks):
        for j in range(layers):
            index = i * (layers + 1) + j + 1
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{index}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{index}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = (
            f"input_blocks.{(i + 1) * (layers + 1)}.0.op."
        )
    for i in range(2 * (len(HINT_CHANNELS) - 1)):
        prefixes[f"controlnet_cond_embedding.blocks.{i}."] = f"input_hint_block.{2 * (i + 1)}."
    for i in range(blocks * (layers + 1)):
        prefixes[f"controlnet_down_blocks.{i}."] = f"zero_convs.{i}.0."
    converted = _rename(state, prefixes, {"resnets": UNET_RESNET})
    return {CONTROL_PREFIX + key: value for key, value in converted.items()}


def save_controlnet_single_file(model: ControlNetModel, dest: Path) -> Path:
    """The original format: control_v11p_sd15_*.safetensors (SD 1.x layouts)."""
    return save_safetensors(controlnet_to_ldm(model.state_dict(), model.config), dest)


def save_controlnet_diffusers_file(model: ControlNetModel, dest: Path) -> Path:
    """One .safetensors with diffusers keys, as most SDXL ControlNet files are distributed."""
    return save_safetensors(model.state_dict(), dest)


def save_controlnet_config(model: ControlNetModel, dest: Path) -> Path:
    """The config-only folder a single file loads with (what manifest.toml's `config` names)."""
    model.save_config(dest)
    return dest


def tiny_mlsd(seed: int = 30) -> torch.nn.Module:
    """controlnet-aux's MLSD network (MobileV2_MLSD_Large) with random weights."""
    controlnet_aux()  # imports the package quietly
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    torch.manual_seed(seed)
    return MobileV2_MLSD_Large().eval()


def save_mlsd(annotators: Path, seed: int = 30) -> Path:
    """mlsd_large_512_fp32.pth as in lllyasviel/Annotators: a plain torch state dict."""
    annotators.mkdir(parents=True, exist_ok=True)
    path = annotators / ANNOTATOR_FILES["mlsd"]
    torch.save(tiny_mlsd(seed).state_dict(), path)
    return path
