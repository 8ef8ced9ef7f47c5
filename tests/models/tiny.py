"""Tiny random-weight SD 1.x and SDXL pipelines, and the files real models directories hold.

Each builder seeds torch itself, so the same call gives the same weights. The pipelines keep the
real families' layouts (block types, layers per block, two text encoders for SDXL, the real
schedulers and tokenizers) at widths of 8-96, so they run a 64x64 image in milliseconds on a CPU.
Writers save them in the on-disk formats users have: diffusers folders, original single-file
.safetensors (see ldm_format.py), pickle .ckpt, and the config-only folder a single file needs.
Other tests may use these too. The SDXL pipeline and the VAE are the demo set's SDXL checkpoint
builders (models/demo/checkpoint.py).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextModel

from models.demo.checkpoint import (  # noqa: F401  the demo set's builders, re-exported
    IN_CHANNELS,
    _text_config,
    tiny_sdxl_pipeline,
    tiny_vae,
)
from models.loader import CONFIGS_DIR
from models.tokenizer import clip_tokenizer
from tests.models.ldm_format import sd_to_ldm, sdxl_to_sgm

# The real families' schedulers, read from the bundled configs.
SD1_SCHEDULERS = {False: (PNDMScheduler, "sd15"), True: (DDIMScheduler, "sd15-inpaint")}
SDXL_SCHEDULERS = {
    False: (EulerDiscreteScheduler, "sdxl"),
    True: (EulerDiscreteScheduler, "sdxl-inpaint"),
}
# Files of a diffusers folder that a config-only folder keeps.
CONFIG_FILES = ("model_index.json", "config.json", "scheduler_config.json")


def tiny_sd1_pipeline(tokenizer_cache: Path, *, inpainting: bool = False) -> DiffusionPipeline:
    """SD 1.x layout: cross-attention blocks first, 2 layers per block, conv projections."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=IN_CHANNELS[inpainting],
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = tiny_vae()
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(_text_config(32, act="quick_gelu", projection=32))
    scheduler_cls, config = SD1_SCHEDULERS[inpainting]
    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(tokenizer_cache),
        unet=unet,
        scheduler=scheduler_cls.from_pretrained(CONFIGS_DIR / config, subfolder="scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# --- writers -------------------------------------------------------------------------------------


def save_diffusers(pipe: DiffusionPipeline, dest: Path) -> Path:
    pipe.save_pretrained(dest)
    return dest


def save_safetensors(state: Mapping[str, torch.Tensor], dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, dest)
    return dest


def save_single_file(pipe: DiffusionPipeline, dest: Path) -> Path:
    """The pipeline as one original-layout .safetensors checkpoint."""
    return save_safetensors(original_state(pipe), dest)


def original_state(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    return sdxl_to_sgm(pipe) if hasattr(pipe, "text_encoder_2") else sd_to_ldm(pipe)


def save_pickle(pipe: DiffusionPipeline, dest: Path) -> Path:
    """The pipeline as a .ckpt holding {"state_dict": ...}, like A1111-era checkpoints."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": original_state(pipe), "global_step": 1}, dest)
    return dest


def save_config_dir(pipe: DiffusionPipeline, dest: Path, *, like: str | None = None) -> Path:
    """The configs of a diffusers folder without weights or tokenizers: what `config` names.

    like="sd15" etc. takes model_index.json and the scheduler from that bundled config, so a
    single file loads through the real families' pipeline descriptions.
    """
    tmp = dest.with_name(dest.name + ".full")
    pipe.save_pretrained(tmp)
    for path in tmp.rglob("*.json"):
        if path.name in CONFIG_FILES:
            target = dest / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    shutil.rmtree(tmp)
    if like is not None:
        for name in ("model_index.json", "scheduler/scheduler_config.json"):
            shutil.copyfile(CONFIGS_DIR / like / name, dest / name)
    return dest


def write_fake_safetensors(
    path: Path,
    tensors: Mapping[str, tuple[int, ...]],
    *,
    dtype: str = "F16",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """A valid .safetensors file of zeros with the given names and shapes, written sparsely.

    Lets scan tests build realistically named multi-gigabyte-shaped files in microseconds.
    """
    itemsize = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, shape in tensors.items():
        size = itemsize
        for n in shape:
            size *= n
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return path


# Header-only stand-ins of real files: the tensors detection looks at, at their real shapes.
SD1_CHECKPOINT: dict[str, tuple[int, ...]] = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
}
SD1_INPAINT_CHECKPOINT = {
    **SD1_CHECKPOINT,
    "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
}
SD2_CHECKPOINT: dict[str, tuple[int, ...]] = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "cond_stage_model.model.token_embedding.weight": (49408, 1024),
}
SDXL_CHECKPOINT: dict[str, tuple[int, ...]] = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (
        77,
        768,
    ),
    "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
}
SDXL_INPAINT_CHECKPOINT = {
    **SDXL_CHECKPOINT,
    "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
}
SDXL_REFINER_CHECKPOINT: dict[str, tuple[int, ...]] = {
    "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
    "conditioner.embedders.0.model.text_projection": (1280, 1280),
}
UNET_ONLY_SDXL: dict[str, tuple[int, ...]] = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
}
SD1_LORA: dict[str, tuple[int, ...]] = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
        4,
        768,
    ),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4),
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768),
}
SDXL_LORA: dict[str, tuple[int, ...]] = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
    "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768),
    "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280),
}
PEFT_LORA: dict[str, tuple[int, ...]] = {
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048),
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (640, 4),
}
LYCORIS_LOHA: dict[str, tuple[int, ...]] = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": (320, 8),
    "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_b": (8, 320),
}
SD1_EMBEDDING: dict[str, tuple[int, ...]] = {"emb_params": (4, 768)}
SDXL_EMBEDDING: dict[str, tuple[int, ...]] = {"clip_l": (2, 768), "clip_g": (2, 1280)}
DIFFUSERS_EMBEDDING: dict[str, tuple[int, ...]] = {"<cat-toy>": (768,)}
VAE_FILE: dict[str, tuple[int, ...]] = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "decoder.conv_out.weight": (3, 128, 3, 3),
    "quant_conv.weight": (8, 8, 1, 1),
    "post_quant_conv.weight": (4, 4, 1, 1),
}
SD1_CONTROLNET: dict[str, tuple[int, ...]] = {
    "control_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
}
SDXL_IP_ADAPTER: dict[str, tuple[int, ...]] = {
    "image_proj.proj.weight": (8192, 1280),
    "ip_adapter.1.to_k_ip.weight": (640, 2048),
}
