"""Which diffusers pipeline class runs which job kind for a loaded checkpoint: a data table.

All variants share the loaded checkpoint's components (no second copy of the weights); only the
scheduler is fresh per call, so concurrent settings never leak between jobs.
"""

from __future__ import annotations

import inspect
from typing import Any

from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from pipelines.jobs import ErrorCode, JobError, JobKind

# base pipeline class name -> job kind -> pipeline class
PIPELINE_FAMILIES: dict[str, dict[JobKind, type[DiffusionPipeline]]] = {
    "StableDiffusionPipeline": {
        JobKind.TXT2IMG: StableDiffusionPipeline,
        JobKind.IMG2IMG: StableDiffusionImg2ImgPipeline,
    },
    "StableDiffusionXLPipeline": {
        JobKind.TXT2IMG: StableDiffusionXLPipeline,
        JobKind.IMG2IMG: StableDiffusionXLImg2ImgPipeline,
    },
}


def pipeline_for(
    base: DiffusionPipeline, kind: JobKind, scheduler: Any, vae: Any = None
) -> DiffusionPipeline:
    family = PIPELINE_FAMILIES.get(type(base).__name__)
    if family is None or kind not in family:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"a {type(base).__name__} checkpoint cannot run {kind.value} jobs",
        )
    cls = family[kind]
    # Same modules and config flags as the loaded checkpoint (or another VAE), a fresh
    # scheduler: no weight copies.
    available = {**base.config, **base.components, "scheduler": scheduler}
    if vae is not None:
        available["vae"] = vae
    params = inspect.signature(cls.__init__).parameters
    pipe = cls(**{name: available[name] for name in params if name in available})
    pipe.set_progress_bar_config(disable=True)
    return pipe
