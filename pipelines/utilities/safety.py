"""The NSFW check: Stable Diffusion's safety checker over finished images.

The model is CompVis/stable-diffusion-safety-checker (what diffusers' Stable Diffusion pipelines
ship): a CLIP ViT whose projected image embedding is compared with 17 concept embeddings (and 3
"special care" ones that make the others stricter); an image is NSFW when a cosine similarity
passes its concept's threshold. easel runs the checker's own forward, so its scoring (rounding,
special-care adjustment) is exactly diffusers'. Unlike diffusers' pipelines easel does not black
the image out: it only reports the flag (JobResult.nsfw) and the front end decides.

The checker is the installed one named "default", else the first by name
(models.utility_models); it stays loaded in the worker's component cache, on the worker's device
and dtype. All images of a call go through one batched forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL.Image import Image
from transformers import CLIPImageProcessor

from models.cache import PipelineCache
from models.utility_models import Utility, UtilityModel
from pipelines.jobs import ErrorCode, JobError
from pipelines.runners.common import Resources
from pipelines.utilities.installed import installed_model

# The checker's forward warns that "a black image will be returned instead": not so in easel,
# which passes it placeholders and keeps the images.
logging.getLogger(StableDiffusionSafetyChecker.__module__).setLevel(logging.ERROR)


@dataclass(frozen=True)
class SafetyChecker:
    model: StableDiffusionSafetyChecker
    processor: CLIPImageProcessor


def check_installed(models_dir: Path | None) -> None:
    """JobError MODEL_UNAVAILABLE naming what to install when no safety checker is."""
    installed_model(models_dir, Utility.SAFETY_CHECKER)


def check_nsfw(images: Sequence[Image], resources: Resources) -> list[bool]:
    """Whether each image is NSFW, in one batched pass of the installed safety checker."""
    if not images:
        return []
    model = installed_model(resources.models_dir, Utility.SAFETY_CHECKER)
    cache = resources.cache
    checker = cache.component(("safety_checker", str(model.path)), lambda: _load(model, cache))
    pixels = checker.processor(
        images=[image.convert("RGB") for image in images], return_tensors="pt"
    ).pixel_values
    clip_input = pixels.to(device=cache.device, dtype=checker.model.dtype)
    # The forward blacks out flagged entries of `images`: give it throwaway ones.
    placeholders = np.zeros((len(images), 1, 1, 3), dtype=np.float32)
    _placeholders, flags = checker.model(clip_input=clip_input, images=placeholders)
    return [bool(flag) for flag in flags]


def _load(model: UtilityModel, cache: PipelineCache) -> SafetyChecker:
    """The checker and its image processor from the folder; a broken folder is MODEL_UNAVAILABLE
    naming it."""
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(model.path, local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(model.path, local_files_only=True)
    except Exception as error:  # whatever diffusers / transformers raise, it is unusable
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the safety checker {model.path} could not be loaded ({error}); it must be the "
            "CompVis/stable-diffusion-safety-checker folder (config.json, "
            "preprocessor_config.json, model.safetensors)",
        ) from error
    # transformers' @wraps(Module.to) hides the bound signature from mypy
    checker = checker.to(device=cache.device, dtype=cache.dtype).eval()  # type: ignore[call-arg]
    return SafetyChecker(checker, processor)
