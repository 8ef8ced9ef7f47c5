"""Run jobs through a real engine (queue, worker thread, cache, adapters) over a models directory.

Feature tests use it to compare what the engine makes with the direct diffusers call, and to check
that a job's changes to the model do not leak into the next job (jobs run one after another).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from pipelines.engine import Engine, EngineConfig
from pipelines.jobs import GenerationJob, JobError, JobResult
from tests.demo_set import link_demo_set


def run_jobs(
    models_dir: Path, data_dir: Path, jobs: Sequence[GenerationJob]
) -> list[JobResult | JobError]:
    """Each job's result, or the JobError it failed with, in order; one engine on the CPU."""

    async def main() -> list[JobResult | JobError]:
        engine, _notes = Engine.open(
            models_dir, link_demo_set(data_dir), EngineConfig(devices=["cpu"])
        )
        await engine.start()
        try:
            results: list[JobResult | JobError] = []
            for i, job in enumerate(jobs):
                try:  # refused at submit, or failed while running: either way its JobError
                    handle = engine.submit(job, job_id=f"job-{i}")
                    results.append(await handle.result())
                except JobError as error:
                    results.append(error)
            return results
        finally:
            await engine.stop()

    return asyncio.run(main())


def run_job(models_dir: Path, data_dir: Path, job: GenerationJob) -> JobResult:
    """One job's result; raises its JobError."""
    (result,) = run_jobs(models_dir, data_dir, [job])
    if isinstance(result, JobError):
        raise result
    return result
