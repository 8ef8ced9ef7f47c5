"""Which utility jobs may share one call: the batching policy, without a model or a GPU."""

from __future__ import annotations

from PIL import Image

from pipelines.batching.keys import BatchMode, batch_key
from pipelines.jobs import (
    BackgroundRemovalJob,
    Box,
    CaptionJob,
    ControlUnit,
    GenerationJob,
    JobKind,
    PromptEnhanceJob,
    UpscaleJob,
)

IMAGE = Image.new("RGB", (8, 8))
MODEL = "/models/background-removal/rmbg"


def test_background_removal_jobs_share_a_call_whatever_their_options() -> None:
    plain = BackgroundRemovalJob(images=(IMAGE,))
    other = BackgroundRemovalJob(
        images=(IMAGE, IMAGE), box=Box(left=0, top=0, width=4, height=4), only_mask=True
    )
    first, second = (batch_key(j, job_id=i, model=MODEL) for i, j in (("a", plain), ("b", other)))
    assert first == second and first.mode is BatchMode.REQUEST
    assert batch_key(plain, job_id="c", model="/models/background-removal/other") != first


def test_captions_share_a_call_only_with_the_same_prompt_and_language() -> None:
    keys = {
        batch_key(
            CaptionJob(images=(IMAGE,), prompt=prompt, language=language), job_id=i, model=MODEL
        )
        for i, (prompt, language) in enumerate(
            [("", None), ("", None), ("a photo of", None), ("", "de")]
        )
    }
    assert len(keys) == 3


def test_prompt_enhancement_and_upscaling_run_alone() -> None:
    for job in (PromptEnhanceJob(prompt="a cat"), UpscaleJob(image=IMAGE)):
        first, second = (batch_key(job, job_id=i, model=MODEL) for i in ("a", "b"))
        assert first.mode is BatchMode.SINGLE and first != second


def test_translation_and_nsfw_flags_do_not_split_a_generation_batch() -> None:
    unit = ControlUnit(model="canny-cn", image=IMAGE)
    fields = dict(
        kind=JobKind.TXT2IMG,
        model="m",
        prompt="p",
        width=64,
        height=64,
        steps=2,
        guidance_scale=7.0,
        seeds=(1,),
        controls=(unit,),
    )
    plain = GenerationJob(**fields)
    flagged = GenerationJob(**fields, translate_prompts=True, prompt_language="de", check_nsfw=True)
    keys = [
        batch_key(j, job_id=i, model="m", architecture="sd1")
        for i, j in (("a", plain), ("b", flagged))
    ]
    assert keys[0] == keys[1] and keys[0].mode is BatchMode.REQUEST
