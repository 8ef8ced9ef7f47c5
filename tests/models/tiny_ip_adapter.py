"""Tiny IP-Adapters and CLIP image encoders, in the on-disk formats users download.

An IP-Adapter (h94/IP-Adapter) is two parts: `image_proj.*`, which turns a CLIP image embedding
into 4 extra context tokens, and `ip_adapter.<n>.to_k_ip / to_v_ip`, one key/value projection of
those tokens per cross-attention layer. h94 numbers them by the layer's position among *all* the
UNet's attention processors (self-attention ones included, which hold no weights): with attn1
and attn2 alternating, the cross-attentions are 1, 3, 5... These builders follow that definition
(read off the UNet itself), so the files are what h94's training code would write for the tiny
UNets of tiny.py, and diffusers' loader has to map them like it maps the real ones.

The image encoder is a transformers `CLIPVisionModelWithProjection` folder (config.json +
model.safetensors), like h94's `models/image_encoder/`, at widths that run in milliseconds.
The builders are the demo set's (models/demo/ip_adapter.py); h94's pickle layout is here only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.demo.ip_adapter import (  # noqa: F401  the demo set's builders, re-exported
    NUM_TOKENS,
    cross_attention_layers,
    ip_adapter_state,
    save_image_encoder,
    save_ip_adapter,
    tiny_image_encoder,
)


def save_ip_adapter_pickle(state: dict[str, torch.Tensor], dest: Path) -> Path:
    """h94's original .bin layout: {"image_proj": {...}, "ip_adapter": {...}} via torch.save."""
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        part, _, name = key.partition(".")
        nested[part][name] = value.contiguous()
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(nested, dest)
    return dest
