"""Prompt enhancement: a small causal language model writes the rest of a short prompt.

The models for it (Gustavosta/MagicPrompt-Stable-Diffusion and its kin) are GPT-2 fine-tunes on
Stable Diffusion prompts, one prompt per line: given the start of a prompt they continue it with
subjects, styles, artists and quality tags, and end it with a line break. Each version is the
user's prompt followed by one sampled continuation, cut to max_length characters at a word
boundary.

Sampling is seeded from the job's seed, so the same job gives the same versions (on the same
device and model). transformers' generate draws from torch's global generators, so the seeding
happens inside torch.random.fork_rng: the CPU generator and this device's CUDA generator are
saved, seeded and restored, and the other devices' are left alone.

A job wants `versions` distinct texts. Samples that repeat one already found, or add nothing to
the prompt once cut, are drawn again, for a bounded number of rounds; a job that still lacks
versions then fails (INVALID_INPUT: too little room in max_length, or too many versions for the
model) rather than returning fewer texts than asked, which a client counting results would wait
on forever.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.utility_models import Utility, UtilityModel
from pipelines.jobs import ErrorCode, JobError, JobResult, PromptEnhanceJob
from pipelines.runners.common import Resources, RunContext, StepReporter
from pipelines.utilities.installed import load_text_model

# Sampling: MagicPrompt's own demo samples with top-k 50; nucleus sampling and a repetition
# penalty keep GPT-2 from looping on the same tags.
TOP_K = 50
TOP_P = 0.95
TEMPERATURE = 0.9
REPETITION_PENALTY = 1.2
STOP = "\n"  # the models end a prompt with a line break
# The token budget for max_length characters: a token adds 3 characters or more (GPT-2 averages
# about 4 on English), plus a few spare tokens for the cut at a word boundary.
CHARS_PER_TOKEN = 3
SPARE_TOKENS = 8
MAX_ROUNDS = 4  # sampling rounds to find the versions (each draws the ones still missing)

MAX_VERSIONS = 5
MIN_LENGTH, MAX_LENGTH = 4, 400  # bounds of max_length, in characters
TRAILING = " ,;:.|/-_"  # stripped off a version's end: dangling separators
BROKEN = "\ufffd"  # what a token ending inside a UTF-8 character decodes to
SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers causal LM on the cache's device
    tokenizer: Any


def check(job: PromptEnhanceJob) -> None:
    """Refuses what no model can do: an empty prompt, versions or max_length out of bounds, or a
    prompt that leaves max_length no room."""
    prompt = job.prompt.strip()
    if not prompt:
        raise JobError(ErrorCode.INVALID_INPUT, "the prompt to enhance is empty")
    if not 1 <= job.versions <= MAX_VERSIONS:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"versions must be between 1 and {MAX_VERSIONS}, not {job.versions}",
        )
    if not MIN_LENGTH <= job.max_length <= MAX_LENGTH:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"max_length must be between {MIN_LENGTH} and {MAX_LENGTH} characters, "
            f"not {job.max_length}",
        )
    if len(prompt) >= job.max_length:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"the prompt is {len(prompt)} characters long: a max_length of {job.max_length} "
            "leaves no room to enhance it",
        )


def run(jobs: Sequence[PromptEnhanceJob], model: UtilityModel, ctx: RunContext) -> list[JobResult]:
    resources = _resources(ctx)
    cache = resources.cache
    loaded = cache.component(
        (Utility.PROMPT_ENHANCE.value, str(model.path)),
        lambda: _load(model.path, cache.device, cache.dtype),
    )
    results: list[JobResult] = []
    for job in jobs:
        versions = enhance(job, loaded, cache.device, ctx.report_step)
        results.append(JobResult(images=(), seeds=job.seeds, texts=tuple(versions)))
    return results


def enhance(
    job: PromptEnhanceJob, loaded: LoadedModel, device: str, report: StepReporter
) -> list[str]:
    """job.versions distinct enhanced prompts, drawn from the job's seed."""
    check(job)
    prompt = job.prompt.strip()
    tokenizer = loaded.tokenizer
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    prompt_tokens = inputs["input_ids"].shape[1]
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    new_tokens = max_new_tokens(len(prompt), job.max_length)
    if positions is not None:
        new_tokens = min(new_tokens, positions - prompt_tokens)
    if new_tokens < 1:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            f"the prompt ({prompt_tokens} tokens) is too long for this model, which reads "
            f"{positions} tokens at most",
        )
    versions: list[str] = []
    report(0, job.versions)
    with seeded(job.seed, device):
        for _ in range(MAX_ROUNDS):
            output = loaded.model.generate(
                **inputs,
                **sampling_arguments(tokenizer, new_tokens),
                num_return_sequences=job.versions - len(versions),
            )
            for sequence in output:
                continuation = tokenizer.decode(sequence[prompt_tokens:], skip_special_tokens=True)
                text = cut(prompt + continuation, len(prompt), job.max_length)
                if len(text) > len(prompt) and text not in versions:
                    versions.append(text)
            report(len(versions), job.versions)
            if len(versions) == job.versions:
                return versions
    raise JobError(
        ErrorCode.INVALID_INPUT,
        f"only {len(versions)} distinct enhanced versions of the prompt fit in "
        f"{job.max_length} characters; ask for fewer versions or a longer max_length",
    )


def sampling_arguments(tokenizer: Any, new_tokens: int) -> dict[str, Any]:
    """model.generate's sampling arguments (the seed aside)."""
    return {
        "do_sample": True,
        "top_k": TOP_K,
        "top_p": TOP_P,
        "temperature": TEMPERATURE,
        "repetition_penalty": REPETITION_PENALTY,
        "max_new_tokens": new_tokens,
        "stop_strings": [STOP],
        "tokenizer": tokenizer,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    }


def max_new_tokens(prompt_length: int, max_length: int) -> int:
    """Tokens to sample for max_length characters after a prompt of prompt_length."""
    return math.ceil(max(max_length - prompt_length, 0) / CHARS_PER_TOKEN) + SPARE_TOKENS


def cut(text: str, prompt_length: int, max_length: int) -> str:
    """A sampled text as a version: its first line, with control characters and broken bytes
    dropped and spaces collapsed, at most max_length characters ending at a word boundary,
    without a dangling separator. The first prompt_length characters (the user's prompt) are
    kept as they are; a continuation whose first word does not fit leaves the prompt alone."""
    head = text[:prompt_length]
    line = re.split(r"[\r\n]", text[prompt_length:], maxsplit=1)[0]
    kept = "".join(c for c in line if c.isspace() or (c.isprintable() and c != BROKEN))
    text = head + SPACES.sub(" ", kept)
    if len(text) > max_length:
        if text[max_length] != " ":  # the cut falls inside a word: back to its start
            boundary = text.rfind(" ", prompt_length, max_length + 1)
            max_length = max(boundary, prompt_length)
        text = text[:max_length]
    return head + text[prompt_length:].rstrip(TRAILING)


@contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """torch's global CPU generator (and the device's CUDA one) seeded for a block, and restored
    after it: sampling in between is a function of the seed."""
    target = torch.device(device)
    cuda: list[int] = []
    if target.type == "cuda":
        cuda = [target.index if target.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _load(folder: Path, device: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_text_model(
        folder, AutoModelForCausalLM, "prompt-enhancing model", device, dtype
    )
    return LoadedModel(model, tokenizer)


def _resources(ctx: RunContext) -> Resources:
    if ctx.resources is None:
        raise JobError(ErrorCode.INTERNAL, "prompt enhancement needs the worker's resources")
    return ctx.resources
