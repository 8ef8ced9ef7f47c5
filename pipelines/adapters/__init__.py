"""Per-job changes to a loaded checkpoint: sub-models, style reference, tiling.

Each adapter is a context manager that patches the shared pipeline for one job and restores it on
exit, even when the job fails or is cancelled: the next job always sees the clean base model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from pipelines.adapters import style, sub_models, tiling
from pipelines.jobs import GenerationJob
from pipelines.runners.common import RunContext

Adapter = Callable[[DiffusionPipeline, GenerationJob, RunContext], AbstractContextManager[None]]

# Applied in this order, undone in reverse.
ADAPTERS: tuple[Adapter, ...] = (sub_models.applied, style.applied, tiling.applied)


@contextmanager
def adapted(pipe: DiffusionPipeline, job: GenerationJob, ctx: RunContext) -> Iterator[None]:
    with ExitStack() as stack:
        for adapter in ADAPTERS:
            stack.enter_context(adapter(pipe, job, ctx))
        yield
