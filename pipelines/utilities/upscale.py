"""Upscaling: an ESRGAN-class super-resolution model (any architecture spandrel detects) enlarges
the image, Lanczos makes the exact size.

The output size is round(input x factor) per side when the job gives no width / height; with
width and height (PICPIK's ResizeImage) it is exactly that size; with one of them the other side
keeps the input's aspect ratio (rounded).

Enlarging (either side grows): the model runs, and runs again while the result is still smaller
than the target on some side, at most MAX_PASSES times (a 2x model reaches 4x in two passes);
then a Lanczos resize makes the exact size. A pass after the first starts from its predecessor
shrunk (Lanczos) to what it needs, ceil(target / scale) per side: the model never computes
pixels the final resize would throw away, so a result just short of the target costs no huge
intermediate image. Shrinking or keeping the size: Lanczos only, the model is not loaded.

RGBA (or otherwise transparent) images: the model sees the colour channels, the alpha channel is
resized with Lanczos, and both are put back together. Other modes are converted to RGB.

Memory stays bounded whatever the image size: the model sees tiles of TILE x TILE input pixels,
each with OVERLAP pixels of surrounding image as context; its output for the context is cropped
away and the tiles' centres are stitched into a uint8 canvas on the CPU, so the seams match an
untiled run as long as OVERLAP covers the model's receptive field (ESRGAN-class models look a
few pixels around; 32 is the usual margin). An image no larger than a tile runs whole. Progress
is reported per tile, over all passes.

Weights: .safetensors, or .pth / .pt state dicts read with torch's weights-only unpickler (no
pickled code runs, so no opt-in is needed). A file that holds anything else (pickled objects,
TorchScript) is refused, allow_pickle or not: easel never unpickles code for utility models.
The model runs on the worker's device, in its half precision only where spandrel says the
architecture supports it (fp32 otherwise).
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from spandrel import (
    ImageModelDescriptor,
    ModelDescriptor,
    ModelLoader,
    ModelTiling,
    UnsupportedModelError,
    canonicalize_state_dict,
)

from models.cache import PipelineCache
from models.utility_models import UtilityModel
from pipelines.jobs import ErrorCode, JobError, JobResult, UpscaleJob
from pipelines.runners.common import RunContext, StepReporter

TILE = 512  # input pixels per tile side
OVERLAP = 32  # input pixels of context around each tile, cropped from its output
MAX_PASSES = 3  # model passes per image at most (a 2x model: 8x, a 4x model: 64x)
MIN_FACTOR, MAX_FACTOR = 1.0, 4.0  # Runware's upscaleFactor is 2..4; 1 (a clean-up) is allowed
MIN_SIDE, MAX_SIDE = 64, 4096  # PICPIK ResizeImage's width / height
LANCZOS = Image.Resampling.LANCZOS
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt")

Size = tuple[int, int]  # (width, height)
DescriptorSource = Callable[[], ImageModelDescriptor]  # loads the model (cached) when called


def check(job: UpscaleJob) -> None:
    """A factor or a size within what the protocols allow (JobError INVALID_INPUT)."""
    if job.width is None and job.height is None:
        if not (math.isfinite(job.factor) and MIN_FACTOR <= job.factor <= MAX_FACTOR):
            raise JobError(
                ErrorCode.INVALID_INPUT,
                f"upscale factor {job.factor} is out of range ({MIN_FACTOR:g} to {MAX_FACTOR:g})",
            )
    for name, value in (("width", job.width), ("height", job.height)):
        if value is not None and not MIN_SIDE <= value <= MAX_SIDE:
            raise JobError(
                ErrorCode.INVALID_INPUT,
                f"upscale {name} {value} is out of range ({MIN_SIDE} to {MAX_SIDE} pixels)",
            )
    if min(job.image.size) < 1:
        raise JobError(ErrorCode.INVALID_INPUT, "the image to upscale is empty")


def run(jobs: Sequence[UpscaleJob], model: UtilityModel, ctx: RunContext) -> list[JobResult]:
    """Each job alone, in order: one image each."""
    assert ctx.resources is not None, "utility jobs need the worker's resources"
    cache = ctx.resources.cache
    results = []
    for job in jobs:
        check(job)
        image = upscale(job, lambda: _descriptor(model, cache), ctx.report_step)
        results.append(JobResult(images=(image,), seeds=job.seeds))
    return results


def target_size(job: UpscaleJob) -> Size:
    """The output size (see the module's docstring)."""
    width, height = job.image.size
    if job.width is None and job.height is None:
        return max(1, round(width * job.factor)), max(1, round(height * job.factor))
    if job.width is not None and job.height is not None:
        return job.width, job.height
    if job.width is not None:
        return job.width, max(1, round(height * job.width / width))
    assert job.height is not None
    return max(1, round(width * job.height / height)), job.height


def pass_sizes(size: Size, target: Size, scale: int) -> list[Size]:
    """The input size of each model pass: none when the image is already as large as the target
    on both sides; a later pass's input is shrunk to ceil(target / scale) where larger."""
    need = (math.ceil(target[0] / scale), math.ceil(target[1] / scale))
    sizes: list[Size] = []
    current = size
    while len(sizes) < MAX_PASSES and (current[0] < target[0] or current[1] < target[1]):
        if sizes:
            current = (min(current[0], need[0]), min(current[1], need[1]))
        sizes.append(current)
        current = (current[0] * scale, current[1] * scale)
    return sizes


def upscale(job: UpscaleJob, descriptor: DescriptorSource, report: StepReporter) -> Image.Image:
    """The job's image at target_size(job); `descriptor()` loads the model when it is needed."""
    target = target_size(job)
    image = job.image.convert("RGBA") if _has_alpha(job.image) else job.image
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    rgb = image.convert("RGB")
    if rgb.width < target[0] or rgb.height < target[1]:
        model = descriptor()
        tiled = model.tiling is not ModelTiling.INTERNAL  # it tiles itself: give it all
        sizes = pass_sizes(rgb.size, target, model.scale)
        total = sum(len(tiles(size, tiled)) for size in sizes)
        done = 0
        for size in sizes:
            if rgb.size != size:
                rgb = rgb.resize(size, LANCZOS)
            rgb, done = _model_pass(model, rgb, tiled, (report, done, total))
    else:
        report(1, 1)
    if rgb.size != target:
        rgb = rgb.resize(target, LANCZOS)
    if alpha is not None:
        rgb.putalpha(alpha.resize(target, LANCZOS))
    return rgb


def tiles(size: Size, tiled: bool = True) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) input boxes the image is cut into, before context."""
    width, height = size
    if not tiled or (width <= TILE and height <= TILE):
        return [(0, 0, width, height)]
    return [
        (left, top, min(left + TILE, width), min(top + TILE, height))
        for top in range(0, height, TILE)
        for left in range(0, width, TILE)
    ]


def _model_pass(
    model: ImageModelDescriptor,
    image: Image.Image,
    tiled: bool,
    progress: tuple[StepReporter, int, int],
) -> tuple[Image.Image, int]:
    """One model pass over the image, tile by tile; progress is (report, steps done before,
    total steps); returns the steps done after it."""
    report, done, total = progress
    scale = model.scale
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    canvas = np.empty((image.height * scale, image.width * scale, 3), np.uint8)
    for left, top, right, bottom in tiles(image.size, tiled):
        x0, y0 = max(0, left - OVERLAP), max(0, top - OVERLAP)
        x1, y1 = min(image.width, right + OVERLAP), min(image.height, bottom + OVERLAP)
        tile = pixels[:, y0:y1, x0:x1].unsqueeze(0).to(model.device, model.dtype)
        output = model(tile)[0]
        inner = output[
            :,
            (top - y0) * scale : (bottom - y0) * scale,
            (left - x0) * scale : (right - x0) * scale,
        ]
        canvas[top * scale : bottom * scale, left * scale : right * scale] = _to_uint8(inner)
        done += 1
        report(done, total)
    return Image.fromarray(canvas, "RGB"), done


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """A CHW tensor in [0, 1] as HWC bytes."""
    return (
        pixels.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    )


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


# --- loading -------------------------------------------------------------------------------------


def _descriptor(model: UtilityModel, cache: PipelineCache) -> ImageModelDescriptor:
    """The upscaler, loaded once per device (the cache keeps it)."""
    return cache.component(
        ("upscale", str(model.path)), lambda: load_upscaler(model.path, cache.device, cache.dtype)
    )


def load_upscaler(path: Path, device: str, dtype: torch.dtype) -> ImageModelDescriptor:
    """An image-to-image super-resolution model from its weights file, on `device`, in `dtype`
    where the architecture supports it (fp32 otherwise); JobError MODEL_UNAVAILABLE naming the
    file when it cannot be one."""
    state_dict = _state_dict(path)
    try:
        loaded = ModelLoader("cpu").load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise _unavailable(
            f"{path} is not a super-resolution model easel recognises (spandrel knows ESRGAN, "
            "Real-ESRGAN, SwinIR, HAT, DAT, OmniSR... architectures)"
        ) from None
    except Exception as error:  # a malformed file of a known architecture: its shapes disagree
        raise _unavailable(
            f"{path} looks like an upscaler but does not load: {_first_line(error)}"
        ) from None
    descriptor = _image_to_image(loaded, path)
    descriptor.to(device, _precision(descriptor, dtype))
    descriptor.eval()
    return descriptor


def _image_to_image(loaded: ModelDescriptor, path: Path) -> ImageModelDescriptor:
    """The descriptor, if it enlarges RGB images; otherwise why it cannot."""
    name = loaded.architecture.name
    if not isinstance(loaded, ImageModelDescriptor):
        raise _unavailable(
            f"{path} is a {name} model ({loaded.purpose.lower()}), not an image upscaler"
        )
    if loaded.scale < 2:
        raise _unavailable(
            f"{path} is a {name} {loaded.purpose.lower()} model that keeps the image size "
            "(scale 1), not an upscaler"
        )
    if loaded.input_channels != 3 or loaded.output_channels != 3:
        raise _unavailable(
            f"{path} is a {name} model for {loaded.input_channels}-channel images; easel "
            "upscales RGB (3-channel) images"
        )
    return loaded


def _precision(descriptor: ImageModelDescriptor, dtype: torch.dtype) -> torch.dtype:
    """The worker's dtype where the architecture runs in it (spandrel says which), else fp32."""
    supported = {
        torch.float16: descriptor.supports_half,
        torch.bfloat16: descriptor.supports_bfloat16,
    }
    return dtype if supported.get(dtype, dtype == torch.float32) else torch.float32


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, read without running pickled code."""
    if not path.is_file():
        raise _unavailable(f"{path} does not exist (moved or deleted since it was found?)")
    try:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            with warnings.catch_warnings():  # "dispatching to torch.jit.load": it refuses
                warnings.filterwarnings("ignore", "'torch.load' received a zip file")
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            loaded = load_file(path, device="cpu")
    except pickle.UnpicklingError as error:
        raise _unavailable(
            f"{path} holds pickled Python objects besides its tensors, which easel does not "
            f"unpickle (they can run code): convert it to .safetensors ({_unpickle_reason(error)})"
        ) from None
    except RuntimeError as error:
        if "TorchScript" not in str(error):
            raise _unavailable(f"{path} cannot be read: {_first_line(error)}") from None
        raise _unavailable(
            f"{path} is a TorchScript archive (code), which easel does not load: use the "
            "model's .safetensors or .pth state dict"
        ) from None
    except (OSError, SafetensorError, EOFError, ValueError) as error:
        raise _unavailable(f"{path} cannot be read: {_first_line(error)}") from None
    tensors = (
        canonicalize_state_dict(loaded) if isinstance(loaded, dict) else {}
    )  # training files wrap the weights (params_ema, state_dict...) beside counters
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise _unavailable(f"{path} does not hold a state dict (a mapping of tensors)")
    return tensors


def _unavailable(message: str) -> JobError:
    return JobError(ErrorCode.MODEL_UNAVAILABLE, message)


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n")[0]


def _unpickle_reason(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused (its message is mostly advice to load the file
    unsafely)."""
    marker = "WeightsUnpickler error:"
    text = str(error)
    if marker not in text:
        return _first_line(error)
    return text.split(marker, 1)[1].split(". ", 1)[0].strip()
