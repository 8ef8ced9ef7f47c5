"""Tiny IP-Adapters and CLIP image encoders, in the on-disk formats users download.

An IP-Adapter (h94/IP-Adapter) is two parts: `image_proj.*`, which turns a CLIP image embedding
into 4 extra context tokens, and `ip_adapter.<n>.to_k_ip / to_v_ip`, one key/value projection of
those tokens per cross-attention layer. h94 numbers them by the layer's position among *all* the
UNet's attention processors (self-attention ones included, which hold no weights): with attn1
and attn2 alternating, the cross-attentions are 1, 3, 5... These builders follow that definition
(read off the UNet itself), so the files are what h94's training code would write for a tiny
UNet, and diffusers' loader has to map them like it maps the real ones.

The image encoder is a transformers `CLIPVisionModelWithProjection` folder (config.json +
model.safetensors), like h94's `models/image_encoder/`, at widths that run in milliseconds.
The demo set's adapter fits the SD 1.x demo checkpoint, with its encoder next to it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

NUM_TOKENS = 4  # context tokens a plain IP-Adapter adds (its image_proj output / width)


def tiny_image_encoder(*, projection_dim: int = 32, seed: int = 5) -> CLIPVisionModelWithProjection:
    """A CLIP ViT at 32x32 pixels in 8x8 patches: 16 patches + CLS, 2 layers, width 32."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=projection_dim,
        hidden_act="gelu",
    )
    return CLIPVisionModelWithProjection(config).eval()


def save_image_encoder(encoder: CLIPVisionModelWithProjection, folder: Path) -> Path:
    """The encoder as a transformers folder: config.json + model.safetensors."""
    encoder.save_pretrained(folder, safe_serialization=True)
    return folder


def cross_attention_layers(unet: UNet2DConditionModel) -> dict[int, tuple[int, int]]:
    """h94 index -> (hidden width, context width) of each cross-attention layer of the UNet."""
    layers = {}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            attention = unet.get_submodule(name.removesuffix(".processor"))
            assert isinstance(attention, Attention), name
            layers[index] = (attention.to_k.out_features, attention.to_k.in_features)
    return layers


def ip_adapter_state(
    unet: UNet2DConditionModel, *, image_embed_dim: int = 32, seed: int = 7, gain: float = 0.5
) -> dict[str, torch.Tensor]:
    """A plain IP-Adapter for the UNet, in h94's flat key layout (what its .safetensors hold).

    Random weights, large enough (`gain`) that the style image visibly changes a tiny UNet's
    output within two steps.
    """
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * gain

    context = int(unet.config["cross_attention_dim"])
    state = {
        "image_proj.proj.weight": rand(NUM_TOKENS * context, image_embed_dim),
        "image_proj.proj.bias": rand(NUM_TOKENS * context),
        "image_proj.norm.weight": 1 + rand(context),
        "image_proj.norm.bias": rand(context),
    }
    for index, (hidden, width) in cross_attention_layers(unet).items():
        state[f"ip_adapter.{index}.to_k_ip.weight"] = rand(hidden, width)
        state[f"ip_adapter.{index}.to_v_ip.weight"] = rand(hidden, width)
    return state


def save_ip_adapter(state: dict[str, torch.Tensor], dest: Path) -> Path:
    """h94's .safetensors layout: one flat file, `image_proj.*` and `ip_adapter.*` keys."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, dest)
    return dest
