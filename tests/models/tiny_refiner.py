"""Tiny SDXL refiners: a real refiner's layout, and other SDXL checkpoints that serve as one.

A real refiner (sd_xl_refiner_1.0) differs from an SDXL base model: no CLIP-L, only OpenCLIP
bigG (saved as `conditioner.embedders.0.model.*`), a UNet whose cross-attention width is bigG's
hidden width with plain outer blocks and deep transformers in the middle ones, and added time
ids that carry an aesthetic score instead of the target size (5 ids, not 6). The tiny one keeps
that layout at widths of 32-64 and uses the tiny SDXL base's VAE, as the real refiner ships the
base's VAE. Any SDXL base checkpoint may also serve as a refiner: `tiny_sdxl_variant` is the tiny
SDXL base with other UNet weights, so that the refiner pass visibly changes the picture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModelWithProjection

from models.loader import CONFIGS_DIR
from models.tokenizer import clip_tokenizer
from tests.models.ldm_format import open_clip_to_ldm, unet_to_ldm, vae_to_ldm
from tests.models.tiny import _text_config, save_safetensors, tiny_sdxl_pipeline, tiny_vae

REFINER_TEXT_PREFIX = "conditioner.embedders.0.model."  # as in sd_xl_refiner_1.0.safetensors
AESTHETIC_TIME_IDS = 5  # original size (2), crop (2), aesthetic score (1)


def tiny_sdxl_refiner(tokenizer_cache: Path, *, seed: int = 10) -> StableDiffusionXLImg2ImgPipeline:
    """The refiner layout: Down / CrossAttn / Down blocks, one 64-wide text encoder with
    projection, text_time embedding of 5 time ids plus the pooled text embedding."""
    te_width, projection, time_dim = 64, 32, 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=2,
        use_linear_projection=True,
        cross_attention_dim=te_width,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=AESTHETIC_TIME_IDS * time_dim + projection,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(te_width, act="gelu", projection=projection)
    )
    return StableDiffusionXLImg2ImgPipeline(
        vae=tiny_vae(scaling_factor=0.13025),
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=clip_tokenizer(tokenizer_cache, pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(
            CONFIGS_DIR / "sdxl-refiner", subfolder="scheduler"
        ),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def tiny_sdxl_variant(tokenizer_cache: Path, *, seed: int = 20) -> DiffusionPipeline:
    """The tiny SDXL base with its UNet weights re-drawn: another SDXL checkpoint."""
    pipe = tiny_sdxl_pipeline(tokenizer_cache)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in pipe.unet.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return pipe


def refiner_state(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    """A refiner as one SGM-layout state dict (as in sd_xl_refiner_1.0.safetensors)."""
    return {
        **unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **open_clip_to_ldm(pipe.text_encoder_2.state_dict(), REFINER_TEXT_PREFIX),
    }


def save_refiner_single_file(pipe: DiffusionPipeline, dest: Path) -> Path:
    return save_safetensors(refiner_state(pipe), dest)
