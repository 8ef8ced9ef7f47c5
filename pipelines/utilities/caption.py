"""Captions: a BLIP image-to-text model describes each image in a sentence.

The model is a Hugging Face captioning folder (Salesforce/blip-image-captioning-base or -large:
config.json, weights, tokenizer and processor files) loaded with transformers, offline. Which
classes load it is read from config.json's `architectures` through FAMILIES (data, so another
BLIP-like family is one more entry); any other architecture is MODEL_UNAVAILABLE naming the
supported ones.

Decoding is greedy (deterministic: the same image gives the same caption) with at most
max_tokens new tokens. A prompt makes the caption conditional, BLIP's way: the decoder starts
from the prompt's tokens and continues them, so the caption begins with the prompt (as BLIP's
lower-case tokenizer writes it). All images of all jobs of a batch (one model, prompt, language
and max_tokens: the batch key) go through one generate call. Captions come out in English; a job
with another language gets them translated by the translation model
(pipelines.utilities.translation), all in one call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL.Image import Image
from transformers import (
    BlipForConditionalGeneration,
    BlipProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from models.cache import PipelineCache
from models.utility_models import UtilityModel
from pipelines.jobs import CaptionJob, ErrorCode, JobError, JobResult
from pipelines.runners.common import RunContext
from pipelines.utilities import translation

MAX_TOKENS = 512  # the most new tokens a job may ask for
ENGLISH = "en"  # what the models caption in


@dataclass(frozen=True)
class CaptionFamily:
    """The transformers classes that load and run one kind of captioning model."""

    model_class: type[PreTrainedModel]
    processor_class: type[ProcessorMixin]
    example: str  # a repository of that kind, for error messages
    # The folder holds one of these: without them the processor would quietly build an empty
    # default tokenizer and every caption would be garbage.
    tokenizer_files: tuple[str, ...]


FAMILIES: dict[str, CaptionFamily] = {  # config.json `architectures` -> family
    "BlipForConditionalGeneration": CaptionFamily(
        BlipForConditionalGeneration,
        BlipProcessor,
        "Salesforce/blip-image-captioning-base",
        tokenizer_files=("tokenizer.json", "vocab.txt"),
    ),
}


@dataclass(frozen=True)
class Captioner:
    model: Any  # a FAMILIES model class, on the worker's device
    processor: Any  # its processor (image preprocessing + tokenizer)


def check(job: CaptionJob) -> None:
    """Images to caption, a token budget within range, a two-letter language (INVALID_INPUT)."""
    if not job.images:
        raise JobError(ErrorCode.INVALID_INPUT, "a caption job needs at least one image")
    if any(min(image.size) < 1 for image in job.images):
        raise JobError(ErrorCode.INVALID_INPUT, "an image to caption is empty")
    if not 1 <= job.max_tokens <= MAX_TOKENS:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"caption max tokens {job.max_tokens} is out of range (1 to {MAX_TOKENS})",
        )
    language = job.language
    if language is not None and not (
        len(language) == 2 and language.isascii() and language.isalpha()
    ):
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"caption language {language!r} is not a two-letter ISO 639-1 code",
        )


def run(jobs: Sequence[CaptionJob], model: UtilityModel, ctx: RunContext) -> list[JobResult]:
    """One generate call over every image of the batch; each job gets its images' captions."""
    assert ctx.resources is not None, "utility jobs need the worker's resources"
    if not jobs:
        return []
    for job in jobs:
        check(job)
    first = jobs[0]
    for name in ("prompt", "language", "max_tokens"):
        if any(getattr(job, name) != getattr(first, name) for job in jobs):
            raise JobError(ErrorCode.INTERNAL, f"caption jobs of one batch differ in {name}")
    cache = ctx.resources.cache
    captioner = cache.component(("caption", str(model.path)), lambda: _load(model, cache))
    images = [image for job in jobs for image in job.images]
    language = (first.language or ENGLISH).lower()
    total = 1 if language == ENGLISH else 2
    captions = caption(captioner, images, first.prompt, first.max_tokens, cache.device)
    ctx.report_step(1, total)
    if language != ENGLISH:
        captions = translation.translate(captions, ENGLISH, language, ctx.resources)
        ctx.report_step(2, total)
    results = []
    start = 0
    for job in jobs:
        texts = tuple(captions[start : start + len(job.images)])
        start += len(job.images)
        results.append(JobResult(images=(), seeds=(), texts=texts))
    return results


def caption(
    captioner: Captioner, images: Sequence[Image], prompt: str, max_tokens: int, device: str
) -> list[str]:
    """Greedy captions of `images` (PIL), each continuing `prompt` when it is not empty."""
    model, processor = captioner.model, captioner.processor
    prompt = prompt.strip()
    inputs = processor(
        images=[image.convert("RGB") for image in images],
        text=[prompt] * len(images) if prompt else None,
        return_tensors="pt",
    )
    arguments: dict[str, Any] = {
        "pixel_values": inputs["pixel_values"].to(device=device, dtype=model.dtype)
    }
    prompt_tokens = 1  # the decoder's start token
    if prompt:
        arguments["input_ids"] = inputs["input_ids"].to(device)
        arguments["attention_mask"] = inputs["attention_mask"].to(device)
        prompt_tokens = inputs["input_ids"].shape[1] - 1  # generate drops the final [SEP]
    # The decoder has a fixed number of positions: the prompt and new tokens must fit.
    positions = model.config.text_config.max_position_embeddings
    if prompt_tokens >= positions:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"the caption prompt is too long ({prompt_tokens} tokens; this model reads at most "
            f"{positions - 1})",
        )
    output = model.generate(
        **arguments,
        max_new_tokens=min(max_tokens, positions - prompt_tokens),
        do_sample=False,
        num_beams=1,
    )
    return [
        " ".join(text.split()) for text in processor.batch_decode(output, skip_special_tokens=True)
    ]


def _load(model: UtilityModel, cache: PipelineCache) -> Captioner:
    """The model (on the worker's device and dtype) and its processor; a folder of another
    architecture, or a broken one, is MODEL_UNAVAILABLE naming it."""
    family = _family(model)
    if not any((model.path / name).is_file() for name in family.tokenizer_files):
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the caption model {model.path} has no tokenizer "
            f"({' or '.join(family.tokenizer_files)}); install the complete "
            f"{family.example}-style folder",
        )
    try:
        loaded = family.model_class.from_pretrained(model.path, local_files_only=True)
        processor = family.processor_class.from_pretrained(model.path, local_files_only=True)
    except Exception as error:  # whatever transformers raises, the folder is unusable
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the caption model {model.path} could not be loaded ({error}); it must be a "
            f"complete {family.example}-style folder (config.json, tokenizer and processor "
            "files, model.safetensors)",
        ) from error
    # transformers' @wraps(Module.to) hides the bound signature from mypy
    loaded = loaded.to(device=cache.device, dtype=cache.dtype)  # type: ignore[call-arg]
    return Captioner(loaded.eval(), processor)


def _family(model: UtilityModel) -> CaptionFamily:
    supported = ", ".join(FAMILIES)
    try:
        config = json.loads((model.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise JobError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"the caption model {model.path} has no readable config.json ({error})",
        ) from error
    architectures = (config.get("architectures") if isinstance(config, dict) else None) or []
    for architecture in architectures:
        if architecture in FAMILIES:
            return FAMILIES[architecture]
    found = ", ".join(map(str, architectures)) or "no architecture"
    raise JobError(
        ErrorCode.MODEL_UNAVAILABLE,
        f"the caption model {model.path} is {found}; easel captions with {supported} "
        f"(e.g. {next(iter(FAMILIES.values())).example})",
    )
