"""One runner per job kind: build the diffusers call, return the images.

A runner takes the jobs of one REQUEST batch (pipelines.batching.keys: equal keys) and makes
one diffusers call with per-image lists for all of them (a single job is a batch of one); it
returns each job's images, in job order. The caller has applied the batch's shared adapters
(sub-models, style adapter, tiling) and reports progress to every job of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from PIL.Image import Image

from pipelines.jobs import GenerationJob, JobKind
from pipelines.runners import background, img2img, inpaint, txt2img
from pipelines.runners.common import RunContext

Runner = Callable[[DiffusionPipeline, Sequence[GenerationJob], RunContext], list[list[Image]]]

RUNNERS: dict[JobKind, Runner] = {
    JobKind.TXT2IMG: txt2img.run,
    JobKind.IMG2IMG: img2img.run,
    JobKind.INPAINT: inpaint.run,
    JobKind.BACKGROUND: background.run,
}
