"""Sampler names clients send, mapped to diffusers schedulers: one table, plain data.

Names come from three vocabularies: A1111's ("DPM++ 2M Karras"), diffusers' class names
("EulerDiscreteScheduler", as the Runware API uses them) and a few short aliases. Lookups are
case-insensitive. "Default" means the scheduler the checkpoint ships with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: str  # a diffusers scheduler class name
    options: Mapping[str, Any] = field(default_factory=dict)  # overrides of its config


DEFAULT_SAMPLER = "Default"
_KARRAS = MappingProxyType({"use_karras_sigmas": True})
_SDE = MappingProxyType({"algorithm_type": "sde-dpmsolver++"})
_SDE_KARRAS = MappingProxyType({"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True})
# Stable Diffusion latents are not clipped (SD's own scheduler configs say so; diffusers' SD
# pipelines force it too): set it explicitly, whatever the checkpoint's scheduler config holds.
_NO_CLIP = MappingProxyType({"clip_sample": False})

SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType(
    {
        # A1111 names (see diffusers' "A1111 to diffusers" scheduler table).
        "Euler": SamplerSpec("EulerDiscreteScheduler"),
        "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
        "Euler Karras": SamplerSpec("EulerDiscreteScheduler", _KARRAS),
        "Heun": SamplerSpec("HeunDiscreteScheduler"),
        "LMS": SamplerSpec("LMSDiscreteScheduler"),
        "LMS Karras": SamplerSpec("LMSDiscreteScheduler", _KARRAS),
        "DPM2": SamplerSpec("KDPM2DiscreteScheduler"),
        "DPM2 Karras": SamplerSpec("KDPM2DiscreteScheduler", _KARRAS),
        "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
        "DPM2 a Karras": SamplerSpec("KDPM2AncestralDiscreteScheduler", _KARRAS),
        "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler"),
        "DPM++ 2M Karras": SamplerSpec("DPMSolverMultistepScheduler", _KARRAS),
        "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler", _SDE),
        "DPM++ 2M SDE Karras": SamplerSpec("DPMSolverMultistepScheduler", _SDE_KARRAS),
        "DPM++ SDE": SamplerSpec("DPMSolverSinglestepScheduler"),
        "DPM++ SDE Karras": SamplerSpec("DPMSolverSinglestepScheduler", _KARRAS),
        "DDIM": SamplerSpec("DDIMScheduler", _NO_CLIP),
        "PLMS": SamplerSpec("PNDMScheduler"),
        "UniPC": SamplerSpec("UniPCMultistepScheduler"),
        "DEIS": SamplerSpec("DEISMultistepScheduler"),
        "DDPM": SamplerSpec("DDPMScheduler", _NO_CLIP),
        "LCM": SamplerSpec("LCMScheduler"),
        # diffusers class names.
        "DDIMScheduler": SamplerSpec("DDIMScheduler", _NO_CLIP),
        "DDPMScheduler": SamplerSpec("DDPMScheduler", _NO_CLIP),
        "DEISMultistepScheduler": SamplerSpec("DEISMultistepScheduler"),
        "DPMSolverSinglestepScheduler": SamplerSpec("DPMSolverSinglestepScheduler"),
        "DPMSolverMultistepScheduler": SamplerSpec("DPMSolverMultistepScheduler"),
        "HeunDiscreteScheduler": SamplerSpec("HeunDiscreteScheduler"),
        "KDPM2DiscreteScheduler": SamplerSpec("KDPM2DiscreteScheduler"),
        "KDPM2AncestralDiscreteScheduler": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
        "LMSDiscreteScheduler": SamplerSpec("LMSDiscreteScheduler"),
        "PNDMScheduler": SamplerSpec("PNDMScheduler"),
        "EulerDiscreteScheduler": SamplerSpec("EulerDiscreteScheduler"),
        "EulerAncestralDiscreteScheduler": SamplerSpec("EulerAncestralDiscreteScheduler"),
        "UniPCMultistepScheduler": SamplerSpec("UniPCMultistepScheduler"),
        "LCMScheduler": SamplerSpec("LCMScheduler"),
    }
)

_BY_LOWER_NAME: Mapping[str, SamplerSpec] = {name.lower(): spec for name, spec in SAMPLERS.items()}


def is_known_sampler(name: str) -> bool:
    return name.lower() == DEFAULT_SAMPLER.lower() or name.lower() in _BY_LOWER_NAME


def sampler_spec(name: str | None) -> SamplerSpec | None:
    """The spec for a sampler name; None for the model's own scheduler. KeyError if unknown."""
    if name is None or name.lower() == DEFAULT_SAMPLER.lower():
        return None
    return _BY_LOWER_NAME[name.lower()]
