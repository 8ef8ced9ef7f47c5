"""A tiny random-weight Stable Diffusion safety checker that flags one chosen image.

The folder is what CompVis/stable-diffusion-safety-checker holds: config.json (a CLIPConfig,
architectures StableDiffusionSafetyChecker), model.safetensors (with CompVis' key names) and
preprocessor_config.json (a CLIPImageProcessor), loadable with
`StableDiffusionSafetyChecker.from_pretrained(folder)` and `CLIPImageProcessor.from_pretrained
(folder)`. The CLIP vision tower is 32 wide, 2 layers, on 32x32 images.

The real checker compares an image's projected CLIP embedding with 17 "concept" embeddings (and
3 "special care" ones) and flags the image when a cosine similarity passes that concept's
threshold. Here concept 0 IS the `flagged` image's own embedding, with a threshold of
FLAG_THRESHOLD: that image scores 1.0 and is flagged, images whose embedding points elsewhere
(clearly different pictures) are not. Every other threshold is unreachable (cosines are <= 1).
With `flagged=None` nothing is ever flagged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL.Image import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPImageProcessor

IMAGE_SIZE = 32
WEIGHT_STD = 0.2  # transformers' init (0.02) maps every image to almost the same embedding
FLAG_THRESHOLD = 0.98  # cosine to concept 0 above which an image is flagged
NEVER = 2.0  # a threshold no cosine reaches
OUTER = "vision_model."  # the checker's CLIPVisionModel attribute


def tiny_safety_checker(*, seed: int = 0) -> StableDiffusionSafetyChecker:
    """The checker with random weights from `seed` and no reachable concept."""
    config = CLIPConfig(
        text_config={  # unused by the checker, but CLIPConfig carries one
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 64,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    checker = StableDiffusionSafetyChecker(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in checker.parameters():
            if parameter.dim() > 1:  # weights, embeddings and the concept tables
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * WEIGHT_STD)
        checker.concept_embeds_weights.fill_(NEVER)
        checker.special_care_embeds_weights.fill_(NEVER)
    return checker


def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def save_tiny_safety_checker(folder: Path, flagged: Image | None = None, *, seed: int = 0) -> Path:
    """A safety-checker folder at `folder` (created) that flags `flagged`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    checker = tiny_safety_checker(seed=seed)
    processor = image_processor()
    if flagged is not None:
        pixels = processor(images=[flagged.convert("RGB")], return_tensors="pt").pixel_values
        with torch.no_grad():
            embedding = checker.visual_projection(checker.vision_model(pixels)[1])[0]
            checker.concept_embeds[0] = embedding
            checker.concept_embeds_weights[0] = FLAG_THRESHOLD
    checker.save_pretrained(folder, safe_serialization=True)
    _legacy_keys(folder / "model.safetensors")
    processor.save_pretrained(folder)
    return folder


def _legacy_keys(path: Path) -> None:
    """Rename the weights as CompVis' file has them: written by transformers 4, whose
    CLIPVisionModel nested its transformer as `.vision_model` (keys `vision_model.vision_model.*`;
    transformers 5 dropped that level and maps the old names when loading)."""
    state = load_file(path)
    renamed = {
        f"{OUTER}{OUTER}{key.removeprefix(OUTER)}" if key.startswith(OUTER) else key: value
        for key, value in state.items()
    }
    save_file(renamed, path, metadata={"format": "pt"})
