"""The continuous denoising loop (pipelines.denoise_loop) against diffusers, and its invariance.

- Alone in the loop, a job's images equal the diffusers pipeline's bit for bit (SD 1.x and SDXL,
  txt2img and img2img, plain, ancestral and multistep samplers, weighted prompts).
- Batched with other jobs (different samplers, steps, guidance, kinds), joined mid-flight, split
  after running out of memory, or padded to a compile bucket, a job's images stay within
  BATCH_TOLERANCE of its images alone. On the CPU the only difference is float rounding: the
  convolutions and matmuls block their work by batch size, so sums are added in another order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image as PILImage
from PIL.Image import Image

from pipelines.batching.stats import EngineStats
from pipelines.denoise_loop import DenoiseLoop, bucket_for
from pipelines.jobs import GenerationJob, JobKind, PromptWeighting
from pipelines.loop_members import Member, prepare, to_images
from pipelines.samplers import sampler_spec
from tests.models import tiny

# Max |difference| (in 0..255 pixel levels) between a job batched and alone, on the CPU
# (measured: at most 1).
BATCH_TOLERANCE = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> DiffusionPipeline:
    return tiny.tiny_sd1_pipeline(tmp_path_factory.mktemp("tok1"))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> DiffusionPipeline:
    return tiny.tiny_sdxl_pipeline(tmp_path_factory.mktemp("tok2"))


def _init_image() -> Image:
    pixels = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return PILImage.fromarray(pixels)


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
        init_image=_init_image() if kind is JobKind.IMG2IMG else None,
        strength=0.6,
    )
    return dataclasses.replace(base, **changes)


def diffusers_images(pipe: DiffusionPipeline, j: GenerationJob) -> list[Image]:
    """The job as one direct diffusers call, as a user would write it."""
    xl = "text_encoder_2" in pipe.components
    name = {
        (JobKind.TXT2IMG, False): "StableDiffusionPipeline",
        (JobKind.IMG2IMG, False): "StableDiffusionImg2ImgPipeline",
        (JobKind.TXT2IMG, True): "StableDiffusionXLPipeline",
        (JobKind.IMG2IMG, True): "StableDiffusionXLImg2ImgPipeline",
    }[(j.kind, xl)]
    cls = getattr(diffusers, name)
    spec = sampler_spec(j.sampler)
    scheduler = (
        type(pipe.scheduler).from_config(pipe.scheduler.config)
        if spec is None
        else getattr(diffusers, spec.scheduler_class).from_config(
            pipe.scheduler.config, **spec.options
        )
    )
    components = {k: v for k, v in pipe.components.items() if k in _init_params(cls)}
    direct = cls(**{**components, "scheduler": scheduler})
    direct.set_progress_bar_config(disable=True)
    args: dict[str, Any] = {
        "prompt": j.prompt,
        "negative_prompt": j.negative_prompt,
        "num_inference_steps": j.steps,
        "guidance_scale": j.guidance_scale,
        "num_images_per_prompt": j.num_images,
        "generator": [torch.Generator("cpu").manual_seed(s) for s in j.seeds],
    }
    if j.kind is JobKind.IMG2IMG:
        args |= {"image": j.init_image, "strength": j.strength}
    else:
        args |= {"width": j.width, "height": j.height}
    return list(direct(**args).images)


def _init_params(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def members_of(pipe: DiffusionPipeline, jobs: Sequence[GenerationJob]) -> list[Member]:
    out = []
    for j in jobs:
        member = prepare(pipe, j)
        assert isinstance(member, Member)
        out.append(member)
    return out


def run_loop(
    pipe: DiffusionPipeline,
    jobs: Sequence[GenerationJob],
    *,
    join_after: dict[int, int] | None = None,
    loop: DenoiseLoop | None = None,
) -> list[list[Image]]:
    """Each job's images from one loop; join_after {job index: steps run before it joins}."""
    join_after = join_after or {}
    loop = loop or DenoiseLoop(pipe)
    results: dict[int, list[Image]] = {}
    pending = {i: j for i, j in enumerate(jobs)}
    steps = 0
    with torch.inference_mode():
        while pending or loop.members:
            for i in [i for i in pending if join_after.get(i, 0) <= steps]:
                member = prepare(pipe, pending.pop(i))
                assert isinstance(member, Member)
                member.owner = i
                loop.add(member)
            for member, images in loop.step():
                results[member.owner] = to_images(pipe.image_processor, images)
            steps += 1
    return [results[i] for i in range(len(jobs))]


def max_diff(a: Sequence[Image], b: Sequence[Image]) -> int:
    assert len(a) == len(b)
    return max(
        int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max())
        for x, y in zip(a, b, strict=True)
    )


def assert_same(a: Sequence[Image], b: Sequence[Image]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


# --- alone == diffusers ---

SD1_CASES = {
    "txt2img-default": job(seeds=(11, 12)),
    "txt2img-euler-a": job(sampler="Euler a", seeds=(5,)),
    "txt2img-dpm2m-karras": job(sampler="DPM++ 2M Karras", steps=5),
    "txt2img-no-cfg": job(guidance_scale=1.0),
    "txt2img-heun": job(sampler="Heun", steps=3),
    "img2img": job(JobKind.IMG2IMG, seeds=(7, 8)),
    "img2img-euler-a": job(JobKind.IMG2IMG, sampler="Euler a", strength=0.9),
}


@pytest.mark.parametrize("name", list(SD1_CASES))
def test_sd1_job_alone_equals_diffusers(sd1: DiffusionPipeline, name: str) -> None:
    j = SD1_CASES[name]
    (ours,) = run_loop(sd1, [j])
    assert_same(ours, diffusers_images(sd1, j))


@pytest.mark.parametrize("kind", [JobKind.TXT2IMG, JobKind.IMG2IMG])
def test_sdxl_job_alone_equals_diffusers(sdxl: DiffusionPipeline, kind: JobKind) -> None:
    j = job(kind, steps=3, seeds=(4, 9))
    (ours,) = run_loop(sdxl, [j])
    assert_same(ours, diffusers_images(sdxl, j))


def test_weighted_prompt_alone_equals_the_runner_embeddings(sd1: DiffusionPipeline) -> None:
    """A weighted prompt goes through prompt_embeddings as in the runners: the loop equals the
    diffusers call given the same embeddings."""
    from pipelines.prompt_weighting import prompt_embeddings

    j = job(prompt="a (red:1.4) house, [lake]", prompt_weighting=PromptWeighting.SDEMBEDS)
    (ours,) = run_loop(sd1, [j])
    direct = diffusers.StableDiffusionPipeline(
        **{**sd1.components, "scheduler": type(sd1.scheduler).from_config(sd1.scheduler.config)}
    )
    direct.set_progress_bar_config(disable=True)
    embeds = prompt_embeddings(direct, j.prompt, j.negative_prompt, PromptWeighting.SDEMBEDS, None)
    theirs = direct(
        **embeds,
        num_inference_steps=j.steps,
        guidance_scale=j.guidance_scale,
        width=64,
        height=64,
        generator=[torch.Generator("cpu").manual_seed(11)],
    ).images
    assert_same(ours, theirs)


# --- batched == alone (within the tolerance) ---

MIXED = [
    job(seeds=(1, 2)),
    job(prompt="a forest at night", sampler="Euler a", steps=6, seeds=(3,)),
    job(prompt="a cat", guidance_scale=1.0, steps=3, seeds=(4,)),
    job(JobKind.IMG2IMG, sampler="DPM++ 2M Karras", steps=5, strength=0.7, seeds=(5,)),
]


@pytest.fixture(scope="module")
def alone(sd1: DiffusionPipeline) -> list[list[Image]]:
    return [run_loop(sd1, [j])[0] for j in MIXED]


def test_mixed_jobs_share_forwards_and_match_alone(
    sd1: DiffusionPipeline, alone: list[list[Image]]
) -> None:
    stats = EngineStats()
    batched = run_loop(sd1, MIXED, loop=DenoiseLoop(sd1, stats=stats))
    for ours, theirs in zip(batched, alone, strict=True):
        assert max_diff(ours, theirs) <= BATCH_TOLERANCE
    # 6 steps in all (the longest job); the first 3 steps carry all five images.
    assert stats.forward_passes == 6
    assert stats.batch_sizes[5] == 3


def test_jobs_joining_mid_flight_match_alone(
    sd1: DiffusionPipeline, alone: list[list[Image]]
) -> None:
    stats = EngineStats()
    loop = DenoiseLoop(sd1, stats=stats)
    joined = run_loop(sd1, MIXED, join_after={1: 1, 2: 2, 3: 4}, loop=loop)
    for ours, theirs in zip(joined, alone, strict=True):
        assert max_diff(ours, theirs) <= BATCH_TOLERANCE
    assert max(stats.batch_sizes) >= 3  # joiners really shared forwards with running jobs


class OutOfMemoryAbove:
    """A UNet stand-in that runs out of memory above `rows` rows (as a small GPU would)."""

    def __init__(self, unet: Any, rows: int) -> None:
        self.unet, self.rows, self.calls = unet, rows, []

    def __call__(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(sample.shape[0])
        if sample.shape[0] > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.unet(sample, *args, **kwargs)


def test_out_of_memory_splits_the_forward_and_fails_nothing(
    sd1: DiffusionPipeline, alone: list[list[Image]]
) -> None:
    stats = EngineStats()
    unet = OutOfMemoryAbove(sd1.unet, rows=3)
    batched = run_loop(sd1, MIXED, loop=DenoiseLoop(sd1, stats=stats, unet=unet))
    for ours, theirs in zip(batched, alone, strict=True):
        assert max_diff(ours, theirs) <= BATCH_TOLERANCE
    # 9 rows failed, then 4; from then on pieces of 2 rows: each failure only once
    assert [rows for rows in unet.calls if rows > 3] == [9, 4]
    assert stats.oom_splits == 2


def test_bucket_padding_changes_nothing_beyond_rounding(
    sd1: DiffusionPipeline, alone: list[list[Image]]
) -> None:
    calls: list[int] = []

    def unet(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(sample.shape[0])
        return sd1.unet(sample, *args, **kwargs)

    padded = run_loop(sd1, MIXED, loop=DenoiseLoop(sd1, unet=unet, buckets=(1, 2, 4, 8, 16)))
    for ours, theirs in zip(padded, alone, strict=True):
        assert max_diff(ours, theirs) <= BATCH_TOLERANCE
    assert set(calls) <= {1, 2, 4, 8, 16}


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_warm_up_runs_every_bucket_up_to_the_batch(name: str, request: Any) -> None:
    pipe = request.getfixturevalue(name)
    calls: list[tuple[int, ...]] = []

    def unet(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(sample.shape))
        return pipe.unet(sample, *args, **kwargs)

    loop = DenoiseLoop(pipe, unet=unet, buckets=(1, 2, 4, 8, 16))
    with torch.inference_mode():
        assert loop.warm_up(64, 48, max_rows=6) == [1, 2, 4, 8]
    channels = pipe.unet.config.in_channels
    assert calls == [(rows, channels, 6, 8) for rows in (1, 2, 4, 8)]


def test_bucket_for() -> None:
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]


def test_prompts_of_different_lengths_run_as_separate_forwards(sd1: DiffusionPipeline) -> None:
    long = ", ".join(["a (very:1.1) detailed red house by a quiet lake"] * 12)  # > 75 tokens
    jobs = [
        job(prompt=long, prompt_weighting=PromptWeighting.SDEMBEDS),
        job(prompt="a (cat:1.2)", prompt_weighting=PromptWeighting.SDEMBEDS, seeds=(2,)),
    ]
    stats = EngineStats()
    together = run_loop(sd1, jobs, loop=DenoiseLoop(sd1, stats=stats))
    steps = members_of(sd1, jobs[:1])[0].total
    assert stats.forward_passes == 2 * steps  # two embedding lengths: two forwards per step
    for j, ours in zip(jobs, together, strict=True):
        assert_same(ours, run_loop(sd1, [j])[0])  # each forward holds that job alone


def test_img2img_without_denoising_steps_is_the_fitted_image(sd1: DiffusionPipeline) -> None:
    j = job(JobKind.IMG2IMG, strength=0.1, steps=4, seeds=(1, 2))
    out = prepare(sd1, j)
    assert isinstance(out, list) and len(out) == 2
    assert_same(out, [j.init_image, j.init_image])  # 64x64 already: fitting changes nothing


def test_sdxl_batched_matches_alone(sdxl: DiffusionPipeline) -> None:
    jobs = [
        job(steps=3, seeds=(1,)),
        job(JobKind.IMG2IMG, steps=4, seeds=(2, 3), sampler="Euler a"),
    ]
    alone_xl = [run_loop(sdxl, [j])[0] for j in jobs]
    together = run_loop(sdxl, jobs, join_after={1: 1})
    for ours, theirs in zip(together, alone_xl, strict=True):
        assert max_diff(ours, theirs) <= BATCH_TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_fp16_alone_equals_diffusers_and_batched_stays_close(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The loop on a GPU in half precision, channels_last as the engine loads it: alone equals
    diffusers; batched and joined stay within the tolerance."""
    pipe = tiny.tiny_sd1_pipeline(tmp_path_factory.mktemp("tokcuda")).to("cuda", torch.float16)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    for j in MIXED:
        (ours,) = run_loop(pipe, [j])
        assert_same(ours, diffusers_images(pipe, j))
    alone_gpu = [run_loop(pipe, [j])[0] for j in MIXED]
    joined = run_loop(pipe, MIXED, join_after={1: 1, 3: 2})
    for ours, theirs in zip(joined, alone_gpu, strict=True):
        assert max_diff(ours, theirs) <= BATCH_TOLERANCE
