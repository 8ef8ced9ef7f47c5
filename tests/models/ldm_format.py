"""Diffusers components -> the original single-file layouts (LDM for SD 1.x, SGM for SDXL).

Tests need real-format single-file checkpoints without downloading any, so they build tiny
diffusers models and write them out the way A1111 / ComfyUI checkpoints are laid out. Modelled on
diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py and
convert_diffusers_to_original_sdxl.py, but generalised to any number of blocks and layers per
block, so the tiny test models convert as faithfully as full-size ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline

Tensor = torch.Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")

UNET_FIXED: dict[str, str] = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "mid_block.resnets.0.": "middle_block.0.",
    "mid_block.attentions.0.": "middle_block.1.",
    "mid_block.resnets.1.": "middle_block.2.",
}
UNET_RESNET: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_FIXED: dict[str, str] = {
    "encoder.conv_norm_out.": "encoder.norm_out.",
    "decoder.conv_norm_out.": "decoder.norm_out.",
    "encoder.mid_block.attentions.0.": "encoder.mid.attn_1.",
    "decoder.mid_block.attentions.0.": "decoder.mid.attn_1.",
    "encoder.mid_block.resnets.0.": "encoder.mid.block_1.",
    "encoder.mid_block.resnets.1.": "encoder.mid.block_2.",
    "decoder.mid_block.resnets.0.": "decoder.mid.block_1.",
    "decoder.mid_block.resnets.1.": "decoder.mid.block_2.",
}
VAE_RESNET: dict[str, str] = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION: dict[str, str] = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
OPEN_CLIP_LAYER: dict[str, str] = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _rename(
    state: Mapping[str, Tensor],
    prefixes: Mapping[str, str],
    inner: Mapping[str, Mapping[str, str]],
) -> dict[str, Tensor]:
    """Replace the longest matching diffusers prefix; rename the rest by the table for its part."""
    ordered = sorted(prefixes, key=len, reverse=True)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in ordered if key.startswith(p)), "")
        rest = key[len(prefix) :]
        for part, table in inner.items():
            if f".{part}." in f".{prefix}":
                rest = _rename_head(rest, table)
        out[prefixes.get(prefix, "") + rest] = value
    return out


def _rename_head(rest: str, table: Mapping[str, str]) -> str:
    for old, new in sorted(table.items(), key=lambda kv: len(kv[0]), reverse=True):
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_to_ldm(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """UNet2DConditionModel weights -> `model.diffusion_model.*` keys."""
    layers = config["layers_per_block"]
    prefixes = dict(UNET_FIXED)
    for i, up_type in enumerate(config["up_block_types"]):
        for j in range(layers):
            index = i * (layers + 1) + j + 1
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{index}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{index}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = (
            f"input_blocks.{(i + 1) * (layers + 1)}.0.op."
        )
        for j in range(layers + 1):
            index = i * (layers + 1) + j
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{index}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{index}.1."
        upsampler = 2 if up_type.startswith("CrossAttn") else 1
        prefixes[f"up_blocks.{i}.upsamplers.0."] = (
            f"output_blocks.{i * (layers + 1) + layers}.{upsampler}."
        )
    converted = _rename(state, prefixes, {"resnets": UNET_RESNET})
    return {UNET_PREFIX + key: value for key, value in converted.items()}


def vae_to_ldm(
    state: Mapping[str, Tensor], config: Mapping[str, Any], *, prefix: str = VAE_PREFIX
) -> dict[str, Tensor]:
    """AutoencoderKL weights -> `first_stage_model.*` keys (attention as 1x1 convolutions)."""
    blocks = len(config["block_out_channels"])
    prefixes = dict(VAE_FIXED)
    for i in range(blocks):
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{blocks - 1 - i}.upsample."
        for j in range(config["layers_per_block"] + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = (
                f"decoder.up.{blocks - 1 - i}.block.{j}."
            )
    converted = _rename(state, prefixes, {"resnets": VAE_RESNET, "attentions": VAE_ATTENTION})
    out: dict[str, Tensor] = {}
    for key, value in converted.items():
        is_attention_weight = ".attn_1." in key and key.endswith(
            ("q.weight", "k.weight", "v.weight", "proj_out.weight")
        )
        out[prefix + key] = value[:, :, None, None] if is_attention_weight else value
    return out


def clip_to_ldm(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """CLIPTextModel weights in the HF layout under prefix, with the `text_model.` level kept."""
    out = {
        prefix + (key if key.startswith("text_model.") else "text_model." + key): value
        for key, value in state.items()
    }
    # old checkpoints carry the position ids buffer; loaders must ignore it
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return out


def open_clip_to_ldm(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """CLIPTextModelWithProjection weights -> OpenCLIP names (fused qkv, transposed projection)."""
    out: dict[str, Tensor] = {}
    layer = "text_model.encoder.layers."
    fused: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(layer):
            index, rest = key[len(layer) :].split(".", 1)
            for qkv in ("q", "k", "v"):
                head = f"self_attn.{qkv}_proj."
                if rest.startswith(head):
                    kind = rest[len(head) :]  # weight / bias
                    fused.setdefault(f"{index}.{kind}", {})[qkv] = value
                    break
            else:
                rest = _rename_head(rest, OPEN_CLIP_LAYER)
                out[f"{prefix}transformer.resblocks.{index}.{rest}"] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        else:
            name = {
                "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                "text_model.embeddings.position_embedding.weight": "positional_embedding",
                "text_model.final_layer_norm.weight": "ln_final.weight",
                "text_model.final_layer_norm.bias": "ln_final.bias",
            }[key]
            out[prefix + name] = value
    for name, parts in fused.items():
        index, kind = name.split(".")
        out[f"{prefix}transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )
    out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


def sd_to_ldm(pipe: DiffusionPipeline) -> dict[str, Tensor]:
    """An SD 1.x pipeline as one original-layout state dict (as in v1-5-pruned.safetensors)."""
    return {
        **unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **clip_to_ldm(pipe.text_encoder.state_dict(), SD1_TEXT_PREFIX),
        "alphas_cumprod": torch.linspace(0.99, 0.01, 1000),
    }


def sdxl_to_sgm(pipe: DiffusionPipeline) -> dict[str, Tensor]:
    """An SDXL pipeline as one original-layout state dict (as in sd_xl_base_1.0.safetensors)."""
    clip_prefix, open_clip_prefix = SDXL_TEXT_PREFIXES
    return {
        **unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **clip_to_ldm(pipe.text_encoder.state_dict(), clip_prefix),
        **open_clip_to_ldm(pipe.text_encoder_2.state_dict(), open_clip_prefix),
    }


def vae_file_state(pipe: DiffusionPipeline) -> dict[str, Tensor]:
    """A standalone VAE file's keys (like vae-ft-mse-840000-ema-pruned.safetensors)."""
    return vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config, prefix="")
