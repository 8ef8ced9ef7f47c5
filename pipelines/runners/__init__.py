"""One runner per job kind: build the diffusers call, return the images."""

from __future__ import annotations

from collections.abc import Callable

from diffusers import DiffusionPipeline
from PIL.Image import Image

from pipelines.jobs import GenerationJob, JobKind
from pipelines.runners import img2img, txt2img
from pipelines.runners.common import RunContext

Runner = Callable[[DiffusionPipeline, GenerationJob, RunContext], list[Image]]

RUNNERS: dict[JobKind, Runner] = {
    JobKind.TXT2IMG: txt2img.run,
    JobKind.IMG2IMG: img2img.run,
}
