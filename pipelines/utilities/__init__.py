"""Utility jobs: background removal, captions, prompt enhancement, upscaling.

One module per utility, each loading its model from the models directory
(models.utility_models finds it; nothing downloads) and keeping it in the worker's component
cache. UTILITIES says, per job class, which utility's models it runs and how its jobs run
(which of them may share one call is batching policy: pipelines.batching.keys). The worker
runs them on its own thread and device like generation jobs, so their progress, cancellation
and errors travel the same way.

Prompt translation and the NSFW check are not jobs of their own: they run inside generation
jobs (pipelines.utilities.translation, pipelines.utilities.safety).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from models.utility_models import Utility, UtilityModel
from pipelines.jobs import (
    BackgroundRemovalJob,
    CaptionJob,
    JobResult,
    PromptEnhanceJob,
    UpscaleJob,
)
from pipelines.runners.common import RunContext
from pipelines.utilities import background_removal, caption, prompt_enhance, upscale

# Runs a batch of jobs with one key on one loaded model; one result per job, in job order.
UtilityRun = Callable[[Sequence[Any], UtilityModel, RunContext], list[JobResult]]
# Refuses at submit what could only fail later (JobError INVALID_INPUT), model aside.
UtilityCheck = Callable[[Any], None]


@dataclass(frozen=True)
class UtilityRunner:
    utility: Utility  # whose models it runs
    run: UtilityRun
    check: UtilityCheck


UTILITIES: dict[type, UtilityRunner] = {
    BackgroundRemovalJob: UtilityRunner(
        Utility.BACKGROUND_REMOVAL, background_removal.run, background_removal.check
    ),
    CaptionJob: UtilityRunner(Utility.CAPTION, caption.run, caption.check),
    PromptEnhanceJob: UtilityRunner(
        Utility.PROMPT_ENHANCE, prompt_enhance.run, prompt_enhance.check
    ),
    UpscaleJob: UtilityRunner(Utility.UPSCALE, upscale.run, upscale.check),
}
