"""Tiny random-weight ControlNets: the demo set's, and the builder the tests' ones share.

A ControlNet is a copy of its UNet's down half plus a control-image encoder and zero-initialised
output convolutions; here every weight is random (the "zero" convolutions too), so a unit visibly
changes the image. The demo ControlNets fit the SD 1.x demo checkpoint's UNet and are saved as
diffusers folders (config.json + diffusion_pytorch_model.safetensors), one per PICPIK code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.models.controlnets.controlnet import ControlNetModel

from models.demo.checkpoint import DEMO_UNET_DOWN

# ControlNetConditioningEmbedding: four widths = three stride-2 convolutions (8x down, to the
# latent size), the layout whose LDM names end at input_hint_block.14.
HINT_CHANNELS = (8, 8, 16, 16)
DEMO_SEED = 40


def randomise(model: ControlNetModel, seed: int) -> ControlNetModel:
    """Give the zero-initialised output convolutions random weights: a unit must do something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        zero_convs = [*model.controlnet_down_blocks, model.controlnet_mid_block]
        zero_convs.append(model.controlnet_cond_embedding.conv_out)
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    return model.eval()


def tiny_controlnet(seed: int, **layout: Any) -> ControlNetModel:
    """A ControlNet of the given UNet down-half layout (ControlNetModel's arguments), random
    weights from `seed`."""
    torch.manual_seed(seed)
    model = ControlNetModel(conditioning_embedding_out_channels=HINT_CHANNELS, **layout)
    return randomise(model, seed)


def demo_controlnet(seed: int = DEMO_SEED) -> ControlNetModel:
    """Fits the SD 1.x demo checkpoint's UNet (models/demo/checkpoint.py)."""
    return tiny_controlnet(seed, **DEMO_UNET_DOWN)


def save_controlnet_folder(model: ControlNetModel, dest: Path) -> Path:
    """A diffusers folder: config.json + diffusion_pytorch_model.safetensors."""
    model.save_pretrained(dest)
    return dest
