"""The demo checkpoints: tiny, randomly initialised SD 1.x and SDXL pipelines built on first start.

They let a fresh install serve every action end to end with nothing downloaded (the SDXL one
answers the clients that ask for an SDXL model, such as legacy model id 4). Their weights are
random, so they draw noise; the listings say so. Same seed and torch version -> same weights.
The SDXL builder is also the tests' tiny SDXL pipeline (tests/models/tiny.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint import (
    StableDiffusionXLInpaintPipeline,
)
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.utils import logging as diffusers_logging
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)
from transformers.utils import logging as transformers_logging

from models.catalogue import Architecture, ModelKind, ModelSpec, WeightFormat
from models.loader import CONFIGS_DIR
from models.tokenizer import BOS, EOS, VOCAB_SIZE, clip_tokenizer

DEMO_CODE = "easel-demo"
DEMO_XL_CODE = "easel-demo-xl"
DEMO_VERSION = 1  # bump when the architecture below changes, so old builds are replaced
_MARKER = "easel-demo.json"
IN_CHANNELS = {False: 4, True: 9}  # inpainting -> UNet input channels


# The SD 1.x demo UNet's down half: what its ControlNets copy (models/demo/controlnet.py).
DEMO_UNET_DOWN: dict[str, Any] = {
    "in_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}


def demo_unet() -> UNet2DConditionModel:
    """The SD 1.x demo UNet, with whatever weights torch's generator gives (seed it first)."""
    return UNet2DConditionModel(
        sample_size=8,
        out_channels=4,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **DEMO_UNET_DOWN,
    )


def build_demo_pipeline(tokenizer_cache: Path) -> StableDiffusionPipeline:
    """Tiny components in the SD 1.x layout (8x VAE, 12 CLIP layers so every ClipSkip works)."""
    torch.manual_seed(0)
    unet = demo_unet()
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(2)
    tokenizer = clip_tokenizer(tokenizer_cache)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=12,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=_token_id(tokenizer, BOS),
            eos_token_id=_token_id(tokenizer, EOS),
            pad_token_id=_token_id(tokenizer, EOS),
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,  # type: ignore[arg-type]  # diffusers documents None as allowed
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )


def _token_id(tokenizer: CLIPTokenizer, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(found, int), token
    return found


def _text_config(hidden: int, *, act: str, projection: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act=act,
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
        pad_token_id=VOCAB_SIZE - 1,
    )


def tiny_vae(*, scaling_factor: float = 0.18215, seed: int = 1) -> AutoencoderKL:
    """Four blocks (8x downscale) and two layers per block, like the real SD VAE."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def tiny_sdxl_pipeline(tokenizer_cache: Path, *, inpainting: bool = False) -> DiffusionPipeline:
    """SDXL layout: plain first block, linear projections, deeper transformers lower down, two
    text encoders of different widths (the second with projection), text_time embedding."""
    te1_width, te2_width, projection, time_dim = 32, 64, 32, 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=IN_CHANNELS[inpainting],
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=te1_width + te2_width,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        norm_num_groups=32,
    )
    vae = tiny_vae(scaling_factor=0.13025)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(_text_config(te1_width, act="quick_gelu", projection=te1_width))
    torch.manual_seed(3)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(te2_width, act="gelu", projection=projection)
    )
    config = "sdxl-inpaint" if inpainting else "sdxl"
    cls = StableDiffusionXLInpaintPipeline if inpainting else StableDiffusionXLPipeline
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(tokenizer_cache),
        tokenizer_2=clip_tokenizer(tokenizer_cache, pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(
            CONFIGS_DIR / config, subfolder="scheduler"
        ),
    )


# code -> (display name, architecture, builder): the demo checkpoints, the default one first.
DEMO_CHECKPOINTS: dict[str, tuple[str, Architecture, Callable[[Path], DiffusionPipeline]]] = {
    DEMO_CODE: ("easel demo", Architecture.SD1, build_demo_pipeline),
    DEMO_XL_CODE: ("easel demo XL", Architecture.SDXL, tiny_sdxl_pipeline),
}


def ensure_demo_model(root: Path, code: str = DEMO_CODE) -> Path:
    """Build a demo checkpoint under root/<code> once; later starts reuse it."""
    dest = root / code
    marker = dest / _MARKER
    if marker.exists() and json.loads(marker.read_text()).get("version") == DEMO_VERSION:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".demo-build-") as tmp:
        staging = Path(tmp) / code
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        DEMO_CHECKPOINTS[code][2](root / ".tokenizer").save_pretrained(staging)
        (staging / _MARKER).write_text(json.dumps({"version": DEMO_VERSION}))
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    return dest


def demo_spec(path: Path, code: str = DEMO_CODE) -> ModelSpec:
    name, architecture, _ = DEMO_CHECKPOINTS[code]
    family = {Architecture.SD1: "SD 1.x", Architecture.SDXL: "SDXL"}[architecture]
    return ModelSpec(
        code=code,
        name=name,
        kind=ModelKind.CHECKPOINT,
        architecture=architecture,
        path=path,
        weight_format=WeightFormat.DIFFUSERS,
        description=(
            f"Tiny randomly initialised {family} model built on first start: it draws noise. "
            "Put real checkpoints into the models directory."
        ),
        is_demo=True,
    )
