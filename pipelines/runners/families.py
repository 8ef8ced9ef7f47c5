"""Which diffusers pipeline class runs which job for a loaded checkpoint: a data table.

All variants share the loaded checkpoint's components (no second copy of the weights); only the
scheduler is fresh per call, so concurrent settings never leak between jobs. A job with ControlNet
units runs the ControlNet variant of its kind, with the units' models as an extra component.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import diffusers
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from pipelines.jobs import ErrorCode, JobError, JobKind

Variant = tuple[JobKind, bool]  # (job kind, with ControlNet)

if TYPE_CHECKING:

    class RunnablePipeline(DiffusionPipeline):
        """For the type checker only: a concrete diffusers pipeline (StableDiffusionPipeline...),
        called with keyword arguments. DiffusionPipeline itself declares no __call__."""

        def __call__(self, **kwargs: Any) -> Any: ...


_SD1: dict[Variant, str] = {
    (JobKind.TXT2IMG, False): "StableDiffusionPipeline",
    (JobKind.IMG2IMG, False): "StableDiffusionImg2ImgPipeline",
    (JobKind.INPAINT, False): "StableDiffusionInpaintPipeline",
    (JobKind.BACKGROUND, False): "StableDiffusionInpaintPipeline",
    (JobKind.TXT2IMG, True): "StableDiffusionControlNetPipeline",
    (JobKind.IMG2IMG, True): "StableDiffusionControlNetImg2ImgPipeline",
    (JobKind.INPAINT, True): "StableDiffusionControlNetInpaintPipeline",
    (JobKind.BACKGROUND, True): "StableDiffusionControlNetInpaintPipeline",
}
_SDXL: dict[Variant, str] = {
    (JobKind.TXT2IMG, False): "StableDiffusionXLPipeline",
    (JobKind.IMG2IMG, False): "StableDiffusionXLImg2ImgPipeline",
    (JobKind.INPAINT, False): "StableDiffusionXLInpaintPipeline",
    (JobKind.BACKGROUND, False): "StableDiffusionXLInpaintPipeline",
    (JobKind.TXT2IMG, True): "StableDiffusionXLControlNetPipeline",
    (JobKind.IMG2IMG, True): "StableDiffusionXLControlNetImg2ImgPipeline",
    (JobKind.INPAINT, True): "StableDiffusionXLControlNetInpaintPipeline",
    (JobKind.BACKGROUND, True): "StableDiffusionXLControlNetInpaintPipeline",
}
_INPAINT_ONLY = (JobKind.INPAINT, JobKind.BACKGROUND)

# loaded checkpoint's pipeline class name -> (job kind, with ControlNet) -> pipeline class name.
# Inpainting checkpoints (9-channel UNets) only redraw masked areas.
PIPELINE_FAMILIES: dict[str, dict[Variant, str]] = {
    "StableDiffusionPipeline": _SD1,
    "StableDiffusionXLPipeline": _SDXL,
    "StableDiffusionInpaintPipeline": {v: c for v, c in _SD1.items() if v[0] in _INPAINT_ONLY},
    "StableDiffusionXLInpaintPipeline": {v: c for v, c in _SDXL.items() if v[0] in _INPAINT_ONLY},
}


def pipeline_for(
    base: DiffusionPipeline,
    kind: JobKind,
    scheduler: Any,
    vae: Any = None,
    controlnet: Any = None,
) -> RunnablePipeline:
    """The pipeline for a job kind over base's components (+ a VAE and ControlNets)."""
    family = PIPELINE_FAMILIES.get(type(base).__name__, {})
    name = family.get((kind, controlnet is not None))
    if name is None:
        what = f"{kind.value} jobs" + (" with ControlNet" if controlnet is not None else "")
        if type(base).__name__ in (
            "StableDiffusionInpaintPipeline",
            "StableDiffusionXLInpaintPipeline",
        ):
            what += " (an inpainting checkpoint only redraws masked areas)"
        raise JobError(
            ErrorCode.INVALID_INPUT, f"a {type(base).__name__} checkpoint cannot run {what}"
        )
    cls: type[RunnablePipeline] = getattr(diffusers, name)
    # Same modules and config flags as the loaded checkpoint, a fresh scheduler: no weight copies.
    available = {**base.config, **base.components, "scheduler": scheduler}
    if vae is not None:
        available["vae"] = vae
    if controlnet is not None:
        available["controlnet"] = controlnet
    params = inspect.signature(cls.__init__).parameters
    pipe = cls(**{name: available[name] for name in params if name in available})
    pipe.set_progress_bar_config(disable=True)
    return pipe
