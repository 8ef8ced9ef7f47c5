"""Put a ControlNet of the catalogue on a device, offline.

Two layouts load: a diffusers folder (config.json + weights) as it is, and a single file, either
lllyasviel's original format (`control_model.*` keys, e.g. control_v11p_sd15_canny.safetensors)
or diffusers keys in one file (how most SDXL ControlNets ship). A single file carries no config:
it loads with the config folder the manifest names for it, else the bundled config of its family
(models/configs/controlnet-sd15: the lllyasviel v1.1 models; controlnet-sdxl: diffusers'
controlnet-canny-sdxl-1.0). Every failure becomes a `ModelLoadError` naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.controlnets.controlnet import ControlNetModel

from models.arch import COMPONENT_CONFIG, ModelDetectionError, read_safetensors_header
from models.catalogue import Architecture, ModelSpec, WeightFormat
from models.loader import CONFIGS_DIR, ModelLoadError

# Bundled config folder per architecture (a config.json, no weights).
CONTROLNET_CONFIGS: dict[Architecture, str] = {
    Architecture.SD1: "controlnet-sd15",
    Architecture.SDXL: "controlnet-sdxl",
}

# Run-time config flags a single file's name implies, as A1111 sets them (controlnet_model_guess):
# an SD 1.x ControlNet whose file name says "shuffle" pools its residuals globally.
NAME_OVERRIDES: dict[tuple[Architecture, str], dict[str, object]] = {
    (Architecture.SD1, "shuffle"): {"global_pool_conditions": True},
}


def controlnet_config_dir(spec: ModelSpec, architecture: Architecture) -> Path:
    """The config folder a single-file ControlNet loads with: the manifest's, else the bundled
    one of its architecture (that of the checkpoint it serves when the file does not say)."""
    if spec.config_dir is not None:
        if not (spec.config_dir / COMPONENT_CONFIG).is_file():
            raise ModelLoadError(
                f"{spec.code}: config folder {spec.config_dir} has no {COMPONENT_CONFIG}"
            )
        return spec.config_dir
    name = CONTROLNET_CONFIGS.get(architecture)
    if name is None:
        raise ModelLoadError(
            f"{spec.code} ({spec.path}): no bundled ControlNet config for {architecture.value}: "
            "put a diffusers ControlNet config folder (config.json) into the models directory "
            "and name it with `config` for this file in manifest.toml"
        )
    return CONFIGS_DIR / name


def name_overrides(spec: ModelSpec, architecture: Architecture) -> dict[str, object]:
    stem = spec.path.stem.lower()
    changes: dict[str, object] = {}
    for (family, word), values in NAME_OVERRIDES.items():
        if family is architecture and word in stem:
            changes.update(values)
    return changes


def load_controlnet(
    spec: ModelSpec, *, architecture: Architecture, device: str, dtype: torch.dtype
) -> ControlNetModel:
    """The ControlNet on device in dtype, in eval mode.

    `architecture` is the checkpoint's: it picks the bundled config when the file's own
    architecture is unknown (the caller has checked that the two agree)."""
    family = spec.architecture if spec.architecture is not Architecture.UNKNOWN else architecture
    _check_file(spec)
    try:
        if spec.weight_format is WeightFormat.DIFFUSERS:
            model = ControlNetModel.from_pretrained(spec.path, dtype=dtype, local_files_only=True)
        else:
            model = ControlNetModel.from_single_file(
                str(spec.path),
                config=str(controlnet_config_dir(spec, family)),
                local_files_only=True,
                dtype=dtype,
            )
            model.register_to_config(**name_overrides(spec, family))
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"{spec.code}: cannot load the ControlNet {spec.path}: {type(e).__name__}: {e}\n"
            f"It was loaded as an {family.value} ControlNet; if that is wrong, set `architecture` "
            "or `config` for it in the models directory's manifest.toml."
        ) from e
    try:
        return model.to(device).eval()
    except Exception as e:
        raise ModelLoadError(f"{spec.code}: cannot move it to {device}: {e}") from e


def _check_file(spec: ModelSpec) -> None:
    if not spec.path.exists():
        raise ModelLoadError(
            f"{spec.code}: {spec.path} does not exist (moved or deleted since the models scan?)"
        )
    if spec.weight_format is WeightFormat.SAFETENSORS:
        try:
            read_safetensors_header(spec.path)
        except ModelDetectionError as e:
            raise ModelLoadError(f"{spec.code}: {e}") from e
