"""IP-Adapters and the CLIP image encoders they need: found by convention, loaded onto a device.

Layout, as ComfyUI / A1111 users keep these files (file names as h94/IP-Adapter publishes them):

    models_dir/
      ipadapter/ (or ip-adapter/)      the adapters, one file each
        ip-adapter_sd15.safetensors    flat keys: image_proj.* and ip_adapter.<n>.to_k_ip/to_v_ip
        ip-adapter_sdxl.bin            h94's pickle {"image_proj": {...}, "ip_adapter": {...}},
                                       loaded only with --allow-pickle, with torch's weights-only
                                       unpickler
        image_encoder/                 optional: an encoder next to its adapters (h94's layout)
      clip_vision/ (or clip-vision/)   image encoders (ComfyUI's folder name)
        CLIP-ViT-H-14/                 a transformers CLIPVisionModelWithProjection folder:
          config.json                  config.json + model.safetensors (h94's
          model.safetensors            models/image_encoder/ copied as it is)

No manifest pairs an adapter with its encoder: the adapter's image projection says what it reads.
A plain adapter reads the encoder's image embedding (config `projection_dim` wide); Plus and Full
adapters read its penultimate hidden states (`hidden_size` wide). The encoder used is the first
folder, in this order, whose config has that width:
  1. `image_encoder/` next to the adapter file (h94's `models/` and `sdxl_models/` folders);
  2. the folders under `clip_vision/`, by name;
  3. any other `image_encoder/` under the adapter's kind folder, by path (h94's
     `sdxl_models/ip-adapter_sdxl_vit-h` reads ViT-H from `models/image_encoder/`, not the bigG
     encoder next to it).
ComfyUI keeps an encoder as one file (clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors,
h94's model.safetensors renamed); easel needs it in a folder with its release's config.json, as
the file alone does not say the encoder's activation or head count.
Real encoders differ in these widths (ViT-H/14: projection 1024, hidden 1280; ViT-bigG/14: 1280
and 1664; ViT-L/14: 768 and 1024), so one encoder of each kind can sit side by side.
FaceID adapters read insightface face embeddings, not a CLIP image: they are refused.

Only the models directory scan's catalogue says which adapters exist; encoders are not catalogued
(clients never name them). Failures raise `ModelLoadError`, whose message names what to install
and where.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection

from models.arch import (
    CONTEXT_DIMS,
    ModelDetectionError,
    image_encoder_config,
    read_safetensors_header,
)
from models.catalogue import ModelSpec, WeightFormat
from models.loader import PICKLE_OPT_IN, ModelLoadError

# The two parts of an adapter, as key prefixes of h94's flat files and keys of its pickles.
PARTS: tuple[str, ...] = ("image_proj", "ip_adapter")
CONTEXT_KEY_SUFFIX = ".to_k_ip.weight"  # [hidden width, context width] per cross-attention

IMAGE_ENCODER_FOLDERS: frozenset[str] = frozenset({"clip_vision", "clip-vision"})  # lower case
SIBLING_ENCODER = "image_encoder"

# Architecture -> the cross-attention (context) width of its adapters.
ARCHITECTURE_WIDTHS = {architecture: width for width, architecture in CONTEXT_DIMS.items()}

IPAdapterWeights = dict[str, dict[str, torch.Tensor]]  # {"image_proj": ..., "ip_adapter": ...}


@dataclass(frozen=True)
class EncoderInput:
    """What an adapter's image projection reads: an encoder config field and its width."""

    field: str  # "projection_dim" (the image embedding) or "hidden_size" (hidden states)
    width: int


@dataclass(frozen=True)
class ProjectionLayout:
    """One image_proj layout: recognised by a key, reading the last dim of `input_key`."""

    marker: str
    name: str
    input_key: str | None = None  # None: not a CLIP-image adapter
    field: str = ""


# Checked in diffusers' order (loaders/unet.py); the first whose marker is present wins.
PROJECTION_LAYOUTS: tuple[ProjectionLayout, ...] = (
    ProjectionLayout("proj.weight", "IP-Adapter", "proj.weight", "projection_dim"),
    ProjectionLayout("proj.3.weight", "IP-Adapter Full", "proj.0.weight", "hidden_size"),
    ProjectionLayout("perceiver_resampler.proj_in.weight", "IP-Adapter FaceID Plus"),
    ProjectionLayout("norm.weight", "IP-Adapter FaceID"),
    ProjectionLayout("latents", "IP-Adapter Plus", "proj_in.weight", "hidden_size"),
)

# Which published encoder has a width: for the hint when none is installed.
KNOWN_ENCODERS: dict[EncoderInput, str] = {
    EncoderInput("projection_dim", 1024): "CLIP ViT-H/14 (h94/IP-Adapter: models/image_encoder)",
    EncoderInput("hidden_size", 1280): "CLIP ViT-H/14 (h94/IP-Adapter: models/image_encoder)",
    EncoderInput("projection_dim", 1280): (
        "CLIP ViT-bigG/14 (h94/IP-Adapter: sdxl_models/image_encoder)"
    ),
    EncoderInput("hidden_size", 1664): (
        "CLIP ViT-bigG/14 (h94/IP-Adapter: sdxl_models/image_encoder)"
    ),
}


# --- adapter weights -----------------------------------------------------------------------------


def load_ip_adapter_weights(
    spec: ModelSpec, *, device: str, dtype: torch.dtype, allow_pickle: bool = False
) -> IPAdapterWeights:
    """The adapter's two parts as the state dict diffusers' `load_ip_adapter` takes, on device."""
    if not spec.path.is_file():
        raise ModelLoadError(f"{spec.code}: {spec.path} does not exist (moved or deleted?)")
    if spec.weight_format is WeightFormat.PICKLE:
        if not allow_pickle:
            raise ModelLoadError(
                f"{spec.code}: {spec.path} is a pickle file; easel loads those only with "
                f"{PICKLE_OPT_IN}. Better: use the .safetensors release of this adapter."
            )
        loaded = _load_pickle(spec)
    else:
        try:
            loaded = load_file(spec.path, device="cpu")
        except (OSError, SafetensorError) as e:
            raise ModelLoadError(f"{spec.code}: cannot read {spec.path}: {e}") from e
    weights = _nested(loaded)
    if weights is None or not all(weights.get(part) for part in PARTS):
        raise ModelLoadError(
            f"{spec.code}: {spec.path} is not an IP-Adapter in h94's layout (image_proj.* and "
            "ip_adapter.* weights)"
        )
    return {
        part: {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            for k, v in tensors.items()
        }
        for part, tensors in weights.items()
    }


def _load_pickle(spec: ModelSpec) -> object:
    try:
        return torch.load(spec.path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise ModelLoadError(
            f"{spec.code}: cannot read {spec.path} with torch's weights-only loader "
            f"({type(e).__name__}): use the .safetensors release of this adapter"
        ) from e


def _nested(loaded: object) -> IPAdapterWeights | None:
    """h94's nested pickle as it is; a flat `image_proj.*` / `ip_adapter.*` dict split in two."""
    if not isinstance(loaded, dict):
        return None
    if all(isinstance(loaded.get(part), dict) for part in PARTS):
        return {part: dict(loaded[part]) for part in PARTS}
    nested: IPAdapterWeights = {part: {} for part in PARTS}
    for key, value in loaded.items():
        part, _, name = str(key).partition(".")
        if part in nested and isinstance(value, torch.Tensor):
            nested[part][name] = value
    return nested


def encoder_input(spec: ModelSpec, weights: IPAdapterWeights) -> EncoderInput:
    """What the adapter reads from the image encoder; refuses non-CLIP (FaceID) adapters."""
    image_proj = weights["image_proj"]
    for layout in PROJECTION_LAYOUTS:
        if layout.marker not in image_proj:
            continue
        if layout.input_key is None or layout.input_key not in image_proj:
            raise ModelLoadError(
                f"{spec.code}: {layout.name} adapters read face embeddings, not a CLIP image "
                "encoder's: not supported. Use a plain, Plus or Full IP-Adapter."
            )
        return EncoderInput(layout.field, image_proj[layout.input_key].shape[-1])
    sample = ", ".join(sorted(image_proj)[:3])
    raise ModelLoadError(f"{spec.code}: unknown IP-Adapter image_proj layout ({sample}...)")


def context_width(weights: IPAdapterWeights) -> int | None:
    """The cross-attention width the adapter was trained for (768 SD 1.x, 2048 SDXL)."""
    return next(
        (
            tensor.shape[-1]
            for key, tensor in weights["ip_adapter"].items()
            if ("." + key).endswith(CONTEXT_KEY_SUFFIX)
        ),
        None,
    )


def file_context_width(spec: ModelSpec) -> int | None:
    """An installed adapter's cross-attention width, without loading it: from the safetensors
    header, else (pickles) from its architecture as the scan or the manifest set it."""
    if spec.weight_format is WeightFormat.SAFETENSORS:
        try:
            header = read_safetensors_header(spec.path)
        except ModelDetectionError:
            return None
        return next(
            (
                info.shape[-1]
                for name, info in header.items()
                if name.endswith(CONTEXT_KEY_SUFFIX) and len(info.shape) == 2
            ),
            None,
        )
    return ARCHITECTURE_WIDTHS.get(spec.architecture)


# --- image encoders ------------------------------------------------------------------------------


def encoder_widths(folder: Path) -> dict[str, int]:
    """An image-encoder folder's widths by config field; {} when it is not one."""
    config = image_encoder_config(folder)
    if config is None:
        return {}
    vision = config.get("vision_config")  # a full CLIPConfig keeps them one level down
    vision = vision if isinstance(vision, dict) else config
    widths = {
        "projection_dim": config.get("projection_dim"),
        "hidden_size": vision.get("hidden_size"),
    }
    return {field: width for field, width in widths.items() if isinstance(width, int)}


def encoder_candidates(adapter_path: Path, models_dir: Path | None) -> list[Path]:
    """Image-encoder folders in the order the module docstring gives, each once."""
    adapter_path = adapter_path.resolve()
    ordered = [adapter_path.parent / SIBLING_ENCODER]
    kind_folder = None
    if models_dir is not None:
        models_dir = models_dir.resolve()  # the scan's paths are resolved ones
        roots = _children(models_dir)
        for root in roots:
            if root.name.lower() in IMAGE_ENCODER_FOLDERS:
                ordered += sorted(p.parent for p in root.rglob("config.json"))
        if adapter_path.is_relative_to(models_dir) and adapter_path != models_dir:
            kind_folder = models_dir / adapter_path.relative_to(models_dir).parts[0]
    if kind_folder is not None and kind_folder.is_dir():
        ordered += sorted(kind_folder.rglob(SIBLING_ENCODER))
    unique: list[Path] = []
    for folder in ordered:
        if folder.is_dir() and folder not in unique:
            unique.append(folder)
    return unique


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def image_encoder_for(spec: ModelSpec, need: EncoderInput, models_dir: Path | None) -> Path:
    """The encoder folder the adapter uses; a ModelLoadError naming what to install if none."""
    seen: list[str] = []
    for folder in encoder_candidates(spec.path, models_dir):
        widths = encoder_widths(folder)
        if widths.get(need.field) == need.width:
            return folder
        if widths:
            seen.append(f"{folder} ({need.field} {widths.get(need.field)})")
    which = KNOWN_ENCODERS.get(need, "a CLIP image encoder")
    where = f"{models_dir / 'clip_vision'}/<name>/" if models_dir else "clip_vision/<name>/"
    found = f" Found only: {'; '.join(seen)}." if seen else ""
    raise ModelLoadError(
        f"IP-Adapter {spec.code} needs {which} with {need.field} {need.width}, which is not "
        f"installed. Put it as a transformers CLIPVisionModelWithProjection folder (config.json "
        f"+ model.safetensors) in {where}, or as {SIBLING_ENCODER}/ next to {spec.path.name}. "
        "(ComfyUI's single-file clip_vision/*.safetensors is that model.safetensors: put it in "
        "such a folder with the config.json of its release.)" + found
    )


def load_image_encoder(
    folder: Path, *, device: str, dtype: torch.dtype, allow_pickle: bool = False
) -> CLIPVisionModelWithProjection:
    """The encoder on device, in eval mode; pickle weights (pytorch_model.bin) only if allowed."""
    if not allow_pickle and not any(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"{folder}: no .safetensors weights (a pytorch_model.bin is a pickle file, loaded "
            f"only with {PICKLE_OPT_IN}); use model.safetensors from the same release"
        )
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            folder,
            dtype=dtype,
            local_files_only=True,
            use_safetensors=None if allow_pickle else True,
        )
        # transformers' @wraps(Module.to) hides the bound signature from mypy
        return encoder.to(device).eval()  # type: ignore[arg-type]
    except Exception as e:  # transformers raises many types for broken folders
        raise ModelLoadError(
            f"cannot load the image encoder {folder}: {type(e).__name__}: {e}"
        ) from e
