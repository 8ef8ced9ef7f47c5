"""The embedded demo model: a tiny, randomly initialised SD 1.x pipeline built on first start.

It lets a fresh install serve every action end to end with nothing downloaded. Its weights are
random, so it draws noise; ListModels says so. Same seed and torch version -> same weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.utils import logging as transformers_logging

from models.catalogue import Architecture, ModelKind, ModelSpec, WeightFormat
from models.tokenizer import BOS, EOS, VOCAB_SIZE, clip_tokenizer

DEMO_CODE = "easel-demo"
DEMO_VERSION = 1  # bump when the architecture below changes, so old builds are replaced
_MARKER = "easel-demo.json"


def build_demo_pipeline(tokenizer_cache: Path) -> StableDiffusionPipeline:
    """Tiny components in the SD 1.x layout (8x VAE, 12 CLIP layers so every ClipSkip works)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
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
            bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
            eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
            pad_token_id=tokenizer.convert_tokens_to_ids(EOS),
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
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_demo_model(root: Path) -> Path:
    """Build the demo model under root/easel-demo once; later starts reuse it."""
    dest = root / DEMO_CODE
    marker = dest / _MARKER
    if marker.exists() and json.loads(marker.read_text()).get("version") == DEMO_VERSION:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".demo-build-") as tmp:
        staging = Path(tmp) / DEMO_CODE
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        build_demo_pipeline(root / ".tokenizer").save_pretrained(staging)
        (staging / _MARKER).write_text(json.dumps({"version": DEMO_VERSION}))
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    return dest


def demo_spec(path: Path) -> ModelSpec:
    return ModelSpec(
        code=DEMO_CODE,
        name="easel demo",
        kind=ModelKind.CHECKPOINT,
        architecture=Architecture.SD1,
        path=path,
        weight_format=WeightFormat.DIFFUSERS,
        description=(
            "Tiny randomly initialised SD 1.x model built on first start: it draws noise. "
            "Put real checkpoints into the models directory."
        ),
        is_demo=True,
    )
