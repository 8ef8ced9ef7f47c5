"""A tiny Real-ESRGAN "compact" upscaler (SRVGGNetCompact) with random weights, saved like the
real files (RealESRGAN-general-x4v3 and friends), so spandrel detects its architecture and scale
from the keys and shapes alone: body.0 (first conv), body.1 (PReLU), num_conv x (conv, PReLU),
then the last conv with 3 x scale^2 outputs feeding a pixel shuffle.

Its receptive field is num_conv + 2 pixels around each input pixel (one per 3x3 conv).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

NUM_FEAT = 8
NUM_CONV = 2
RECEPTIVE_RADIUS = NUM_CONV + 2  # input pixels each output pixel depends on, per side


def tiny_upscaler_state_dict(scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights, deterministic in (scale, seed); small enough that the learnt residual shows
    without saturating the output."""
    model = Compact(num_feat=NUM_FEAT, num_conv=NUM_CONV, upscale=scale)
    generator = torch.Generator().manual_seed(seed * 100 + scale)
    state = {}
    for key, value in model.state_dict().items():
        if value.dim() == 1 and key.endswith("weight"):  # PReLU slopes
            state[key] = torch.rand(value.shape, generator=generator) * 0.3
        elif value.dim() == 1:  # conv biases
            state[key] = torch.randn(value.shape, generator=generator) * 0.02
        else:  # conv kernels, scaled by fan-in
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            state[key] = torch.randn(value.shape, generator=generator) / fan_in**0.5
    return {k: v.contiguous() for k, v in state.items()}


def save_tiny_upscaler(path: Path, scale: int = 4, seed: int = 0) -> Path:
    """Write the upscaler at `path` (e.g. models_dir/upscale_models/4x-tiny.safetensors): a
    .safetensors file, or for .pth / .pt a torch.save'd state dict as training code leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_upscaler_state_dict(scale, seed)
    if path.suffix.lower() == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"params": state}, path)  # BasicSR's layout: the weights under "params"
    return path
