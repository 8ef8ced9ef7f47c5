"""One runner per job kind: build the diffusers call, return the images."""

from __future__ import annotations

from collections.abc import Callable

from diffusers import DiffusionPipeline
from PIL.Image import Image

from pipelines.jobs import GenerationJob, JobKind
from pipelines.runners import background, img2img, inpaint, txt2img
from pipelines.runners.common import RunContext

Runner = Callable[[DiffusionPipeline, GenerationJob, RunContext], list[Image]]

RUNNERS: dict[JobKind, Runner] = {
    JobKind.TXT2IMG: txt2img.run,
    JobKind.IMG2IMG: img2img.run,
    JobKind.INPAINT: inpaint.run,
    JobKind.BACKGROUND: background.run,
}
