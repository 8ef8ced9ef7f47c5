"""Background removal: a segmentation model's mask as the alpha channel of each image.

Models are Hugging Face remote-code repository folders under models_dir/background-removal/
(briaai/RMBG-1.4, briaai/RMBG-2.0, ZhengPeng7/BiRefNet and its variants): config.json, whose
auto_map points at the folder's own Python files, plus model.safetensors. The model family is
config.json's architectures[0]; FAMILIES says, per family, how its input is resized and
normalised, how the mask is read from its output and how the folder is loaded (offline, from the
folder alone: local_files_only, nothing is downloaded). Loaded models stay in the worker's
component cache, on its device and dtype.

A batch runs every image of every job through the model in ONE forward pass (each resized to the
family's input size), then each job's images are finished on their own:

1. mask: the model's probabilities resized back (bilinear, in float) to the image's size, for
   RMBG-1.4 min-max stretched to [0, 1] per image (its reference post-processing), then
   round(x 255) as 8 bits. That is the "plain" mask.
2. box: when the job has one, every image is cropped to it BEFORE segmentation; the model sees
   only that region and the result is the region's size.
3. post_process_mask (rembg's smoothing): a grey opening with a 3x3 ellipse (drops specks a pixel
   or two wide), a 5x5 Gaussian blur (sigma 2), then a hard threshold: < 127 -> 0, else 255.
4. alpha matting: a trimap from the mask: >= foreground_threshold is certain foreground, <=
   background_threshold certain background, each shrunk by erode_size pixels (cv2.erode with a
   (2 x erode_size + 1) square); the rest is the unknown band. Certain pixels become exactly
   255 / 0; in the band the alpha is He et al.'s colour guided filter of the mask, guided by the
   image's RGB (eps 1e-4 on [0, 1] colours), applied GUIDE_PASSES (3) times with the certain
   pixels pinned to 1 / 0 before each pass. The window radius is the band's mean width (band
   pixels / pixels on the boundary of mask >= 128, rounded up), within 2..64, so each band pixel
   sees colours from both sides. Locally the alpha becomes a linear function of the colours, so
   it moves to the subject's real edge (hair, fur) from the model's blurred one.
   alpha_matting None decides per image from the plain mask, before post-processing: matting
   runs when the mask's edge is soft, i.e. (pixels with 0.05 < alpha < 0.95) / (pixels on the
   boundary of mask >= 128) -- the soft band's mean width in image pixels -- times
   min(1, sqrt(model input area / image area)) -- so it is counted in the coarser of the two
   pixel grids, where an upscaled crisp edge stays crisp -- is at least SOFT_EDGE_WIDTH (3).
5. result (steps 3 and 4 run in that order): only_mask -> the final alpha, after smoothing and
   matting, as a mode "L" image (rembg would return its mask before matting). Otherwise an RGBA
   image with the image's own RGB values (unchanged, also where transparent) and the final
   alpha; with a background colour, that cut-out composited "over" an RGBA canvas of the colour
   (PIL's alpha_composite).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_model
from transformers import AutoConfig, AutoModelForImageSegmentation
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from models.utility_models import LAYOUTS, Utility, UtilityModel
from pipelines.jobs import BackgroundRemovalJob, ErrorCode, JobError, JobResult
from pipelines.runners.common import RunContext

WEIGHTS = "model.safetensors"
AUTO_CLASS = "AutoModelForImageSegmentation"  # the auto_map entry naming the model class
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SOFT_LOW, SOFT_HIGH = 0.05, 0.95  # alpha values strictly between count as "soft"
SOFT_EDGE_WIDTH = 3.0  # mean soft-band width (coarser pixels) from which auto matting runs
MIN_GUIDE_RADIUS = 2  # the guided filter's window radius: at least...
MAX_GUIDE_RADIUS = 64  # ... and at most
GUIDE_PASSES = 3  # each pass sharpens the band further towards the colours' edges
GUIDE_EPS = 1e-4  # its regularisation: colour variance below ~1% of the range counts as flat
SMOOTH_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
SMOOTH_BLUR = (5, 5)
SMOOTH_SIGMA = 2.0
SMOOTH_THRESHOLD = 127

Module = torch.nn.Module


# --- families --------------------------------------------------------------------------------


def _resize_pil(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """BiRefNet's transforms.Resize on a PIL image: PIL's bilinear (antialiased) filter."""
    resized = image.resize(size, Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized, np.float32) / 255.0).permute(2, 0, 1)


def _resize_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """RMBG-1.4's reference preprocessing: F.interpolate (bilinear) on the 0..255 pixels."""
    pixels = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None]
    resized = F.interpolate(pixels, size=(size[1], size[0]), mode="bilinear")
    return resized[0] / 255.0


def _first_side_output(output: Any) -> torch.Tensor:
    """RMBG-1.4 returns (side masks, features); side masks[0] is already a sigmoid."""
    return output[0][0]


def _last_logits(output: Any) -> torch.Tensor:
    """BiRefNet returns its predictions coarse to fine, as logits: the last one is the mask."""
    return output[-1].sigmoid()


def _from_pretrained(folder: Path) -> Module:
    return AutoModelForImageSegmentation.from_pretrained(
        str(folder), trust_remote_code=True, local_files_only=True
    )


def _construct(folder: Path) -> Module:
    """Build the folder's model class the way from_pretrained would (cls(config)) and read
    model.safetensors strictly. BiRefNet's code replaces `self.config` with a plain object
    after PreTrainedModel's init, which transformers 5's from_pretrained trips over (it reads
    config.model_type from every submodule)."""
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
    reference = (getattr(config, "auto_map", None) or {}).get(AUTO_CLASS)
    if reference is None:
        raise ValueError(f"config.json's auto_map has no {AUTO_CLASS} entry")
    model_class = get_class_from_dynamic_module(reference, str(folder), local_files_only=True)
    model = model_class(config)
    load_model(model, str(folder / WEIGHTS), strict=True)
    return model


@dataclass(frozen=True)
class Family:
    """How one model family is fed and read (its reference inference code's conventions)."""

    size: tuple[int, int]  # (width, height) every image is resized to
    mean: tuple[float, float, float]  # normalisation of the [0, 1] RGB input
    std: tuple[float, float, float]
    resize: Callable[[Image.Image, tuple[int, int]], torch.Tensor]  # -> 3 x H x W in [0, 1]
    mask: Callable[[Any], torch.Tensor]  # the forward's output -> N x 1 x H x W in [0, 1]
    stretch: bool  # min-max normalise each mask after resizing it back
    load: Callable[[Path], Module]


# Keyed by config.json's architectures[0].
FAMILIES: dict[str, Family] = {
    "BriaRMBG": Family(  # briaai/RMBG-1.4
        size=(1024, 1024),
        mean=(0.5, 0.5, 0.5),
        std=(1.0, 1.0, 1.0),
        resize=_resize_tensor,
        mask=_first_side_output,
        stretch=True,
        load=_from_pretrained,
    ),
    "BiRefNet": Family(  # briaai/RMBG-2.0, ZhengPeng7/BiRefNet
        size=(1024, 1024),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize=_resize_pil,
        mask=_last_logits,
        stretch=False,
        load=_construct,
    ),
}


@dataclass(frozen=True)
class Segmenter:
    """A loaded model and its family's conventions."""

    model: Module
    family: Family


def family_of(folder: Path) -> Family:
    """The folder's family from config.json; JobError MODEL_UNAVAILABLE when unsupported or
    incomplete (the message names what to install where)."""
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
        architecture = (config.get("architectures") or [None])[0]
    except (OSError, ValueError, AttributeError) as error:
        raise JobError(ErrorCode.MODEL_UNAVAILABLE, f"cannot read {config_file}: {error}") from None
    family = FAMILIES.get(architecture) if isinstance(architecture, str) else None
    if family is None:
        supported = ", ".join(FAMILIES)
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"{folder.name}: background-removal architecture {architecture!r} is not supported "
            f"(config.json architectures[0] must be one of: {supported})",
        )
    if not (folder / WEIGHTS).is_file():
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the background-removal model {folder} has no {WEIGHTS}: install "
            f"{LAYOUTS[Utility.BACKGROUND_REMOVAL].example}",
        )
    return family


def load_segmenter(folder: Path, device: str, dtype: torch.dtype) -> Segmenter:
    family = family_of(folder)
    try:
        model = family.load(folder)
    except Exception as error:  # remote code can fail in any way: the model is unusable
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"cannot load the background-removal model {folder}: {error}",
        ) from error
    return Segmenter(model.to(device=device, dtype=dtype).eval(), family)


# --- the job ---------------------------------------------------------------------------------


def check(job: BackgroundRemovalJob) -> None:
    """Refuse at submit what cannot run (JobError INVALID_INPUT)."""
    if not job.images:
        raise JobError(ErrorCode.INVALID_INPUT, "background removal needs at least one image")
    for name in ("foreground_threshold", "background_threshold", "erode_size"):
        value = getattr(job, name)
        if not 0 <= value <= 255:
            raise JobError(ErrorCode.INVALID_INPUT, f"{name} must be 0..255, not {value}")
    if job.alpha_matting is not False and job.background_threshold >= job.foreground_threshold:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"background_threshold ({job.background_threshold}) must be below "
            f"foreground_threshold ({job.foreground_threshold}) for alpha matting",
        )
    if job.background is not None and (
        len(job.background) != 4 or not all(0 <= v <= 255 for v in job.background)
    ):
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"background must be four values 0..255 (R, G, B, A), not {job.background}",
        )
    box = job.box
    if box is None:
        return
    if box.width <= 0 or box.height <= 0:
        raise JobError(
            ErrorCode.INVALID_INPUT, f"the box is empty ({box.width} x {box.height} pixels)"
        )
    for i, image in enumerate(job.images):
        if (
            box.left < 0
            or box.top < 0
            or box.left + box.width > image.width
            or box.top + box.height > image.height
        ):
            raise JobError(
                ErrorCode.INVALID_INPUT,
                f"the box (left {box.left}, top {box.top}, {box.width} x {box.height}) is not "
                f"inside image {i + 1} ({image.width} x {image.height})",
            )


def run(
    jobs: Sequence[BackgroundRemovalJob], model: UtilityModel, ctx: RunContext
) -> list[JobResult]:
    """One forward pass for every image of every job, then each job's own finishing."""
    for job in jobs:
        check(job)
    segmenter = _segmenter(model, ctx)
    inputs = [[_input(image, job) for image in job.images] for job in jobs]
    masks = iter(predict(segmenter, [image for images in inputs for image in images]))
    ctx.report_step(1, 2)
    size = segmenter.family.size
    results = []
    for job, images in zip(jobs, inputs, strict=True):
        outputs = [_finish(job, image, next(masks), size) for image in images]
        results.append(JobResult(images=tuple(outputs), seeds=job.seeds))
    ctx.report_step(2, 2)
    return results


def predict(segmenter: Segmenter, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """Each RGB image's plain mask (uint8, the image's size): one forward pass for all."""
    family = segmenter.family
    parameter = next(segmenter.model.parameters())
    mean = torch.tensor(family.mean).view(3, 1, 1)
    std = torch.tensor(family.std).view(3, 1, 1)
    batch = torch.stack([(family.resize(image, family.size) - mean) / std for image in images])
    with torch.inference_mode():  # the worker's already; also when called directly
        output = segmenter.model(batch.to(device=parameter.device, dtype=parameter.dtype))
        probabilities = family.mask(output).float().cpu()
    return [
        _plain_mask(probabilities[i : i + 1], image.size, family.stretch)
        for i, image in enumerate(images)
    ]


def _plain_mask(probability: torch.Tensor, size: tuple[int, int], stretch: bool) -> np.ndarray:
    mask = F.interpolate(probability, size=(size[1], size[0]), mode="bilinear")[0, 0]
    if stretch:
        low, high = mask.min(), mask.max()
        mask = (mask - low) / (high - low) if high > low else torch.zeros_like(mask)
    return (mask.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _segmenter(model: UtilityModel, ctx: RunContext) -> Segmenter:
    if ctx.resources is None:
        raise JobError(ErrorCode.INTERNAL, "background removal needs the worker's resources")
    cache = ctx.resources.cache
    return cache.component(
        (Utility.BACKGROUND_REMOVAL.value, str(model.path)),
        lambda: load_segmenter(model.path, cache.device, cache.dtype),
    )


def _input(image: Image.Image, job: BackgroundRemovalJob) -> Image.Image:
    """The RGB image the model sees: the job's box of it, if any."""
    rgb = image.convert("RGB")
    box = job.box
    if box is None:
        return rgb
    return rgb.crop((box.left, box.top, box.left + box.width, box.top + box.height))


def _finish(
    job: BackgroundRemovalJob, image: Image.Image, mask: np.ndarray, model_size: tuple[int, int]
) -> Image.Image:
    matting = job.alpha_matting
    if matting is None:
        matting = soft_edge(mask, image.size, model_size)
    if job.post_process_mask:
        mask = smooth(mask)
    if matting:
        mask = matte(
            np.asarray(image),
            mask,
            job.foreground_threshold,
            job.background_threshold,
            job.erode_size,
        )
    alpha = Image.fromarray(mask, "L")
    if job.only_mask:
        return alpha
    cutout = image.convert("RGBA")
    cutout.putalpha(alpha)
    if job.background is None:
        return cutout
    return Image.alpha_composite(Image.new("RGBA", image.size, tuple(job.background)), cutout)


# --- mask refinement -------------------------------------------------------------------------


def soft_edge(mask: np.ndarray, image_size: tuple[int, int], model_size: tuple[int, int]) -> bool:
    """Whether the mask's edge is soft enough to need matting (see the module docstring)."""
    alpha = mask.astype(np.float32) / 255.0
    soft = np.count_nonzero((alpha > SOFT_LOW) & (alpha < SOFT_HIGH))
    edge = _boundary(mask)
    if edge == 0:
        return False
    scale = min(1.0, math.sqrt(model_size[0] * model_size[1] / (image_size[0] * image_size[1])))
    return bool(soft / edge * scale >= SOFT_EDGE_WIDTH)


def _boundary(mask: np.ndarray) -> int:
    """How many pixels lie on the inner boundary of mask >= 128: the subject's outline length."""
    solid = (mask >= 128).astype(np.uint8)
    return int(np.count_nonzero(solid != cv2.erode(solid, np.ones((3, 3), np.uint8))))


def smooth(mask: np.ndarray) -> np.ndarray:
    """rembg's post-processing: opening, Gaussian blur, hard threshold (0 or 255)."""
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, SMOOTH_KERNEL)
    blurred = cv2.GaussianBlur(opened, SMOOTH_BLUR, sigmaX=SMOOTH_SIGMA, sigmaY=SMOOTH_SIGMA)
    return np.where(blurred < SMOOTH_THRESHOLD, 0, 255).astype(np.uint8)


def trimap(
    mask: np.ndarray, foreground_threshold: int, background_threshold: int, erode_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(certain foreground, certain background) as boolean maps, each eroded by erode_size."""
    foreground: np.ndarray = (mask >= foreground_threshold).astype(np.uint8)
    background: np.ndarray = (mask <= background_threshold).astype(np.uint8)
    if erode_size > 0:
        kernel = np.ones((2 * erode_size + 1, 2 * erode_size + 1), np.uint8)
        foreground = cv2.erode(foreground, kernel)
        background = cv2.erode(background, kernel)
    return foreground.astype(bool), background.astype(bool)


def matte(
    rgb: np.ndarray,
    mask: np.ndarray,
    foreground_threshold: int,
    background_threshold: int,
    erode_size: int,
) -> np.ndarray:
    """The alpha: 255 / 0 where certain, the guided filter's solution in the unknown band."""
    foreground, background = trimap(mask, foreground_threshold, background_threshold, erode_size)
    unknown = ~(foreground | background)
    if not unknown.any():
        return np.where(foreground, 255, 0).astype(np.uint8)
    # The window spans the band's mean width: every band pixel then sees both sides' colours.
    width = math.ceil(np.count_nonzero(unknown) / max(_boundary(mask), 1))
    radius = min(max(MIN_GUIDE_RADIUS, width), MAX_GUIDE_RADIUS)
    # A pass reads pixels up to 2 x radius away: filter only the band's surroundings.
    rows, cols = np.nonzero(unknown)
    margin = GUIDE_PASSES * (2 * radius + 1)
    top, bottom = max(rows.min() - margin, 0), min(rows.max() + margin + 1, mask.shape[0])
    left, right = max(cols.min() - margin, 0), min(cols.max() + margin + 1, mask.shape[1])
    window = np.s_[top:bottom, left:right]
    certain, fixed = ~unknown[window], foreground[window].astype(np.float64)
    guide = rgb[window].astype(np.float64) / 255.0
    alpha = np.where(certain, fixed, mask[window] / 255.0)
    for _ in range(GUIDE_PASSES):
        solved = guided_filter(guide, alpha, radius, GUIDE_EPS)
        alpha = np.where(certain, fixed, np.clip(solved, 0.0, 1.0))
    result = np.where(foreground, 255, 0).astype(np.uint8)
    result[window] = (alpha * 255).round().astype(np.uint8)
    return result


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's colour guided filter: in every (2r+1)^2 window the output is a linear
    function of the guide's colours fitted to the source (ridge eps), averaged over windows."""
    size = (2 * radius + 1, 2 * radius + 1)

    def mean(values: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(values, -1, size)

    mean_guide = mean(guide)  # H x W x 3
    mean_source = mean(source)
    covariance = mean(guide * source[..., None]) - mean_guide * mean_source[..., None]
    variance = np.empty((*source.shape, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            value = mean(guide[..., i] * guide[..., j]) - mean_guide[..., i] * mean_guide[..., j]
            variance[..., i, j] = variance[..., j, i] = value
    variance += eps * np.eye(3)
    slope = np.linalg.solve(variance, covariance[..., None])[..., 0]
    offset = mean_source - (slope * mean_guide).sum(axis=-1)
    return (mean(slope) * guide).sum(axis=-1) + mean(offset)
