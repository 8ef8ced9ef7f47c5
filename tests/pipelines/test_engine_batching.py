"""Cross-request batching through the real engine (batch former, worker thread, loop, runners).

Jobs submitted together share forwards (the engine's own statistics say so), a job arriving
while a batch runs joins it mid-flight, a cancelled or failing job leaves without disturbing the
others, and every job's images stay within BATCH_TOLERANCE of the same job run alone (alone in
the loop equals diffusers bit for bit: tests/pipelines/test_denoise_loop.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from models.catalogue import Catalogue
from models.demo import demo_spec
from pipelines.engine import Engine, EngineConfig
from pipelines.handle import JobHandle
from pipelines.jobs import ErrorCode, GenerationJob, JobError, JobKind, JobResult

BATCH_TOLERANCE = 2  # max |difference| in 0..255 levels, batched vs alone (measured: 1)

T = TypeVar("T")


def job(kind: JobKind = JobKind.TXT2IMG, **changes: Any) -> GenerationJob:
    base = GenerationJob(
        kind=kind,
        model="",
        prompt="a red house by a lake",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=4,
        guidance_scale=7.0,
        seeds=(11,),
        strength=0.6,
    )
    return dataclasses.replace(base, **changes)


def _picture(seed: int) -> PILImage.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return PILImage.fromarray(pixels)


MIXED = [
    job(seeds=(1, 2), owner="alice"),
    job(prompt="a forest at night", sampler="Euler a", steps=6, seeds=(3,), owner="bob"),
    job(prompt="a cat", guidance_scale=1.0, steps=3, seeds=(4,), owner="carol"),
    job(
        JobKind.IMG2IMG,
        init_image=_picture(1),
        sampler="DPM++ 2M Karras",
        steps=5,
        strength=0.7,
        seeds=(5,),
        owner="alice",
    ),
]


def with_engine(
    demo_dir: Path, data_dir: Path, body: Callable[[Engine], Awaitable[T]], **config: Any
) -> T:
    async def main() -> T:
        settings = EngineConfig(devices=["cpu"], cache_dir=data_dir / "cache", **config)
        engine = Engine(Catalogue([demo_spec(demo_dir)]), settings)
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


async def outcome(handle: JobHandle) -> JobResult | JobError:
    try:
        return await handle.result()
    except JobError as error:
        return error


async def wait_for_step(handle: JobHandle, step: int) -> None:
    while handle.progress.step < step:
        assert not handle.done, "the job ended before reaching the step"
        await asyncio.sleep(0.005)


def assert_close(ours: JobResult | JobError, theirs: JobResult | JobError) -> None:
    assert isinstance(ours, JobResult) and isinstance(theirs, JobResult)
    assert len(ours.images) == len(theirs.images)
    for a, b in zip(ours.images, theirs.images, strict=True):
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
        assert diff <= BATCH_TOLERANCE


@pytest.fixture(scope="module")
def alone(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[JobResult | JobError]:
    """Each MIXED job run by itself, one after another."""

    async def body(engine: Engine) -> list[JobResult | JobError]:
        results = []
        for i, j in enumerate(MIXED):
            results.append(await outcome(engine.submit(j, job_id=f"alone-{i}")))
        return results

    results = with_engine(demo_dir, tmp_path_factory.mktemp("alone"), body)
    assert all(isinstance(r, JobResult) for r in results)
    return results


def submit_all(engine: Engine, jobs: Sequence[GenerationJob]) -> list[JobHandle]:
    return [engine.submit(j, job_id=f"job-{i}") for i, j in enumerate(jobs)]


def test_jobs_submitted_together_share_forwards(
    demo_dir: Path, tmp_path: Path, alone: list[JobResult | JobError]
) -> None:
    async def body(engine: Engine) -> tuple[list[JobResult | JobError], dict[str, Any]]:
        handles = submit_all(engine, MIXED)
        return [await outcome(h) for h in handles], engine.stats.snapshot()

    results, stats = with_engine(demo_dir, tmp_path, body, batch_window=0.5)
    for ours, theirs in zip(results, alone, strict=True):
        assert_close(ours, theirs)
    # All four jobs (five images) start in one loop: the first forwards carry every image.
    assert stats["batch_sizes"].get("5", 0) >= 3
    assert stats["jobs_finished"] == 4 and stats["images"] == 5
    assert stats["overhead_ms_per_job"]["admission"] > 0


def test_a_job_arriving_mid_flight_joins_the_running_batch(
    demo_dir: Path, tmp_path: Path, alone: list[JobResult | JobError]
) -> None:
    long = job(steps=40, seeds=(9,))

    async def body(engine: Engine) -> tuple[JobResult | JobError, dict[str, Any]]:
        running = engine.submit(long, job_id="long")
        await wait_for_step(running, 2)
        joiner = engine.submit(MIXED[1], job_id="joiner")
        result = await outcome(joiner)
        assert not running.done  # it joined while the long job ran, and finished first
        await outcome(running)
        return result, engine.stats.snapshot()

    result, stats = with_engine(demo_dir, tmp_path, body, batch_window=0)
    assert stats["joins"] == 1
    assert stats["batch_sizes"].get("2", 0) >= 6  # the joiner's 6 steps shared the forward
    assert_close(result, alone[1])


def test_drain_lets_the_running_batch_finish_and_starts_no_other(
    demo_dir: Path, tmp_path: Path
) -> None:
    """A SIGTERM drains the engine before uvicorn's shutdown reaches stop(): the batch running
    then is the last one, and the waiting job is still waiting when stop() ends it."""

    async def body(engine: Engine) -> tuple[JobResult | JobError, int, JobResult | JobError]:
        running = engine.submit(job(steps=40, seeds=(9,)), job_id="running")
        waiting = engine.submit(job(seeds=(10,)), job_id="waiting")  # no room to join
        await wait_for_step(running, 2)
        engine.drain()
        finished = await outcome(running)
        await asyncio.sleep(0.5)  # a worker still taking batches would have started it
        steps_run = waiting.progress.step
        await engine.stop()
        return finished, steps_run, await outcome(waiting)

    finished, steps_run, stopped = with_engine(
        demo_dir, tmp_path, body, batch_window=0, max_batch_images=1
    )
    assert isinstance(finished, JobResult) and len(finished.images) == 1
    assert steps_run == 0
    assert isinstance(stopped, JobError) and stopped.code is ErrorCode.INTERRUPTED


def test_cancel_leaves_the_rest_of_the_batch_alone(
    demo_dir: Path, tmp_path: Path, alone: list[JobResult | JobError]
) -> None:
    victim = job(steps=40, seeds=(8,), owner="mallory")

    async def body(engine: Engine) -> list[JobResult | JobError]:
        handles = submit_all(engine, [*MIXED, victim])
        await wait_for_step(handles[-1], 1)
        handles[-1].cancel()
        return [await outcome(h) for h in handles]

    *results, cancelled = with_engine(demo_dir, tmp_path, body, batch_window=0.5)
    assert isinstance(cancelled, JobError) and cancelled.code is ErrorCode.CANCELLED
    for ours, theirs in zip(results, alone, strict=True):
        assert_close(ours, theirs)


def test_a_bad_job_fails_alone(
    demo_dir: Path, tmp_path: Path, alone: list[JobResult | JobError]
) -> None:
    bad = job(clip_skip=99)  # found when the job is prepared, on the worker

    async def body(engine: Engine) -> list[JobResult | JobError]:
        return [await outcome(h) for h in submit_all(engine, [MIXED[0], bad, MIXED[1]])]

    first, failed, last = with_engine(demo_dir, tmp_path, body, batch_window=0.5)
    assert isinstance(failed, JobError) and failed.code is ErrorCode.INVALID_INPUT
    assert "clip skip" in failed.message
    assert_close(first, alone[0])
    assert_close(last, alone[1])


def test_other_kinds_batch_per_request(demo_dir: Path, tmp_path: Path) -> None:
    """Inpaint jobs with one request key run as one pipeline call (every step reports both
    jobs' images at once) and match their runs alone."""
    mask = PILImage.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    jobs = [
        job(JobKind.INPAINT, init_image=_picture(2), mask=mask, seeds=(1,), strength=1.0),
        job(
            JobKind.INPAINT,
            init_image=_picture(3),
            mask=mask.rotate(90),
            prompt="a boat",
            seeds=(2, 3),
            strength=1.0,
        ),
    ]

    async def together(engine: Engine) -> tuple[list[JobResult | JobError], dict[str, Any]]:
        handles = submit_all(engine, jobs)
        return [await outcome(h) for h in handles], engine.stats.snapshot()

    async def one_by_one(engine: Engine) -> list[JobResult | JobError]:
        return [await outcome(engine.submit(j, job_id=f"a{i}")) for i, j in enumerate(jobs)]

    results, stats = with_engine(demo_dir, tmp_path / "together", together, batch_window=0.5)
    singles = with_engine(demo_dir, tmp_path / "alone", one_by_one)
    assert set(stats["batch_sizes"]) == {"3"}  # every step: both jobs, three images
    for ours, theirs in zip(results, singles, strict=True):
        assert_close(ours, theirs)


def test_a_bad_job_in_a_request_batch_fails_alone(demo_dir: Path, tmp_path: Path) -> None:
    """A background job whose foreground has no transparency is refused when it runs; the job
    batched with it still gets its images, the same as alone."""
    foreground = _picture(4).convert("RGBA")
    foreground.putalpha(PILImage.new("L", (64, 64), 0).point(lambda _: 255))
    cutout = foreground.copy()
    cutout.paste((0, 0, 0, 0), (0, 0, 64, 32))  # the top half transparent: redrawn
    good = job(JobKind.BACKGROUND, init_image=cutout, strength=1.0, seeds=(5,))
    bad = job(JobKind.BACKGROUND, init_image=foreground, strength=1.0, seeds=(6,))

    async def together(engine: Engine) -> list[JobResult | JobError]:
        return [await outcome(h) for h in submit_all(engine, [good, bad])]

    async def alone_good(engine: Engine) -> JobResult | JobError:
        return await outcome(engine.submit(good, job_id="good"))

    ours, failed = with_engine(demo_dir, tmp_path / "together", together, batch_window=0.5)
    assert isinstance(failed, JobError) and failed.code is ErrorCode.INVALID_INPUT
    assert_close(ours, with_engine(demo_dir, tmp_path / "alone", alone_good))


def test_a_request_batch_that_runs_out_of_memory_is_split(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device that cannot hold the whole batch: the worker halves it until it fits and every
    job still gets its images, each the same as alone."""
    from pipelines.worker import DeviceWorker

    generate = DeviceWorker._generate
    sizes: list[int] = []

    def small_device(self: DeviceWorker, handles: list[JobHandle]) -> Any:
        sizes.append(len(handles))
        if len(handles) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return generate(self, handles)

    monkeypatch.setattr(DeviceWorker, "_generate", small_device)
    mask = PILImage.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    jobs = [
        job(JobKind.INPAINT, init_image=_picture(i), mask=mask, seeds=(i,), strength=1.0)
        for i in range(3)
    ]

    async def together(engine: Engine) -> tuple[list[JobResult | JobError], dict[str, Any]]:
        handles = submit_all(engine, jobs)
        return [await outcome(h) for h in handles], engine.stats.snapshot()

    async def one_by_one(engine: Engine) -> list[JobResult | JobError]:
        return [await outcome(engine.submit(j, job_id=f"a{i}")) for i, j in enumerate(jobs)]

    results, stats = with_engine(demo_dir, tmp_path / "together", together, batch_window=0.5)
    assert sizes[:3] == [3, 1, 2]  # halves: [1] fits, [2] is split again
    assert stats["oom_splits"] == 2 and stats["jobs_finished"] == 3
    singles = with_engine(demo_dir, tmp_path / "alone", one_by_one)
    for ours, theirs in zip(results, singles, strict=True):
        assert_close(ours, theirs)
