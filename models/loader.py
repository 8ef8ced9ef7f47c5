"""Put a checkpoint on a device as a diffusers pipeline, offline.

Everything loads with local files only: diffusers folders as they are, single-file checkpoints
with the architecture configs bundled in the package (models/configs/<arch>/: configs without
weights, shaped like a diffusers repo) and tokenizers derived from the bundled CLIP vocabulary.
Pickle checkpoints load only when the operator opts in, and then through torch's weights-only
unpickler. Every failure becomes a `ModelLoadError` that names the file and what to do.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from diffusers.loaders import FromSingleFileMixin
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
    StableDiffusionInpaintPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint import (
    StableDiffusionXLInpaintPipeline,
)
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTokenizer
from transformers.utils import logging as transformers_logging

from models.arch import PIPELINE_INDEX, ModelDetectionError, read_safetensors_header
from models.catalogue import Architecture, ModelSpec, WeightFormat
from models.compat import apply_compat
from models.tokenizer import EOS, clip_tokenizer

CONFIGS_DIR = Path(__file__).parent / "configs"

# Which diffusers pipeline class a checkpoint loads into: (architecture, inpainting) -> class.
PIPELINE_CLASSES: dict[tuple[Architecture, bool], type[DiffusionPipeline]] = {
    (Architecture.SD1, False): StableDiffusionPipeline,
    (Architecture.SD1, True): StableDiffusionInpaintPipeline,
    (Architecture.SD2, False): StableDiffusionPipeline,
    (Architecture.SD2, True): StableDiffusionInpaintPipeline,
    (Architecture.SDXL, False): StableDiffusionXLPipeline,
    (Architecture.SDXL, True): StableDiffusionXLInpaintPipeline,
    # A refiner has no first text encoder: it only runs as image to image (the last steps).
    (Architecture.SDXL_REFINER, False): StableDiffusionXLImg2ImgPipeline,
}

# Bundled config folder per (architecture, inpainting): the reference model of each family.
BUNDLED_CONFIGS: dict[tuple[Architecture, bool], str] = {
    (Architecture.SD1, False): "sd15",  # stable-diffusion-v1-5
    (Architecture.SD1, True): "sd15-inpaint",  # sd-v1-5-inpainting
    (Architecture.SD2, False): "sd2",  # stable-diffusion-2-1 (768, v-prediction)
    (Architecture.SDXL, False): "sdxl",  # stable-diffusion-xl-base-1.0
    (Architecture.SDXL, True): "sdxl-inpaint",  # stable-diffusion-xl-1.0-inpainting-0.1
    (Architecture.SDXL_REFINER, False): "sdxl-refiner",  # stable-diffusion-xl-refiner-1.0
}

# Standalone VAE files: the VAE config (its latent scaling factor) of the family they serve.
VAE_CONFIGS: dict[Architecture, str] = {
    Architecture.SD1: "sd15",
    Architecture.SD2: "sd2",
    Architecture.SDXL: "sdxl",
    Architecture.SDXL_REFINER: "sdxl",  # the same VAE
}

# Tokenizer components of each family and their pad tokens (OpenCLIP-trained encoders pad "!").
TOKENIZER_PADS: dict[Architecture, dict[str, str]] = {
    Architecture.SD1: {"tokenizer": EOS},
    Architecture.SD2: {"tokenizer": "!"},
    Architecture.SDXL: {"tokenizer": EOS, "tokenizer_2": "!"},
    Architecture.SDXL_REFINER: {"tokenizer_2": "!"},
}

# Extra arguments per pipeline class: SD 1.x / 2.x pipelines come without the safety checker.
_NO_SAFETY_CHECKER: dict[str, object] = {"safety_checker": None, "requires_safety_checker": False}
PIPELINE_OPTIONS: dict[type[DiffusionPipeline], dict[str, object]] = {
    StableDiffusionPipeline: _NO_SAFETY_CHECKER,
    StableDiffusionInpaintPipeline: _NO_SAFETY_CHECKER,
    StableDiffusionXLPipeline: {},
    StableDiffusionXLInpaintPipeline: {},
    StableDiffusionXLImg2ImgPipeline: {},
}

# Components a single-file checkpoint never holds, though model_index.json may list them.
SINGLE_FILE_ABSENT: dict[str, object] = {"feature_extractor": None, "image_encoder": None}

PICKLE_OPT_IN = "--allow-pickle (or EASEL_ALLOW_PICKLE=1)"

_Model = TypeVar("_Model", DiffusionPipeline, AutoencoderKL)


class ModelLoadError(RuntimeError):
    """A checkpoint that cannot be loaded; the message says what to fix."""


def default_cache_dir() -> Path:
    """Where derived files (tokenizers) go when the caller names no cache folder."""
    return Path(tempfile.gettempdir()) / "easel-cache"


def bundled_config_dir(architecture: Architecture, inpainting: bool) -> Path:
    name = BUNDLED_CONFIGS.get((architecture, inpainting))
    if name is None:
        variant = "inpainting " if inpainting else ""
        raise ModelLoadError(
            f"no bundled config for {architecture.value} {variant}checkpoints: put a diffusers "
            "config folder into the models directory and name it with `config` in manifest.toml"
        )
    return CONFIGS_DIR / name


def config_dir_for(spec: ModelSpec) -> Path:
    """The architecture config folder a single-file checkpoint loads with."""
    if spec.config_dir is not None:
        if not (spec.config_dir / PIPELINE_INDEX).is_file():
            raise ModelLoadError(
                f"{spec.code}: config folder {spec.config_dir} has no {PIPELINE_INDEX}"
            )
        return spec.config_dir
    try:
        return bundled_config_dir(spec.architecture, spec.inpainting)
    except ModelLoadError as e:
        raise ModelLoadError(f"{spec.code} ({spec.path}): {e}") from None


def load_pipeline(
    spec: ModelSpec,
    *,
    device: str,
    dtype: torch.dtype,
    allow_pickle: bool = False,
    cache_dir: Path | None = None,
) -> DiffusionPipeline:
    """The checkpoint as a ready pipeline on device, progress bars off."""
    _quiet_loading()
    cls = PIPELINE_CLASSES.get((spec.architecture, spec.inpainting))
    if cls is None:
        raise ModelLoadError(f"{spec.code}: unsupported architecture {spec.architecture.value}")
    loader = _PIPELINE_LOADERS[spec.weight_format]
    _check_file(spec, allow_pickle)
    try:
        pipe = loader(cls, spec, dtype, cache_dir or default_cache_dir())
    except ModelLoadError:
        raise
    except ImportError as e:
        raise ModelLoadError(_missing_package(spec, e)) from e
    except Exception as e:
        raise ModelLoadError(
            f"{spec.code}: cannot load {spec.path}: {type(e).__name__}: {e}\n{_hint(spec)}"
        ) from e
    pipe.set_progress_bar_config(disable=True)
    return apply_compat(_to_device(pipe, spec, device))


def load_vae(
    spec: ModelSpec,
    *,
    device: str,
    dtype: torch.dtype,
    architecture: Architecture | None = None,
    allow_pickle: bool = False,
) -> AutoencoderKL:
    """A standalone VAE: a single file (original or diffusers keys) or a diffusers folder.

    VAE files do not say which family they serve; `architecture` (that of the checkpoint the VAE
    will decode for) picks the config, and with it the latent scaling factor.
    """
    _quiet_loading()
    _check_file(spec, allow_pickle)
    try:
        if spec.weight_format is WeightFormat.DIFFUSERS:
            subfolder = "vae" if (spec.path / PIPELINE_INDEX).is_file() else None
            vae = AutoencoderKL.from_pretrained(
                spec.path, subfolder=subfolder, dtype=dtype, local_files_only=True
            )
        else:
            config = _vae_config_dir(spec, architecture)
            subfolder = "vae" if (config / "vae").is_dir() else None
            vae = AutoencoderKL.from_single_file(
                str(spec.path),
                config=str(config),
                subfolder=subfolder,
                dtype=dtype,
                local_files_only=True,
            )
    except ImportError as e:
        raise ModelLoadError(_missing_package(spec, e)) from e
    except Exception as e:
        raise ModelLoadError(
            f"{spec.code}: cannot load the VAE {spec.path}: {type(e).__name__}: {e}"
        ) from e
    return _to_device(vae, spec, device)


# --- per weight format ---------------------------------------------------------------------------


def _from_diffusers_folder(
    cls: type[DiffusionPipeline], spec: ModelSpec, dtype: torch.dtype, cache_dir: Path
) -> DiffusionPipeline:
    return cls.from_pretrained(
        spec.path, dtype=dtype, local_files_only=True, **PIPELINE_OPTIONS[cls]
    )


def _from_single_file(
    cls: type[DiffusionPipeline], spec: ModelSpec, dtype: torch.dtype, cache_dir: Path
) -> DiffusionPipeline:
    if not issubclass(cls, FromSingleFileMixin):  # every class of PIPELINE_CLASSES is
        raise ModelLoadError(f"{spec.code}: {cls.__name__} cannot load single-file checkpoints")
    return cls.from_single_file(
        str(spec.path),
        config=str(config_dir_for(spec)),
        local_files_only=True,
        dtype=dtype,
        **_tokenizers(spec.architecture, cache_dir),
        **SINGLE_FILE_ABSENT,
        **PIPELINE_OPTIONS[cls],
    )


_PIPELINE_LOADERS: dict[
    WeightFormat,
    Callable[[type[DiffusionPipeline], ModelSpec, torch.dtype, Path], DiffusionPipeline],
] = {
    WeightFormat.DIFFUSERS: _from_diffusers_folder,
    WeightFormat.SAFETENSORS: _from_single_file,
    # diffusers reads .ckpt / .pt / .bin with torch.load(weights_only=True)
    WeightFormat.PICKLE: _from_single_file,
}


# --- helpers -------------------------------------------------------------------------------------


def _quiet_loading() -> None:
    """No per-load progress bars in a server's log (a global switch of both libraries)."""
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _tokenizers(architecture: Architecture, cache_dir: Path) -> dict[str, CLIPTokenizer]:
    pads = TOKENIZER_PADS.get(architecture, {})
    root = cache_dir / "tokenizers"
    return {name: clip_tokenizer(root, pad_token=pad) for name, pad in pads.items()}


def _vae_config_dir(spec: ModelSpec, architecture: Architecture | None) -> Path:
    if spec.config_dir is not None:
        return spec.config_dir
    family = spec.architecture if spec.architecture in VAE_CONFIGS else architecture
    return CONFIGS_DIR / VAE_CONFIGS.get(family or Architecture.SD1, VAE_CONFIGS[Architecture.SD1])


def _check_file(spec: ModelSpec, allow_pickle: bool) -> None:
    """Fail early, with the reason, for files that cannot work."""
    if not spec.path.exists():
        raise ModelLoadError(
            f"{spec.code}: {spec.path} does not exist (moved or deleted since the models scan?)"
        )
    if spec.weight_format is WeightFormat.PICKLE and not allow_pickle:
        raise ModelLoadError(
            f"{spec.code}: {spec.path} is a pickle checkpoint; pickle files can run code when "
            f"loaded, so easel loads them only with {PICKLE_OPT_IN}. Better: convert it to "
            ".safetensors."
        )
    if spec.weight_format is WeightFormat.SAFETENSORS:
        try:
            read_safetensors_header(spec.path)
        except ModelDetectionError as e:
            raise ModelLoadError(f"{spec.code}: {e}") from e
    if spec.config_dir is not None and not spec.config_dir.is_dir():
        raise ModelLoadError(f"{spec.code}: config folder {spec.config_dir} does not exist")


def _hint(spec: ModelSpec) -> str:
    if spec.weight_format is WeightFormat.DIFFUSERS:
        return (
            "Check that the folder is a complete diffusers model (model_index.json plus the "
            "config and weights of every component)."
        )
    variant = "inpainting " if spec.inpainting else ""
    hint = (
        f"It was loaded as an {spec.architecture.value} {variant}checkpoint; if that is wrong, "
        "set `architecture`, `inpainting` or `config` for it in the models directory's "
        "manifest.toml."
    )
    if spec.weight_format is WeightFormat.PICKLE:
        hint += (
            " Pickle files are read with torch's weights-only loader; one that holds more than "
            "tensors must be converted to .safetensors."
        )
    return hint


def _missing_package(spec: ModelSpec, error: ImportError) -> str:
    package = error.name or "the missing package"
    return f"{spec.code}: loading {spec.path} needs {package}: pip install {package} ({error})"


def _to_device(model: _Model, spec: ModelSpec, device: str) -> _Model:
    try:
        return model.to(device)  # type: ignore[arg-type]  # diffusers' @wraps(Module.to) hides self
    except Exception as e:
        raise ModelLoadError(f"{spec.code}: cannot move it to {device}: {e}") from e
