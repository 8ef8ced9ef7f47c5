"""Standalone preprocessing jobs (Runware's imageControlNetPreProcess) through a real engine: the
map equals pipelines.preprocessors.preprocess called directly, resized (Lanczos) to the asked
size or back to the input's; bad requests and missing weights are refused at submit; a
preprocessing job and a generation queued together both finish."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import pytest
from PIL import Image

from models.catalogue import Catalogue
from models.demo import demo_spec
from pipelines.engine import Engine, EngineConfig
from pipelines.jobs import (
    ErrorCode,
    GenerationJob,
    Job,
    JobError,
    JobKind,
    JobProgress,
    JobResult,
    JobState,
    PreprocessJob,
)
from pipelines.preprocessors import preprocess
from tests.models.tiny_controlnet import save_mlsd

T = TypeVar("T")
RES = 64
LANCZOS = Image.Resampling.LANCZOS


def photo(seed: int, size: tuple[int, int] = (80, 64)) -> Image.Image:
    """Blocks of colour with hard edges: something for edge and line detectors to find."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.NEAREST)


IMAGE = photo(1)  # 80x64: canny at resolution 64 makes a 64x64 map, so the resize back shows


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with MLSD's weights installed (random, saved like the real file)."""
    models = tmp_path_factory.mktemp("models")
    save_mlsd(models / "annotators")
    return models


@pytest.fixture(scope="module")
def bare_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with no annotators/ folder at all."""
    return tmp_path_factory.mktemp("bare-models")


def with_engine(
    models_dir: Path, demo_dir: Path, cache_dir: Path, use: Callable[[Engine], Awaitable[T]]
) -> T:
    """use(engine) on a started engine over the demo checkpoint and models_dir (CPU)."""

    async def main() -> T:
        config = EngineConfig(devices=["cpu"], models_dir=models_dir, cache_dir=cache_dir)
        engine = Engine(Catalogue([demo_spec(demo_dir)]), config)
        await engine.start()
        try:
            return await use(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


def run_together(
    models_dir: Path, demo_dir: Path, cache_dir: Path, jobs: list[Job]
) -> list[JobResult | JobError]:
    """Every job submitted before any is awaited (queued together); results in order."""

    async def use(engine: Engine) -> list[JobResult | JobError]:
        handles = [engine.submit(job, job_id=f"job-{i}") for i, job in enumerate(jobs)]
        results: list[JobResult | JobError] = []
        for handle in handles:
            try:
                results.append(await handle.result())
            except JobError as error:
                results.append(error)
        return results

    return with_engine(models_dir, demo_dir, cache_dir, use)


def refusal(models_dir: Path, demo_dir: Path, cache_dir: Path, job: Job) -> JobError:
    """The JobError submit raises at once for job (nothing is queued)."""

    async def use(engine: Engine) -> JobError:
        with pytest.raises(JobError) as caught:
            engine.submit(job, job_id="refused")
        assert engine.cancel("refused") is False  # the engine does not hold it
        return caught.value

    return with_engine(models_dir, demo_dir, cache_dir, use)


def direct(
    code: str, models_dir: Path | None, size: tuple[int, int], **options: float
) -> Image.Image:
    made = preprocess(code, IMAGE, resolution=RES, options=options, models_dir=models_dir)
    return made.resize(size, LANCZOS)


def images(result: JobResult | JobError) -> tuple[Image.Image, ...]:
    assert isinstance(result, JobResult), result
    assert result.seeds == (0,)
    return result.images


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def canny_job(**fields: object) -> PreprocessJob:
    """A canny job on IMAGE at resolution RES, with fields changed."""
    arguments: dict[str, object] = {"preprocessor": "canny", "resolution": RES, **fields}
    return PreprocessJob(image=IMAGE, **arguments)  # type: ignore[arg-type]


def test_maps_equal_preprocess_resized_to_the_input_or_the_asked_size(
    models_dir: Path, demo_dir: Path, tmp_path: Path
) -> None:
    thresholds = MappingProxyType({"low_threshold": 30.0, "high_threshold": 90.0})
    jobs: list[Job] = [
        canny_job(),  # no size: the input's 80x64
        canny_job(options=thresholds, width=96, height=48),
        canny_job(width=40),  # one side: the other follows the input's aspect ratio
        PreprocessJob(image=IMAGE, preprocessor="mlsd", resolution=RES, height=32),
    ]
    got = [images(r) for r in run_together(models_dir, demo_dir, tmp_path, jobs)]
    assert all(len(maps) == 1 for maps in got)
    (plain,), (sized,), (narrow,), (lines,) = got
    assert preprocess("canny", IMAGE, resolution=RES, options={}, models_dir=None).size != (80, 64)
    assert same(plain, direct("canny", None, (80, 64))) and np.asarray(plain).any()
    assert same(sized, direct("canny", None, (96, 48), **thresholds))
    assert not same(sized, direct("canny", None, (96, 48)))  # the options reach the detector
    assert same(narrow, direct("canny", None, (40, 32)))
    # MLSD: a torch annotator, loaded from its file in annotators/
    assert same(lines, direct("mlsd", models_dir, (40, 32))) and np.asarray(lines).any()


def test_progress_is_one_step(models_dir: Path, demo_dir: Path, tmp_path: Path) -> None:
    async def use(engine: Engine) -> list[JobProgress]:
        seen: list[JobProgress] = []
        handle = engine.submit(canny_job(), job_id="one")
        handle.subscribe(seen.append)
        await handle.result()
        await asyncio.sleep(0)  # let the last notification run
        return seen

    seen = with_engine(models_dir, demo_dir, tmp_path, use)
    assert seen[-1] == JobProgress(JobState.FINISHED, 1, 1)
    assert JobProgress(JobState.RUNNING, 1, 1) in seen
    assert all(p.total_steps == 1 for p in seen)


@pytest.mark.parametrize(
    ("job", "code", "words"),
    [
        (canny_job(preprocessor="sobel"), ErrorCode.INVALID_INPUT, ["'sobel'", "canny", "mlsd"]),
        (canny_job(preprocessor="none"), ErrorCode.INVALID_INPUT, ["needs a preprocessor"]),
        (
            canny_job(options={"threshold": 3.0}),
            ErrorCode.INVALID_INPUT,
            ["no option 'threshold'", "low_threshold, high_threshold"],
        ),
        (canny_job(resolution=32), ErrorCode.INVALID_INPUT, ["resolution 32", "minimum of 64"]),
        (canny_job(width=0, height=64), ErrorCode.INVALID_INPUT, ["width must be positive"]),
        (
            canny_job(preprocessor="mlsd"),
            ErrorCode.MODEL_UNAVAILABLE,
            ["'mlsd'", "mlsd_large_512_fp32.pth", "lllyasviel/Annotators", "annotators/"],
        ),
    ],
    ids=["unknown-code", "none", "bad-option", "low-resolution", "zero-width", "no-weights"],
)
def test_bad_requests_are_refused_at_submit(
    job: PreprocessJob,
    code: ErrorCode,
    words: list[str],
    bare_models_dir: Path,
    demo_dir: Path,
    tmp_path: Path,
) -> None:
    error = refusal(bare_models_dir, demo_dir, tmp_path, job)
    assert error.code is code
    assert all(word in error.message for word in words), error.message
    if code is ErrorCode.MODEL_UNAVAILABLE:
        assert str(bare_models_dir / "annotators") in error.message


def test_preprocess_and_generation_queued_together_both_finish(
    models_dir: Path, demo_dir: Path, tmp_path: Path
) -> None:
    generation = GenerationJob(
        kind=JobKind.TXT2IMG,
        model="",
        prompt="a house",
        width=64,
        height=64,
        steps=2,
        guidance_scale=5.0,
        seeds=(7,),
    )
    jobs: list[Job] = [canny_job(), generation, canny_job(width=64, height=64), generation]
    first_map, made, second_map, made_again = run_together(models_dir, demo_dir, tmp_path, jobs)
    assert same(images(first_map)[0], direct("canny", None, (80, 64)))
    assert same(images(second_map)[0], direct("canny", None, (64, 64)))
    for result in (made, made_again):
        assert isinstance(result, JobResult), result
        assert result.seeds == (7,) and [im.size for im in result.images] == [(64, 64)]
    assert isinstance(made, JobResult) and isinstance(made_again, JobResult)
    assert same(made.images[0], made_again.images[0])  # the map in between changed nothing
